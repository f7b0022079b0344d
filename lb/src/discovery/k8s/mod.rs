//! The Kubernetes source: watches this namespace's `Upstream` objects and
//! the EndpointSlices of their Services with kube-rs watchers, publishes a
//! routing snapshot after each change, and writes each Upstream's status.
//!
//! The module is split the way every route kind uses it: [`store`] (watch
//! stores that keep the old objects until a re-list is done), [`endpoints`]
//! (a Service port resolved against its EndpointSlices, for any kind),
//! [`conflicts`] (the oldest claim wins), [`conditions`] (status
//! conditions), [`status`] (the status writer, generic over the kind), and
//! one adapter per kind that turns its objects into route intents and
//! statuses ([`upstream`]); [`index`] keeps them up to date per event.
//! The two other route sources are modes of their own, each with its own
//! watches and status writes over the same pieces: [`gateway`] (Gateway
//! API, `--gateway-api`; its types in [`gateway_api`]) and [`ingress`]
//! (`--ingress`).
//!
//! Rules: slices of one Service are merged and de-duplicated; endpoints
//! with `ready` true or unset take traffic; serving-but-terminating
//! endpoints only when nothing is ready; of two Upstreams with the same
//! match, the older one serves and the other is reported as a `Conflict`.
//! A re-list never empties routing: the old objects stay until `InitDone`. After the first complete sync the data
//! plane no longer depends on the API server: a failed watch is logged
//! (rate-limited), counted by resource and started over with a short
//! back-off while the last routing stays in service (see [`watch`]).
//!
//! The source reports itself synced (so `/readyz` turns 200) once both
//! watches have listed and, with a default Upstream, once that Upstream is
//! among the resolved routes: a new LB pod is ready only when it can route.
//!
//! Status writes go through a per-Upstream work queue with back-off
//! ([`status`]): idempotent server-side applies with one field manager
//! (`roundhouse-lb`) from every replica, sent only when the computed status
//! changes: replicas that see the same EndpointSlices compute the same
//! status, so they converge instead of fighting, and no Lease is needed (see
//! docs/kubernetes.md). Without TLS Secrets, the API calls are exactly those
//! `manifests/10-rbac.yaml` grants; `lb/tests/manifests.rs` checks that
//! against what the fake API server of the tests served. With `--tls-secret`
//! ([`secrets`]) the LB also reads the named Secrets, which the chart's
//! `tls.secrets` grants by `resourceNames` (docs/SECURITY.md).

pub mod backoff;
pub mod conditions;
pub mod conflicts;
pub mod endpoints;
pub mod gateway;
pub mod gateway_api;
pub mod index;
pub mod ingress;
pub mod secrets;
pub mod status;
pub mod store;
pub mod upstream;
pub mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::endpoints::SERVICE_LABEL;
use self::index::Index;
use self::status::StatusWriter;
use self::upstream::{Reason, Resolved};
use super::SourceError;
use super::{Discovery, Publisher};
use crate::crd::{SpecError, Strategy, Upstream, UpstreamSpec};

pub use self::status::FIELD_MANAGER;

/// The `resource` label of the EndpointSlice watch's errors.
pub const SLICES: &str = "endpointslices";
/// The `resource` label of the Upstream watch's errors.
pub const UPSTREAMS: &str = "upstreams";

/// The Upstream the LB creates at start if absent, so `manifests/` needs no
/// instance of the CRD it installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultUpstream {
    name: String,
    spec: UpstreamSpec,
}

impl DefaultUpstream {
    /// The Upstream `name` over `service`, on `port` (a port name or
    /// number; unset when the Service has one port). Checked as the API
    /// server and the controller would check the object.
    pub fn new(name: &str, service: &str, port: Option<&str>) -> Result<Self, SpecError> {
        let port = port.map(|p| match p.parse::<i32>() {
            Ok(n) => IntOrString::Int(n),
            Err(_) => IntOrString::String(p.to_owned()),
        });
        let spec = UpstreamSpec {
            service: service.to_owned(),
            port,
            route: None,
            strategy: Strategy::RoundRobin,
            timeouts: None,
            retries: None,
            outlier_detection: None,
            protocol: None,
        };
        spec.validate()?;
        Ok(Self {
            name: name.to_owned(),
            spec,
        })
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port as given (`None`: the Service's only port).
    pub fn port(&self) -> Option<String> {
        self.spec.port.as_ref().map(|p| match p {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => s.clone(),
        })
    }

    fn object(&self) -> Upstream {
        Upstream::new(&self.name, self.spec.clone())
    }
}

/// Watches Upstreams and EndpointSlices in one namespace (and the TLS
/// Secrets named in the configuration).
#[derive(Clone)]
pub struct KubernetesDiscovery {
    client: Client,
    namespace: String,
    default_upstream: Option<DefaultUpstream>,
    tls_secrets: Vec<String>,
    status_timeout: Duration,
}

impl std::fmt::Debug for KubernetesDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesDiscovery")
            .field("namespace", &self.namespace)
            .field("default_upstream", &self.default_upstream)
            .finish_non_exhaustive()
    }
}

impl KubernetesDiscovery {
    /// A source for `namespace` (default: the client's namespace, i.e. the
    /// pod's own in a cluster) with a client from the pod's service account
    /// or `KUBECONFIG`.
    pub async fn connect(
        namespace: Option<String>,
        default_upstream: Option<DefaultUpstream>,
    ) -> Result<Self, SourceError> {
        let client = Client::try_default()
            .await
            .map_err(|e| SourceError::KubernetesClient(Box::new(e)))?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        Ok(Self::new(client, namespace, default_upstream))
    }

    /// Also serves the certificates of these `kubernetes.io/tls` Secrets.
    pub fn with_tls_secrets(mut self, names: Vec<String>) -> Self {
        self.tls_secrets = names;
        self
    }

    /// Reads the TLS Secrets once (none configured: none read).
    pub async fn read_tls_secrets(&self) -> Result<Vec<crate::discovery::CertPair>, SourceError> {
        let api = Api::namespaced(self.client.clone(), &self.namespace);
        secrets::read(&api, &self.tls_secrets).await
    }

    /// A source for `namespace` using `client`.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        default_upstream: Option<DefaultUpstream>,
    ) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            default_upstream,
            tls_secrets: Vec::new(),
            status_timeout: status::WRITE_TIMEOUT,
        }
    }

    /// How long one status write may take before it is retried
    /// (default [`status::WRITE_TIMEOUT`]).
    pub fn with_status_timeout(mut self, timeout: Duration) -> Self {
        self.status_timeout = timeout;
        self
    }
}

/// True when the index can route: both watches listed and, if there is a
/// default Upstream, it is resolved with a usable spec (zero endpoints is a
/// valid answer: the Service has none).
fn can_route(index: &Index, default: Option<&str>) -> bool {
    index.synced()
        && default.is_none_or(|name| {
            index
                .resolved()
                .get(name)
                .is_some_and(|r| r.reason != Reason::InvalidSpec)
        })
}

/// Logs conflicts that start or end and sets the conflict gauge.
fn report_conflicts(
    known: &mut BTreeMap<String, String>,
    resolved: &BTreeMap<String, Resolved>,
    gauge: &Gauge,
) {
    let current: BTreeMap<&str, &str> = resolved
        .iter()
        .filter_map(|(n, r)| r.conflict.as_deref().map(|w| (n.as_str(), w)))
        .collect();
    for (name, winner) in &current {
        if known.get(*name).map(String::as_str) != Some(*winner) {
            warn!(
                upstream = %name,
                conflicts_with = %winner,
                "Upstream has the same host and path prefix as an older one; not routed \
                 (status Ready=False, reason Conflict)"
            );
        }
    }
    for (name, winner) in known.iter() {
        if !current.contains_key(name.as_str()) {
            info!(upstream = %name, conflicted_with = %winner, "Upstream conflict over");
        }
    }
    *known = current
        .into_iter()
        .map(|(n, w)| (n.to_owned(), w.to_owned()))
        .collect();
    gauge.set(known.len() as i64);
}

/// Creates the default Upstream if it does not exist; retries until it
/// succeeds or `shutdown` (the API may be unreachable at start).
async fn ensure_default(api: Api<Upstream>, d: DefaultUpstream, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        let result = match api.get_opt(&d.name).await {
            Ok(Some(_)) => Ok(false),
            Ok(None) => match api.create(&PostParams::default(), &d.object()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {
                info!(upstream = %d.name, service = %d.spec.service, "created the default Upstream");
                return;
            }
            Ok(false) => {
                debug!(upstream = %d.name, "default Upstream exists");
                return;
            }
            Err(e) => {
                warn!(upstream = %d.name, error = %e, "cannot ensure the default Upstream; retrying")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

enum Watched {
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Upstream(Result<Event<Upstream>, watcher::Error>),
}

impl Discovery for KubernetesDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let upstreams_api: Api<Upstream> =
                Api::namespaced(self.client.clone(), &self.namespace);
            let slices_api: Api<EndpointSlice> =
                Api::namespaced(self.client.clone(), &self.namespace);
            if let Some(d) = self.default_upstream.clone() {
                tokio::spawn(ensure_default(upstreams_api.clone(), d, shutdown.clone()));
            }
            if !self.tls_secrets.is_empty() {
                tokio::spawn(secrets::follow(
                    Api::namespaced(self.client.clone(), &self.namespace),
                    self.tls_secrets.clone(),
                    publisher.clone(),
                    shutdown.clone(),
                ));
            }
            let metrics = publisher.metrics().clone();
            let mut writer = StatusWriter::new(upstreams_api.clone(), metrics.clone())
                .with_timeout(self.status_timeout);

            let slices = watch::restarting(
                move || {
                    let config = watcher::Config::default().labels(SERVICE_LABEL);
                    watcher::watcher(slices_api.clone(), config).boxed()
                },
                backoff::WATCH,
            )
            .map(Watched::Slice);
            let ups = watch::restarting(
                move || watcher::watcher(upstreams_api.clone(), watcher::Config::default()).boxed(),
                backoff::WATCH,
            )
            .map(Watched::Upstream);
            let mut events = std::pin::pin!(stream::select(slices, ups));

            let mut index = Index::default();
            let mut health = watch::Health::new(&[SLICES, UPSTREAMS], publisher.clone());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut conflicts: BTreeMap<String, String> = BTreeMap::new();
            let default = self.default_upstream.as_ref().map(|d| d.name().to_owned());
            info!(namespace = %self.namespace, "watching Upstreams and EndpointSlices");
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = writer.step() => continue,
                    _ = tick.tick() => {
                        health.tick();
                        continue;
                    }
                    e = events.next() => match e { Some(e) => e, None => break },
                };
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let (changed, touched) = match event {
                    Watched::Slice(Ok(e)) => {
                        health.event(SLICES, &e);
                        (index.apply_slice(e, &now), None)
                    }
                    Watched::Upstream(Ok(e)) => {
                        health.event(UPSTREAMS, &e);
                        let name = match &e {
                            Event::Apply(u) | Event::Delete(u) => Some(u.name_any()),
                            _ => None,
                        };
                        (index.apply_upstream(e, &now), name)
                    }
                    Watched::Slice(Err(e)) => {
                        health.failed(SLICES, &e);
                        (false, None)
                    }
                    Watched::Upstream(Err(e)) => {
                        health.failed(UPSTREAMS, &e);
                        (false, None)
                    }
                };
                if changed {
                    let ready = can_route(&index, default.as_deref());
                    publisher.publish(index.routing(), ready);
                    let resolved = index.resolved();
                    writer.retain(|name| resolved.contains_key(name));
                    for (name, r) in resolved {
                        let obj = index.upstreams().get(name);
                        writer.observe(
                            name,
                            &r.status,
                            obj.and_then(|u| u.status.as_ref()),
                            obj.and_then(|u| u.metadata.resource_version.as_deref()),
                        );
                    }
                    report_conflicts(&mut conflicts, resolved, &metrics.conflicts);
                } else if let Some(name) = touched
                    && let (Some(r), Some(u)) =
                        (index.resolved().get(&name), index.upstreams().get(&name))
                {
                    // Only the object's status or metadata moved (e.g. our
                    // own write coming back, or an edit of its labels): a
                    // rejected status may pass now.
                    writer.observe(
                        &name,
                        &r.status,
                        u.status.as_ref(),
                        u.metadata.resource_version.as_deref(),
                    );
                }
                writer.dispatch();
            }
            debug!("discovery stopping; flushing status writes");
            writer.flush(Duration::from_secs(2)).await;
        })
    }
}

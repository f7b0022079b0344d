//! The Kubernetes source: watches this namespace's `Upstream` objects and
//! the EndpointSlices of their Services with kube-rs watchers, publishes a
//! routing snapshot after each change, and writes each Upstream's status.
//!
//! Rules (see [`index`]): slices of one Service are merged and
//! de-duplicated; endpoints with `ready` true or unset take traffic;
//! serving-but-terminating endpoints only when nothing is ready. A re-list
//! never empties routing: the old objects stay until `InitDone`. After the
//! first complete sync the data plane no longer depends on the API server:
//! watch errors are logged, counted and retried with back-off while the last
//! routing stays in service.
//!
//! Status writes are idempotent server-side applies with one field manager
//! (`roundhouse-lb`) from every replica, sent only when the computed status
//! differs from the object's: replicas that see the same EndpointSlices
//! compute the same status, so they converge instead of fighting, and no
//! Lease is needed (see docs/kubernetes.md).

pub mod index;
pub mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::index::{Index, SERVICE_LABEL};
use super::SourceError;
use super::{Discovery, Publisher};
use crate::crd::{SpecError, Strategy, Upstream, UpstreamSpec, UpstreamStatus};

/// The field manager of status writes.
pub const FIELD_MANAGER: &str = "roundhouse-lb";

/// Every API call the controller makes, as (API group, resource, verbs).
/// `manifests/10-rbac.yaml` must grant exactly this (a test checks).
pub const REQUIRED_RBAC: &[(&str, &str, &[&str])] = &[
    // the watcher lists and watches; nothing reads a single slice
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    // watcher list/watch; `get` + `create` for the default Upstream
    (
        "roundhouse.dev",
        "upstreams",
        &["get", "list", "watch", "create"],
    ),
    // server-side apply of the status subresource
    ("roundhouse.dev", "upstreams/status", &["patch"]),
];

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
        }
    }
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

/// Writes statuses, latest first-come per Upstream, retrying failures.
async fn status_writer(
    api: Api<Upstream>,
    mut rx: mpsc::UnboundedReceiver<(String, UpstreamStatus)>,
    publisher: Publisher,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut queue: BTreeMap<String, UpstreamStatus> = BTreeMap::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some((name, status)) => {
                    queue.insert(name, status);
                }
                None => return,
            }
        }
        // Coalesce whatever else is waiting: only the latest status counts.
        while let Ok((name, status)) = rx.try_recv() {
            queue.insert(name, status);
        }
        let Some((name, status)) = queue.pop_first() else {
            continue;
        };
        let patch = serde_json::json!({
            "apiVersion": "roundhouse.dev/v1alpha1",
            "kind": "Upstream",
            "status": status,
        });
        match api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => debug!(upstream = %name, "status written"),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!(upstream = %name, "Upstream gone; status dropped")
            }
            Err(e) => {
                publisher.record_error();
                warn!(upstream = %name, error = %e, "cannot write status; retrying");
                queue.entry(name).or_insert(status);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
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
            let (status_tx, status_rx) = mpsc::unbounded_channel();
            let writer = tokio::spawn(status_writer(
                upstreams_api.clone(),
                status_rx,
                publisher.clone(),
            ));

            let slices =
                watcher::watcher(slices_api, watcher::Config::default().labels(SERVICE_LABEL))
                    .default_backoff()
                    .map(Watched::Slice);
            let ups = watcher::watcher(upstreams_api, watcher::Config::default())
                .default_backoff()
                .map(Watched::Upstream);
            let mut events = std::pin::pin!(stream::select(slices, ups));

            let mut index = Index::default();
            let mut written: HashMap<String, UpstreamStatus> = HashMap::new();
            info!(namespace = %self.namespace, "watching Upstreams and EndpointSlices");
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    e = events.next() => match e { Some(e) => e, None => break },
                };
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let changed = match event {
                    Watched::Slice(Ok(e)) => index.apply_slice(e, &now),
                    Watched::Upstream(Ok(e)) => index.apply_upstream(e, &now),
                    Watched::Slice(Err(e)) | Watched::Upstream(Err(e)) => {
                        publisher.record_error();
                        warn!(error = %e, "watch failed; keeping the last known endpoints and retrying");
                        false
                    }
                };
                if !changed {
                    continue;
                }
                publisher.publish(index.routing(), true);
                let resolved = index.resolved();
                written.retain(|name, _| resolved.contains_key(name));
                for (name, r) in resolved {
                    let current = index.upstreams().get(name).and_then(|u| u.status.as_ref());
                    let already =
                        current == Some(&r.status) || written.get(name) == Some(&r.status);
                    if !already {
                        debug!(upstream = %name, reason = r.reason.as_str(), "status changed");
                        written.insert(name.clone(), r.status.clone());
                        let _ = status_tx.send((name.clone(), r.status.clone()));
                    }
                }
            }
            drop(status_tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        })
    }
}

//! The Ingress source: cluster-wide watches of IngressClasses, Ingresses,
//! Services, EndpointSlices and `kubernetes.io/tls` Secrets, the index, the
//! publication of routing and certificates, the Ingresses' status and the
//! reports.
//!
//! Events that arrive together are applied together and computed once.
//! The source is ready (`/readyz`) once every watch has listed: an LB with
//! no Ingress of its class yet serves 404s, as ingress-nginx does.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::events::{ApiEvents, Reporter};
use super::sink::IngressSink;
use super::{IngressConfig, IngressIndex};
use crate::discovery::k8s::endpoints::{SERVICE_LABEL, service_addresses};
use crate::discovery::k8s::status::{StatusWriter, WRITE_TIMEOUT};
use crate::discovery::k8s::watch;
use crate::discovery::{Discovery, Publisher};

/// The `resource` labels of the watches.
pub const RESOURCES: &[&str] = &[
    "ingressclasses",
    "ingresses",
    "services",
    "endpointslices",
    "secrets",
];

/// The Ingress source.
#[derive(Clone)]
pub struct IngressDiscovery {
    client: Client,
    /// The LB's namespace (where `--ingress-service` lives).
    namespace: String,
    config: IngressConfig,
    /// The LB's Service, whose addresses the Ingresses' status gets.
    service: Option<String>,
    /// This replica's name in Events (the pod's name).
    instance: String,
    status_timeout: Duration,
}

impl std::fmt::Debug for IngressDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressDiscovery")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl IngressDiscovery {
    /// A source using `client`; `namespace` is the LB's own.
    pub fn new(client: Client, namespace: impl Into<String>, config: IngressConfig) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            config,
            service: None,
            instance: "roundhouse-lb".into(),
            status_timeout: WRITE_TIMEOUT,
        }
    }

    /// Takes the Ingresses' addresses from this Service of the LB's
    /// namespace (its load-balancer ingress, else its external or cluster
    /// IPs) when no `--ingress-address` is given.
    pub fn with_service(mut self, name: Option<String>) -> Self {
        self.service = name;
        self
    }

    /// Names this replica in Events (`reportingInstance`; the pod's name).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// How long one status write may take.
    pub fn with_status_timeout(mut self, timeout: Duration) -> Self {
        self.status_timeout = timeout;
        self
    }

    /// The addresses for the Ingresses' status, as of `index`.
    fn addresses(&self, index: &IngressIndex) -> Vec<String> {
        if !self.config.addresses.is_empty() {
            return self.config.addresses.clone();
        }
        self.service
            .as_ref()
            .and_then(|name| {
                index
                    .services
                    .live()
                    .get(&format!("{}/{name}", self.namespace))
            })
            .map(service_addresses)
            .unwrap_or_default()
    }
}

/// One watch event of any kind. Each is moved once, into the index.
#[allow(clippy::large_enum_variant)]
enum Watched {
    Class(Result<Event<IngressClass>, watcher::Error>),
    Ingress(Result<Event<Ingress>, watcher::Error>),
    Service(Result<Event<Service>, watcher::Error>),
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Secret(Result<Event<Secret>, watcher::Error>),
}

impl Discovery for IngressDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let c = &self.client;
            let none = watcher::Config::default;
            let mut events = std::pin::pin!(stream::select_all([
                watch::watching(Api::<IngressClass>::all(c.clone()), none())
                    .map(Watched::Class)
                    .boxed(),
                watch::watching(Api::<Ingress>::all(c.clone()), none())
                    .map(Watched::Ingress)
                    .boxed(),
                watch::watching(Api::<Service>::all(c.clone()), none())
                    .map(Watched::Service)
                    .boxed(),
                watch::watching(
                    Api::<EndpointSlice>::all(c.clone()),
                    none().labels(SERVICE_LABEL),
                )
                .map(Watched::Slice)
                .boxed(),
                watch::watching(
                    Api::<Secret>::all(c.clone()),
                    none().fields("type=kubernetes.io/tls"),
                )
                .map(Watched::Secret)
                .boxed(),
            ]));
            let metrics = publisher.metrics().clone();
            let mut statuses = StatusWriter::new(IngressSink::new(c.clone()), metrics.clone())
                .with_timeout(self.status_timeout);
            let mut reporter =
                Reporter::new(ApiEvents(c.clone()), self.instance.clone(), metrics.clone());
            let mut health = watch::Health::new(RESOURCES, publisher.clone());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut index = IngressIndex::default();
            info!(
                controller = super::CONTROLLER,
                config = ?self.config,
                service = ?self.service,
                "watching Ingresses (cluster-wide)"
            );
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = statuses.step() => continue,
                    () = reporter.step() => continue,
                    _ = tick.tick() => {
                        health.tick();
                        continue;
                    }
                    e = events.next() => match e { Some(e) => e, None => break },
                };
                // Apply what has arrived together, then compute once.
                let mut changed = false;
                let mut next = Some(first);
                let mut applied = 0;
                while let Some(event) = next.take() {
                    applied += 1;
                    macro_rules! apply {
                        ($resource:expr, $result:expr, $apply:expr) => {
                            match $result {
                                Ok(e) => {
                                    health.event($resource, &e);
                                    changed |= $apply(e);
                                }
                                Err(e) => health.failed($resource, &e),
                            }
                        };
                    }
                    match event {
                        Watched::Class(r) => apply!("ingressclasses", r, |e| index.apply_class(e)),
                        Watched::Ingress(r) => apply!("ingresses", r, |e| index.apply_ingress(e)),
                        Watched::Service(r) => apply!("services", r, |e| index.apply_service(e)),
                        Watched::Slice(r) => apply!("endpointslices", r, |e| index.apply_slice(e)),
                        Watched::Secret(r) => apply!("secrets", r, |e| index.apply_secret(e)),
                    }
                    if applied < 512 {
                        next = events.next().now_or_never().flatten();
                    }
                }
                if !changed || !index.synced() {
                    continue;
                }
                let addresses = self.addresses(&index);
                let computed = index.compute(&self.config, &addresses);
                // Certificates first: the routing snapshot makes the lb
                // ready, and a ready lb should have its hosts' certificates.
                if !computed.certs.is_empty() {
                    publisher.publish_certs(computed.certs);
                }
                publisher.publish(computed.routing, true);
                metrics.ingress_conflicts.set(computed.conflicts as i64);
                statuses.retain(|k| computed.statuses.contains_key(k));
                for (k, s) in &computed.statuses {
                    let obj = index.ingresses.live().get(k);
                    statuses.observe(
                        k,
                        s,
                        obj.and_then(|o| o.status.as_ref()),
                        obj.and_then(|o| o.metadata.resource_version.as_deref()),
                    );
                }
                statuses.dispatch();
                reporter.report(&computed.reports, index.ingresses.live());
                debug!(
                    ingresses = computed.ours.len(),
                    conflicts = computed.conflicts,
                    "Ingress routing computed"
                );
            }
            debug!("Ingress source stopping; flushing status writes");
            statuses.flush(Duration::from_secs(2)).await;
        })
    }
}

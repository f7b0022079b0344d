//! Where endpoints come from.
//!
//! A discovery source publishes complete [`RoutingConfig`] snapshots through a
//! [`Publisher`]; nothing downstream knows whether they came from a static
//! list, DNS or the Kubernetes API. The data plane swaps its routing table
//! atomically on each snapshot, so it never sees a half-built set.

pub mod certs;
pub mod file;
pub mod k8s;
pub mod reload;
pub mod route;
pub mod static_dns;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DiscoveryMetrics, ResourceLabels};

pub use file::StaticSource;
pub use k8s::DefaultUpstream;
pub use route::{
    Action, Backend, BackendRef, HostMatch, ListenerId, Listeners, Match, Order, Origin, PathMatch,
    Route, RouteKind, Rule, Scope, WeightedBackend,
};
pub use static_dns::{BackendTarget, StaticDiscovery};

/// One endpoint as a discovery source sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// A human name: the DNS name it was resolved from, or the pod name.
    pub name: Option<Arc<str>>,
    /// Relative weight (1 = plain round-robin).
    pub weight: u32,
}

impl EndpointSpec {
    /// An endpoint with weight 1 and no name.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            name: None,
            weight: 1,
        }
    }

    /// Sets the endpoint's name.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Which requests an `Upstream` serves: the shape of the `Upstream` kind's
/// one rule (see [`UpstreamConfig::to_route`]). The empty match serves
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RouteMatch {
    /// Exact `Host` (without port), compared case-insensitively.
    pub host: Option<String>,
    /// Path prefix, matched on `/` segment boundaries (`/api` matches `/api`
    /// and `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
}

/// Per-upstream overrides of the LB-wide defaults; `None` means "use the flag".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// TCP connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Time allowed from sending the request to the response head.
    pub response_header_timeout: Option<Duration>,
    /// Extra attempts on other endpoints after a retryable failure.
    pub retries: Option<u32>,
    /// Consecutive connect failures that eject an endpoint.
    pub eject_after: Option<u32>,
    /// Base ejection period.
    pub ejection_time: Option<Duration>,
}

/// The protocol spoken to an upstream's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, without TLS (`h2c`; a Service port's
    /// `appProtocol: kubernetes.io/h2c`).
    H2c,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http1" | "http/1.1" => Ok(Protocol::Http1),
            "h2c" => Ok(Protocol::H2c),
            other => Err(format!(
                "unknown protocol `{other}` (expected http1 or h2c)"
            )),
        }
    }
}

/// One named pool of endpoints with its match rule: the `Upstream` kind's
/// shape (and the static sources'), lowered into the route model by
/// [`UpstreamConfig::to_route`]: one backend, one rule matching host and
/// path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Unique name (the `Upstream` object's name in Kubernetes).
    pub name: Arc<str>,
    /// Which requests it serves.
    pub route: RouteMatch,
    /// The endpoints that take new requests, in a stable order.
    pub endpoints: Vec<EndpointSpec>,
    /// Overrides of the LB-wide settings.
    pub policy: UpstreamPolicy,
    /// The protocol its endpoints speak.
    pub protocol: Protocol,
}

impl UpstreamConfig {
    /// A catch-all upstream with default policy.
    pub fn catch_all(name: impl Into<Arc<str>>, endpoints: Vec<EndpointSpec>) -> Self {
        Self {
            name: name.into(),
            route: RouteMatch::default(),
            endpoints,
            policy: UpstreamPolicy::default(),
            protocol: Protocol::Http1,
        }
    }

    /// Its endpoint set as a route-model backend (same name, endpoints,
    /// protocol and policy).
    pub fn backend(&self) -> Backend {
        Backend {
            name: self.name.clone(),
            endpoints: self.endpoints.clone(),
            protocol: self.protocol,
            policy: self.policy.clone(),
        }
    }

    /// The upstream in the route model: on every listener, for its host
    /// (any host without one), one rule matching its path prefix (every
    /// path without one) that forwards to [`UpstreamConfig::backend`], with
    /// its retries and response-header timeout as the rule's policy.
    /// `origin` and `order` say which object it is and how it ranks against
    /// equally specific routes.
    pub fn to_route(&self, origin: Origin, order: Order) -> Route {
        let hostnames = self
            .route
            .host
            .as_deref()
            .map(|h| {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                // Upstream hosts are exact names; a name the hostname
                // grammar refuses (an IP address) is still matched as
                // written, since the Upstream kind always allowed it.
                HostMatch::parse(&h)
                    .ok()
                    .filter(|m| matches!(m, HostMatch::Exact(_)))
                    .unwrap_or(HostMatch::Exact(h.into()))
            })
            .into_iter()
            .collect();
        let path = Match::prefix(self.route.path_prefix.as_deref().unwrap_or("/"));
        let mut rule = Rule::forward(vec![path], Arc::new(self.backend()));
        rule.policy = route::RulePolicy {
            request_timeout: None,
            backend_request_timeout: self.policy.response_header_timeout,
            retries: self.policy.retries,
        };
        Route {
            origin,
            order,
            scopes: vec![Scope {
                listeners: Listeners::ALL,
                hostnames,
            }],
            rules: vec![rule],
        }
    }
}

/// A complete routing snapshot: every route, with its backends' endpoints
/// resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Routes in the `Upstream` shape (static sources, `Upstream` objects);
    /// names are unique. Each is routed as [`UpstreamConfig::to_route`]
    /// says, with kind `Upstream`, no namespace and no creation time.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes of every other kind (and `Upstream`s, when an adapter lowers
    /// them itself). Backend names are unique across both lists: a backend
    /// named like an upstream, or two different backends with one name,
    /// are a configuration error that the data plane logs, keeping the
    /// first. Shared: a source keeps the routes that did not change
    /// between snapshots, and the data plane recognises them by pointer.
    pub routes: Vec<Arc<Route>>,
}

impl RoutingConfig {
    /// Every route: the upstreams lowered, then `routes`.
    pub fn all_routes(&self) -> impl Iterator<Item = Arc<Route>> {
        self.upstreams
            .iter()
            .map(|u| {
                Arc::new(u.to_route(
                    Origin {
                        kind: RouteKind::Upstream,
                        namespace: "".into(),
                        name: u.name.clone(),
                    },
                    Order::default(),
                ))
            })
            .chain(self.routes.iter().cloned())
    }
}

#[cfg(test)]
impl RoutingConfig {
    /// Tests' one catch-all Upstream `default` over `127.0.0.1:<port>` for
    /// each port.
    pub(crate) fn catch_all_local(ports: &[u16]) -> Self {
        RoutingConfig {
            upstreams: vec![UpstreamConfig::catch_all(
                "default",
                ports
                    .iter()
                    .map(|p| EndpointSpec::new(([127, 0, 0, 1], *p).into()))
                    .collect(),
            )],
            routes: Vec::new(),
        }
    }
}

/// A TLS certificate chain and its private key, as PEM, with a name for
/// messages (a file path or a Secret's name). Sources publish the set they
/// serve ([`Publisher::publish_certs`]); the TLS listener swaps it in.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPair {
    /// Where it came from.
    pub name: String,
    /// The chain, leaf first.
    pub chain_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CertPair")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The sending half handed to a discovery source.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: watch::Sender<Snapshot>,
    certs: watch::Sender<Arc<Vec<CertPair>>>,
    metrics: DiscoveryMetrics,
}

/// What a [`Subscriber`] sees: the latest routing snapshot and whether the
/// source has completed its first full sync.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The latest routing, `None` before the first publication.
    pub routing: Option<Arc<RoutingConfig>>,
    /// True once the source can route: it has produced a complete set (e.g.
    /// every static name resolved once, or the Kubernetes watchers' first
    /// `InitDone` with the default Upstream, if any, among the routes).
    pub synced: bool,
}

/// The receiving half read by the data plane and the admin server.
pub type Subscriber = watch::Receiver<Snapshot>;

/// Creates a publisher and its subscriber (metrics not exported).
pub fn channel() -> (Publisher, Subscriber) {
    channel_with_metrics(DiscoveryMetrics::default())
}

/// Same, reporting the source's errors and state in `metrics`.
pub fn channel_with_metrics(metrics: DiscoveryMetrics) -> (Publisher, Subscriber) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let (certs, _) = watch::channel(Arc::new(Vec::new()));
    (Publisher { tx, certs, metrics }, rx)
}

impl Publisher {
    /// Publishes a routing snapshot if it differs from the current one.
    /// `synced` latches: once true it stays true.
    /// Returns whether subscribers were notified.
    pub fn publish(&self, routing: RoutingConfig, synced: bool) -> bool {
        self.tx.send_if_modified(|snap| {
            let routing_changed = snap.routing.as_deref() != Some(&routing);
            let sync_changed = synced && !snap.synced;
            if routing_changed {
                snap.routing = Some(Arc::new(routing));
            }
            if sync_changed {
                snap.synced = true;
            }
            routing_changed || sync_changed
        })
    }

    /// Publishes the TLS certificates the source serves now, if they
    /// differ from the last ones.
    pub fn publish_certs(&self, certs: Vec<CertPair>) {
        self.certs.send_if_modified(|current| {
            let changed = **current != certs;
            if changed {
                *current = Arc::new(certs);
            }
            changed
        });
    }

    /// Follows the certificates published by the source.
    pub fn subscribe_certs(&self) -> watch::Receiver<Arc<Vec<CertPair>>> {
        self.certs.subscribe()
    }

    /// Counts a failed watch or list of `resource` (not a failed write:
    /// those are the source's own business, see [`DiscoveryMetrics`]).
    pub fn record_error(&self, resource: &'static str) {
        self.metrics
            .errors
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }

    /// The source's metrics.
    pub fn metrics(&self) -> &DiscoveryMetrics {
        &self.metrics
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> Subscriber {
        self.tx.subscribe()
    }
}

/// A source of endpoints.
///
/// `run` publishes snapshots until `shutdown` is cancelled. It must not
/// return early on transient errors: it logs, backs off and keeps the last
/// published snapshot in service.
pub trait Discovery: Send + fmt::Debug + 'static {
    /// Runs the source.
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// Where `lb serve` gets its endpoints, as configured (validated, nothing
/// started yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--backend` or `--config`: a static list, names re-resolved by DNS.
    Static(StaticSource),
    /// `--kubernetes`: Upstream objects and EndpointSlices.
    Kubernetes {
        /// `--namespace`, if given (else the client's default namespace).
        namespace: Option<String>,
        /// The Upstream to create if absent.
        default_upstream: Option<DefaultUpstream>,
        /// `kubernetes.io/tls` Secrets the TLS listener serves.
        tls_secrets: Vec<String>,
        /// Gateway API mode: route by Gateway API objects instead of
        /// Upstreams.
        gateway: Option<Box<GatewaySource>>,
    },
    /// `--kubernetes --ingress`: Ingresses of roundhouse's IngressClass
    /// (instead of Upstream objects).
    Ingress(Box<IngressSource>),
}

/// The Ingress mode's settings (`--ingress-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressSource {
    /// The LB's namespace (default: the client's).
    pub namespace: Option<String>,
    /// Which classes, which addresses, which HTTPS port.
    pub config: k8s::ingress::IngressConfig,
    /// The LB's Service, for the Ingresses' status.
    pub service: Option<String>,
}

/// The Gateway API mode's settings (`--gateway-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySource {
    /// Which Gateways, which ports, which addresses.
    pub config: k8s::gateway::GatewayConfig,
    /// The LB's Service, for the Gateways' addresses.
    pub service: Option<String>,
}

/// A source ready to run, with the TLS certificates it serves at the start.
#[derive(Debug)]
pub struct Built {
    /// The source.
    pub discovery: Box<dyn Discovery>,
    /// Its certificates now (from files, or the Secrets as first read).
    pub certs: Vec<CertPair>,
}

/// A discovery source that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No Kubernetes client configuration (in-cluster or `KUBECONFIG`).
    #[error("cannot configure the Kubernetes client (in-cluster or KUBECONFIG): {0}")]
    KubernetesClient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A TLS Secret that is missing, unreadable or not a TLS Secret.
    #[error("TLS Secret {name}: {message}")]
    TlsSecret {
        /// The Secret.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Certificate files that cannot be read.
    #[error(transparent)]
    CertFiles(#[from] certs::CertFileError),
}

impl SourceError {
    /// Whether the error is in the configuration (exit code 78) rather
    /// than the environment.
    pub fn is_config(&self) -> bool {
        !matches!(self, SourceError::KubernetesClient(_))
    }
}

impl Source {
    /// Whether the TLS listener is on (certificates are configured).
    pub fn has_tls(&self) -> bool {
        match self {
            Source::Static(s) => !s.tls.is_empty(),
            Source::Kubernetes {
                tls_secrets,
                gateway,
                ..
            } => !tls_secrets.is_empty() || gateway.is_some(),
            // Certificates come from the Ingresses' Secrets, later.
            Source::Ingress(_) => true,
        }
    }

    /// Builds the source (for Kubernetes: the API client, from the pod's
    /// service account or `KUBECONFIG`, and the first read of the TLS
    /// Secrets). A static source from a configuration file is reloaded as
    /// `reload` says (ignored for other sources).
    pub async fn build(self, reload: Option<reload::Reload>) -> Result<Built, SourceError> {
        Ok(match self {
            Source::Static(s) => {
                let inner = StaticDiscovery::new(s.targets.clone(), s.dns_refresh)
                    .with_cert_files(s.tls.clone())
                    .speaking(s.protocol);
                Built {
                    certs: certs::read_cert_files(&s.tls)?,
                    discovery: match reload {
                        Some(r) => Box::new(reload::ReloadingDiscovery::new(s, inner, r)),
                        None => Box::new(inner),
                    },
                }
            }
            Source::Ingress(i) => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| SourceError::KubernetesClient(Box::new(e)))?;
                let namespace = i
                    .namespace
                    .unwrap_or_else(|| client.default_namespace().to_owned());
                let mut d = k8s::ingress::IngressDiscovery::new(client, namespace, i.config)
                    .with_service(i.service);
                // The pod's name (Kubernetes sets HOSTNAME to it) names this
                // replica in the Events it creates.
                if let Ok(pod) = std::env::var("HOSTNAME") {
                    d = d.with_instance(pod);
                }
                Built {
                    certs: Vec::new(),
                    discovery: Box::new(d),
                }
            }
            Source::Kubernetes {
                namespace,
                gateway: Some(g),
                ..
            } => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| SourceError::KubernetesClient(Box::new(e)))?;
                let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
                Built {
                    certs: Vec::new(),
                    discovery: Box::new(
                        k8s::gateway::GatewayDiscovery::new(client, namespace, g.config)
                            .with_service(g.service),
                    ),
                }
            }
            Source::Kubernetes {
                namespace,
                default_upstream,
                tls_secrets,
                gateway: None,
            } => {
                let d = k8s::KubernetesDiscovery::connect(namespace, default_upstream)
                    .await?
                    .with_tls_secrets(tls_secrets);
                Built {
                    certs: d.read_tls_secrets().await?,
                    discovery: Box::new(d),
                }
            }
        })
    }
}

/// A source that publishes one fixed snapshot and then waits; for tests and
/// for embedding.
#[derive(Debug, Clone)]
pub struct FixedDiscovery(pub RoutingConfig);

impl Discovery for FixedDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            publisher.publish(self.0, true);
            shutdown.cancelled().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(port: u16) -> RoutingConfig {
        RoutingConfig {
            upstreams: vec![UpstreamConfig::catch_all(
                "default",
                vec![EndpointSpec::new(([127, 0, 0, 1], port).into())],
            )],
            routes: Vec::new(),
        }
    }

    #[test]
    fn an_upstream_is_one_rule_to_one_backend() {
        let mut u =
            UpstreamConfig::catch_all("api", vec![EndpointSpec::new(([127, 0, 0, 1], 1).into())]);
        u.route = RouteMatch {
            host: Some("API.Example".into()),
            path_prefix: Some("/v1/".into()),
        };
        u.policy.retries = Some(5);
        u.policy.response_header_timeout = Some(Duration::from_secs(3));
        u.policy.eject_after = Some(7);
        u.protocol = Protocol::H2c;
        let origin = Origin {
            kind: RouteKind::Upstream,
            namespace: "ns".into(),
            name: "api".into(),
        };
        let r = u.to_route(origin.clone(), Order { created: Some(5) });
        assert_eq!(r.origin, origin);
        assert_eq!(r.order.created, Some(5));
        assert_eq!(
            r.scopes,
            [Scope {
                listeners: Listeners::ALL,
                hostnames: vec![HostMatch::Exact("api.example".into())],
            }]
        );
        let [rule] = &r.rules[..] else {
            panic!("{r:?}")
        };
        assert_eq!(rule.matches, [Match::prefix("/v1/")]);
        assert_eq!(rule.policy.retries, Some(5));
        assert_eq!(
            rule.policy.backend_request_timeout,
            Some(Duration::from_secs(3))
        );
        let backends: Vec<_> = rule.backends().collect();
        assert_eq!(backends.len(), 1);
        assert_eq!(**backends[0], u.backend());
        assert_eq!(backends[0].protocol, Protocol::H2c);
        assert_eq!(backends[0].policy.eject_after, Some(7));
        assert!(r.validate().is_ok());

        // No host, no prefix: every request; a host the hostname grammar
        // refuses is still matched literally, as before.
        u.route = RouteMatch {
            host: Some("*.example".into()),
            path_prefix: None,
        };
        let r = u.to_route(origin, Order::default());
        assert_eq!(
            r.scopes[0].hostnames,
            [HostMatch::Exact("*.example".into())]
        );
        assert_eq!(r.rules[0].matches, [Match::prefix("/")]);
        let cfg = RoutingConfig {
            upstreams: vec![u],
            routes: vec![Arc::new(r.clone())],
        };
        let all: Vec<_> = cfg.all_routes().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].origin.kind, RouteKind::Upstream);
        assert_eq!(&*all[0].origin.namespace, "");
        assert_eq!(*all[1], r);
    }

    #[test]
    fn publish_only_notifies_on_change() {
        let (p, mut rx) = channel();
        assert!(p.publish(cfg(1), false));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!p.publish(cfg(1), false), "same routing, same sync state");
        assert!(p.publish(cfg(1), true), "sync flips");
        assert!(!p.publish(cfg(1), false), "sync latches");
        assert!(rx.borrow_and_update().synced);
        assert!(p.publish(cfg(2), false));
        assert_eq!(
            rx.borrow().routing.as_ref().unwrap().upstreams[0].endpoints[0]
                .addr
                .port(),
            2
        );
    }
}

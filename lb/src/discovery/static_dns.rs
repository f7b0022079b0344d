//! The static source: a fixed list of `HOST:PORT` targets, resolved with DNS
//! and re-resolved periodically (like nginx's `upstream { server a:5000; }`,
//! but following DNS changes, so restarted containers are found again).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::certs::{CERT_POLL, CertFiles, follow_cert_files};
use super::{Discovery, EndpointSpec, Protocol, Publisher, RoutingConfig, UpstreamConfig};

/// The name of the single upstream the static source publishes.
pub const STATIC_UPSTREAM: &str = "default";

/// A backend as configured: host name or IP literal, port and weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTarget {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// Why a `HOST:PORT` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No `:PORT` part.
    #[error("`{0}` has no port; expected HOST:PORT, e.g. backend-1:5000 or [::1]:5000")]
    MissingPort(String),
    /// The port is not a number in 1..=65535.
    #[error("`{0}` has an invalid port; expected a number from 1 to 65535")]
    BadPort(String),
    /// The host part is empty or contains characters no host name has.
    #[error("`{0}` has an invalid host; expected a DNS name or an IP address")]
    BadHost(String),
    /// Weight 0 or too large.
    #[error("weight {0} is out of range; expected 1 to 1000")]
    BadWeight(u32),
}

impl BackendTarget {
    /// Checks the weight.
    pub fn with_weight(mut self, weight: u32) -> Result<Self, TargetError> {
        if !(1..=1000).contains(&weight) {
            return Err(TargetError::BadWeight(weight));
        }
        self.weight = weight;
        Ok(self)
    }

    /// The IP literal, if the host is one.
    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for BackendTarget {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(TargetError::BadPort(s.to_owned()));
            }
            return Ok(Self {
                host: addr.ip().to_string(),
                port: addr.port(),
                weight: 1,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| TargetError::MissingPort(s.to_owned()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| TargetError::BadPort(s.to_owned()))?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid_host {
            return Err(TargetError::BadHost(s.to_owned()));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            weight: 1,
        })
    }
}

impl fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Static backends, re-resolved every `refresh`.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    targets: Vec<BackendTarget>,
    refresh: Duration,
    cert_files: Vec<CertFiles>,
    protocol: Protocol,
    updates: Option<watch::Receiver<StaticUpdate>>,
}

/// What a configuration reload may change in a running static source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticUpdate {
    /// The backends.
    pub targets: Vec<BackendTarget>,
    /// DNS refresh period.
    pub refresh: Duration,
    /// What the backends speak.
    pub protocol: Protocol,
}

impl StaticDiscovery {
    /// A static source over `targets`, re-resolving names every `refresh`.
    pub fn new(targets: Vec<BackendTarget>, refresh: Duration) -> Self {
        Self {
            targets,
            refresh,
            cert_files: Vec::new(),
            protocol: Protocol::Http1,
            updates: None,
        }
    }

    /// Also takes new backends, refresh period and protocol from `updates`
    /// (configuration reloads), applied like any other endpoint change.
    pub fn following(mut self, updates: watch::Receiver<StaticUpdate>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// The backends speak `protocol`.
    pub fn speaking(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Also publishes the certificates in `files`, and again whenever they
    /// change.
    pub fn with_cert_files(mut self, files: Vec<CertFiles>) -> Self {
        self.cert_files = files;
        self
    }
}

/// What one resolution round produced for one target.
#[derive(Debug)]
struct Resolved {
    addrs: Option<BTreeSet<SocketAddr>>,
}

async fn resolve(target: &BackendTarget) -> Resolved {
    if let Some(ip) = target.ip() {
        return Resolved {
            addrs: Some(BTreeSet::from([SocketAddr::new(ip, target.port)])),
        };
    }
    match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
        Ok(addrs) => {
            let set: BTreeSet<SocketAddr> = addrs.collect();
            if set.is_empty() {
                warn!(backend = %target, "DNS returned no address");
                Resolved { addrs: None }
            } else {
                Resolved { addrs: Some(set) }
            }
        }
        Err(e) => {
            warn!(backend = %target, error = %e, "cannot resolve backend");
            Resolved { addrs: None }
        }
    }
}

impl Discovery for StaticDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut this = *self;
            if !this.cert_files.is_empty() {
                tokio::spawn(follow_cert_files(
                    this.cert_files.clone(),
                    CERT_POLL,
                    publisher.clone(),
                    shutdown.clone(),
                ));
            }
            // Last known addresses per target; a failed lookup keeps them, so a
            // DNS hiccup never empties the pool.
            let mut known: Vec<Option<BTreeSet<SocketAddr>>> = vec![None; this.targets.len()];
            let mut updates = this.updates.take();
            loop {
                let rounds = join_all(this.targets.iter().map(resolve)).await;
                for (slot, r) in known.iter_mut().zip(rounds) {
                    if let Some(addrs) = r.addrs {
                        *slot = Some(addrs);
                    }
                }
                let complete = known.iter().all(Option::is_some);
                let endpoints = build_endpoints(&this.targets, &known);
                let mut upstream = UpstreamConfig::catch_all(STATIC_UPSTREAM, endpoints);
                upstream.protocol = this.protocol;
                let routing = RoutingConfig {
                    upstreams: vec![upstream],
                    routes: Vec::new(),
                };
                let count = routing.upstreams[0].endpoints.len();
                if publisher.publish(routing, complete) {
                    info!(endpoints = count, complete, "static endpoints updated");
                } else {
                    debug!(endpoints = count, "static endpoints unchanged");
                }
                // Until every name has resolved once, retry faster than `refresh`.
                let wait = if complete {
                    this.refresh
                } else {
                    Duration::from_millis(250).min(this.refresh)
                };
                let update = async {
                    if let Some(rx) = updates.as_mut()
                        && rx.changed().await.is_ok()
                    {
                        return Some(rx.borrow_and_update().clone());
                    }
                    std::future::pending().await
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    Some(u) = update => {
                        known = carry_known(&this.targets, known, &u.targets);
                        this.targets = u.targets;
                        this.refresh = u.refresh;
                        this.protocol = u.protocol;
                    }
                }
            }
        })
    }
}

/// The last known addresses of the targets that stay (same host and port;
/// the weight may change), so a reload publishes them at once even if DNS
/// is slow; new targets start unresolved.
fn carry_known(
    old: &[BackendTarget],
    known: Vec<Option<BTreeSet<SocketAddr>>>,
    new: &[BackendTarget],
) -> Vec<Option<BTreeSet<SocketAddr>>> {
    new.iter()
        .map(|t| {
            old.iter()
                .position(|o| o.host == t.host && o.port == t.port)
                .and_then(|i| known[i].clone())
        })
        .collect()
}

/// Flattens resolved targets into endpoints in configuration order, each
/// target's addresses sorted, duplicates (two names for one address) merged
/// by keeping the first.
fn build_endpoints(
    targets: &[BackendTarget],
    known: &[Option<BTreeSet<SocketAddr>>],
) -> Vec<EndpointSpec> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (target, addrs) in targets.iter().zip(known) {
        let name: Arc<str> = Arc::from(target.host.as_str());
        for addr in addrs.iter().flatten() {
            if seen.insert(*addr) {
                out.push(EndpointSpec {
                    addr: *addr,
                    name: Some(name.clone()),
                    weight: target.weight,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_addresses_of_targets_that_stay() {
        let t = |s: &str| s.parse::<BackendTarget>().unwrap();
        let addrs = |p: u16| Some(BTreeSet::from([SocketAddr::from(([10, 0, 0, 1], p))]));
        let old = vec![t("a:1"), t("b:2")];
        let known = vec![addrs(1), addrs(2)];
        let new = vec![t("b:2").with_weight(3).unwrap(), t("c:3"), t("a:1")];
        assert_eq!(
            carry_known(&old, known, &new),
            vec![addrs(2), None, addrs(1)]
        );
    }

    #[test]
    fn parses_targets() {
        let t: BackendTarget = "Backend-1:5000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("backend-1", 5000));
        let t: BackendTarget = "127.0.0.1:80".parse().unwrap();
        assert_eq!(t.to_string(), "127.0.0.1:80");
        let t: BackendTarget = "[::1]:8080".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.to_string(), "[::1]:8080");
    }

    #[test]
    fn rejects_bad_targets() {
        assert!(matches!(
            "backend".parse::<BackendTarget>(),
            Err(TargetError::MissingPort(_))
        ));
        assert!(matches!(
            "backend:0".parse::<BackendTarget>(),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            "backend:99999".parse::<BackendTarget>(),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            ":80".parse::<BackendTarget>(),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            "a b:80".parse::<BackendTarget>(),
            Err(TargetError::BadHost(_))
        ));
        let t: BackendTarget = "a:1".parse().unwrap();
        assert!(t.clone().with_weight(0).is_err());
        assert_eq!(t.with_weight(3).unwrap().weight, 3);
    }

    #[test]
    fn endpoints_keep_order_and_merge_duplicates() {
        let a: BackendTarget = "a:1".parse().unwrap();
        let b: BackendTarget = "b:1".parse().unwrap();
        let x: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let y: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let known = vec![Some(BTreeSet::from([x, y])), Some(BTreeSet::from([x]))];
        let eps = build_endpoints(&[a, b], &known);
        let addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
        assert_eq!(addrs, vec![y, x]);
        assert!(eps.iter().all(|e| e.name.as_deref() == Some("a")));
    }

    #[tokio::test(start_paused = true)]
    async fn resolves_literals_and_localhost_and_syncs() {
        let targets = vec![
            "127.0.0.1:5001".parse().unwrap(),
            "localhost:5002".parse().unwrap(),
        ];
        let (publisher, mut rx) = super::super::channel();
        let token = CancellationToken::new();
        let task = tokio::spawn(
            Box::new(StaticDiscovery::new(targets, Duration::from_secs(5)))
                .run(publisher, token.clone()),
        );
        rx.wait_for(|s| s.synced).await.unwrap();
        let snap = rx.borrow().clone();
        let eps = &snap.routing.unwrap().upstreams[0].endpoints;
        assert!(eps.iter().any(|e| e.addr.port() == 5001));
        assert!(
            eps.iter()
                .any(|e| e.addr.port() == 5002 && e.name.as_deref() == Some("localhost"))
        );
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn unresolvable_name_publishes_partial_set_but_not_synced() {
        let targets = vec![
            "127.0.0.1:5001".parse().unwrap(),
            "no-such-host.invalid:5002".parse().unwrap(),
        ];
        let (publisher, mut rx) = super::super::channel();
        let token = CancellationToken::new();
        let task = tokio::spawn(
            Box::new(StaticDiscovery::new(targets, Duration::from_secs(5)))
                .run(publisher, token.clone()),
        );
        rx.wait_for(|s| s.routing.is_some()).await.unwrap();
        let snap = rx.borrow().clone();
        assert!(!snap.synced);
        assert_eq!(snap.routing.unwrap().upstreams[0].endpoints.len(), 1);
        token.cancel();
        task.await.unwrap();
    }
}

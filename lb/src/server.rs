//! Wiring: discovery → balancer → data plane, plus the admin server and
//! shutdown. `main.rs` parses flags and calls [`run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminState, Readiness};
use crate::discovery::{self, CertPair, Discovery};
use crate::metrics::Metrics;
use crate::proxy::access_log::AccessLog;
use crate::proxy::tls::CertStore;
use crate::proxy::{self, ProxyConfig};
use crate::selection::{Balancer, Policy};

/// Everything `run` needs.
#[derive(Debug)]
pub struct Settings {
    /// Client listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Data-plane settings.
    pub proxy: ProxyConfig,
    /// Default per-upstream policy.
    pub policy: Policy,
    /// Time between SIGTERM and the start of the drain.
    pub drain_delay: Duration,
    /// The TLS listener, if TLS is configured.
    pub tls: Option<TlsSettings>,
}

/// The TLS listener.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Its address.
    pub listen: SocketAddr,
    /// The certificates it serves (swapped in place when the source
    /// publishes new ones).
    pub certs: Arc<CertStore>,
}

/// The bound listeners, so callers (tests, `lb demo`) learn the real ports
/// before serving.
#[derive(Debug)]
pub struct Bound {
    proxy: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    admin: std::net::TcpListener,
}

impl Bound {
    /// Binds the client listeners (one per worker) and the admin listener.
    pub fn bind(settings: &Settings) -> crate::Result<Self> {
        let bind_error = |flag, addr| move |source| crate::Error::Bind { flag, addr, source };
        let proxy = proxy::bind_listeners(settings.listen, settings.proxy.workers)
            .map_err(bind_error("listen", settings.listen))?;
        let tls = match &settings.tls {
            Some(t) => proxy::bind_listeners(t.listen, settings.proxy.workers)
                .map_err(bind_error("tls-listen", t.listen))?,
            None => Vec::new(),
        };
        let admin = std::net::TcpListener::bind(settings.admin_listen)
            .map_err(bind_error("admin-listen", settings.admin_listen))?;
        admin.set_nonblocking(true)?;
        Ok(Self { proxy, tls, admin })
    }

    /// The TLS address, if TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.first().and_then(|l| l.local_addr().ok())
    }

    /// The client address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy[0]
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }
}

/// Handles to a running LB, for embedding and tests.
#[derive(Debug, Clone)]
pub struct Running {
    /// The routing table owner.
    pub balancer: Arc<Balancer>,
    /// Readiness flag.
    pub ready: Readiness,
}

/// Runs the LB until `shutdown` resolves, then drains and returns.
/// `on_start` is called once everything is started.
pub async fn run(
    settings: Settings,
    bound: Bound,
    source: Box<dyn Discovery>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_start: impl FnOnce(Running),
) -> std::io::Result<()> {
    let metrics = Arc::new(Metrics::new(settings.proxy.workers));
    if let Some(limit) = raise_fd_limit() {
        metrics
            .fd_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }
    let balancer = Arc::new(Balancer::new(settings.policy.clone(), metrics.clone()));
    let ready = Readiness::default();
    let stop_discovery = CancellationToken::new();
    let stop_proxy = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    // Discovery → routing table. The table changes only when a complete
    // snapshot arrives; readiness flips once the source says it is synced.
    let (publisher, mut rx) = discovery::channel_with_metrics(metrics.discovery.clone());
    let certs_rx = publisher.subscribe_certs();
    let discovery_task = tokio::spawn(source.run(publisher, stop_discovery.clone()));
    let applier = {
        let balancer = balancer.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut was_synced = false;
            loop {
                let snap = rx.borrow_and_update().clone();
                if let Some(routing) = &snap.routing {
                    balancer.apply(routing);
                }
                if snap.synced && !was_synced {
                    was_synced = true;
                    ready.set(true);
                    info!("discovery synced; ready");
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let housekeeping = {
        let balancer = balancer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                balancer.housekeeping();
            }
        })
    };

    let proxy_addr = bound.proxy_addr();
    let tls_addr = bound.tls_addr();
    let admin_addr = bound.admin_addr();
    let tls = match &settings.tls {
        Some(t) => {
            let config =
                proxy::tls::server_config(t.certs.clone()).map_err(std::io::Error::other)?;
            tokio::spawn(follow_certs(t.certs.clone(), certs_rx, metrics.clone()));
            Some((bound.tls, config))
        }
        None => None,
    };
    let access_log = match &settings.proxy.access_log {
        Some(target) => Some(AccessLog::start(
            target,
            settings.proxy.access_log_format,
            metrics.clone(),
        )?),
        None => None,
    };
    let workers = proxy::start(
        proxy::Listeners {
            plain: bound.proxy,
            tls,
        },
        balancer.clone(),
        settings.proxy.clone(),
        stop_proxy.clone(),
        access_log.as_ref(),
    )?;
    let admin_listener = tokio::net::TcpListener::from_std(bound.admin)?;
    let admin_router = admin::router(AdminState {
        balancer: balancer.clone(),
        ready: ready.clone(),
    });
    let admin_stop = stop_admin.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(async move { admin_stop.cancelled().await })
            .await
    });
    info!(
        listen = %proxy_addr,
        tls_listen = tls_addr.map(|a| a.to_string()),
        admin = %admin_addr,
        workers = settings.proxy.workers,
        "roundhouse lb started"
    );
    on_start(Running {
        balancer: balancer.clone(),
        ready: ready.clone(),
    });

    shutdown.await;
    ready.set(false);
    if !settings.drain_delay.is_zero() {
        info!(
            seconds = settings.drain_delay.as_secs_f64(),
            "not ready; still accepting during the drain delay"
        );
        tokio::time::sleep(settings.drain_delay).await;
    }
    info!("closing listeners and draining in-flight requests");
    stop_proxy.cancel();
    // Every worker's WorkerLog is dropped (its lines handed over) when its
    // thread ends, so the writer's channel closes and shutdown returns
    // once everything queued is written.
    workers.wait().await;
    if let Some(log) = access_log {
        let _ = tokio::task::spawn_blocking(move || log.shutdown()).await;
    }
    stop_discovery.cancel();
    stop_admin.cancel();
    housekeeping.abort();
    let _ = discovery_task.await;
    applier.abort();
    match admin_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "admin server failed"),
        Err(e) => warn!(error = %e, "admin task failed"),
    }
    info!("stopped");
    Ok(())
}

/// Swaps in the certificates the discovery source publishes (renewed
/// files, a changed Secret). An unusable set is logged and counted, and the
/// previous certificates keep serving.
async fn follow_certs(
    store: Arc<CertStore>,
    mut rx: tokio::sync::watch::Receiver<Arc<Vec<CertPair>>>,
    metrics: Arc<Metrics>,
) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let certs = rx.borrow_and_update().clone();
        if certs.is_empty() {
            continue;
        }
        match store.replace(&certs) {
            Ok(()) => {
                metrics.tls_reloads("success");
                info!(certificates = ?store.names(), "TLS certificates loaded");
            }
            Err(e) => {
                metrics.tls_reloads("failure");
                warn!(error = %e, "new TLS certificates are unusable; the previous ones keep serving");
            }
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as nginx's
/// `worker_rlimit_nofile`): every client connection needs a descriptor, and
/// many systems start processes at a soft limit of 1024. Logs old soft, new
/// soft and hard at info; returns the soft limit now in force (0 when
/// unlimited), or `None` when it cannot be read.
fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    let mut new = old;
    new.current = old.maximum;
    if new.current != old.current
        && let Err(e) = setrlimit(Resource::Nofile, new)
    {
        warn!(error = %e, soft = %show(old.current), hard = %show(old.maximum), "could not raise the file-descriptor limit");
        return old.current.or(Some(0));
    }
    let now = getrlimit(Resource::Nofile);
    info!(
        old_soft = %show(old.current),
        new_soft = %show(now.current),
        hard = %show(now.maximum),
        "file-descriptor limit (RLIMIT_NOFILE)"
    );
    now.current.or(Some(0))
}

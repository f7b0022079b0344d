//! Wiring: discovery → balancer → data plane, plus the admin server and
//! shutdown. `main.rs` parses flags and calls [`run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminState, Readiness};
use crate::discovery::{self, Discovery};
use crate::metrics::Metrics;
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
}

/// The bound listeners, so callers (tests, `lb demo`) learn the real ports
/// before serving.
#[derive(Debug)]
pub struct Bound {
    proxy: Vec<std::net::TcpListener>,
    admin: std::net::TcpListener,
}

impl Bound {
    /// Binds the client listeners (one per worker) and the admin listener.
    pub fn bind(settings: &Settings) -> crate::Result<Self> {
        let bind_error = |flag, addr| move |source| crate::Error::Bind { flag, addr, source };
        let proxy = proxy::bind_listeners(settings.listen, settings.proxy.workers)
            .map_err(bind_error("listen", settings.listen))?;
        let admin = std::net::TcpListener::bind(settings.admin_listen)
            .map_err(bind_error("admin-listen", settings.admin_listen))?;
        admin.set_nonblocking(true)?;
        Ok(Self { proxy, admin })
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
    let balancer = Arc::new(Balancer::new(settings.policy.clone(), metrics.clone()));
    let ready = Readiness::default();
    let stop_discovery = CancellationToken::new();
    let stop_proxy = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    // Discovery → routing table. The table changes only when a complete
    // snapshot arrives; readiness flips once the source says it is synced.
    let (publisher, mut rx) = discovery::channel_with_metrics(metrics.discovery.clone());
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
    let admin_addr = bound.admin_addr();
    let workers = proxy::start(
        bound.proxy,
        balancer.clone(),
        settings.proxy.clone(),
        stop_proxy.clone(),
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
    workers.wait().await;
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

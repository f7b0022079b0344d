//! `lb demo`: two in-process backends (`backend-1`, `backend-2`) on loopback
//! and the LB in front of them. Only built with the `demo` feature (on by
//! default, off in the container image), so production code carries no
//! backend code.

use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tracing::info;

use crate::discovery::{EndpointSpec, FixedDiscovery, RoutingConfig, UpstreamConfig};
use crate::server::{self, Bound, Settings};

/// Starts the two backends on `127.0.0.1:0`; returns their addresses. They
/// stop when `stop` fires.
pub async fn start_backends(
    stop: &broadcast::Sender<()>,
) -> std::io::Result<Vec<(String, SocketAddr)>> {
    let mut out = Vec::new();
    for name in ["backend-1", "backend-2"] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut rx = stop.subscribe();
        tokio::spawn(backend::run(
            listener,
            backend::AppState::new(name),
            Duration::ZERO,
            async move {
                let _ = rx.recv().await;
            },
        ));
        out.push((name.to_owned(), addr));
    }
    Ok(out)
}

/// Runs the demo until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> crate::Result<()> {
    let bound = Bound::bind(&settings)?;
    let (stop, _) = broadcast::channel(1);
    let backends = start_backends(&stop).await?;
    let endpoints = backends
        .iter()
        .map(|(name, addr)| EndpointSpec::new(*addr).named(name.as_str()))
        .collect();
    let routing = RoutingConfig {
        upstreams: vec![UpstreamConfig::catch_all("default", endpoints)],
        routes: Vec::new(),
    };
    let lb = bound.proxy_addr();
    let admin = bound.admin_addr();
    for (name, addr) in &backends {
        info!(backend = %name, %addr, "demo backend listening");
    }
    eprintln!(
        "\nroundhouse demo: LB on http://{lb} → backend-1, backend-2 (admin on http://{admin})\n\
         try:  LB_URL=http://{lb} ./test.sh\n      curl http://{admin}/endpoints\n"
    );
    server::run(
        settings,
        bound,
        Box::new(FixedDiscovery(routing)),
        crate::shutdown::signal().boxed(),
        |_| {},
    )
    .await?;
    let _ = stop.send(());
    Ok(())
}

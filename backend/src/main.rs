//! `backend`: parses the configuration, binds the listener and serves until
//! SIGTERM/SIGINT, then drains and exits 0.

use std::process::ExitCode;

use anyhow::Context;
use backend::{AppState, Config};
use clap::Parser;
use tokio::net::TcpListener;
use tracing::info;

fn main() -> ExitCode {
    let config = Config::parse();
    backend::init_tracing(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    let host = config.host_name()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Handlers first: a SIGTERM sent as soon as the line below is seen is
    // a graceful shutdown, never the default action.
    let shutdown = backend::shutdown_signal();
    info!(%addr, host = %host, echo = config.echo, "listening");
    let mut state = AppState::new(host);
    if config.echo {
        state = state.echoing(backend::Identity {
            namespace: config.namespace.clone().unwrap_or_default(),
            pod: config.pod.clone().unwrap_or_default(),
        });
    }
    backend::run(listener, state, config.drain(), shutdown)
        .await
        .context("server error")
}

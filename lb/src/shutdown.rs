//! Process signals.

use tracing::info;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutdown requested"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!(signal = "SIGINT", "shutdown requested");
    }
}

/// Installs the SIGHUP handler now (so a SIGHUP never kills the process
/// once it serves) and returns one message per SIGHUP. Must be called
/// inside a Tokio runtime.
pub fn hangups() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(signal = "SIGHUP", "reload requested");
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

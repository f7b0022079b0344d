//! Reloading the static configuration file (`--config FILE`) without a
//! restart: on SIGHUP, and when the file's contents change.
//!
//! The file is re-read by the same function that loaded it at the start
//! (so the two cannot disagree), validated completely, and only then
//! applied: the backends, `dnsRefresh` and `protocol` go to the running
//! static source, which publishes them like any DNS change (cursors and
//! health of the endpoints that stay are kept; in-flight requests and open
//! tunnels are untouched). A file that cannot be used is logged with the
//! exact error and the old configuration keeps serving.
//!
//! The file is polled rather than watched with inotify: polling is
//! portable, follows a path through symlinks (a Kubernetes ConfigMap's
//! `..data` swap replaces the file by rename, which inotify on the old
//! inode would miss), and a change is applied only once two reads a moment
//! apart agree, so a half-written file is never applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::file::StaticSource;
use super::static_dns::{StaticDiscovery, StaticUpdate};
use super::{Discovery, Publisher};

/// How often the configuration file is checked for changes by default.
pub const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Loads and validates the configuration; the function used at the start.
pub type Loader = Arc<dyn Fn() -> Result<StaticSource, String> + Send + Sync>;

/// What reloading needs.
pub struct Reload {
    /// The file, for messages.
    pub path: PathBuf,
    /// Loads and validates the whole configuration (file plus flags).
    pub load: Loader,
    /// How often the file is checked for changes.
    pub poll: Duration,
    /// One message per reload request (SIGHUP).
    pub triggers: mpsc::UnboundedReceiver<()>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("path", &self.path)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// What a new configuration changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The configuration to serve from now on (restart-only parts kept as
    /// they were).
    pub next: StaticSource,
    /// Changes that are not applied until a restart.
    pub restart_only: Vec<&'static str>,
}

/// Splits a newly loaded configuration into what is applied now and what
/// needs a restart (the TLS listener and its list of certificate files;
/// the files' contents are reloaded on their own).
pub fn plan(current: &StaticSource, mut new: StaticSource) -> Plan {
    let mut restart_only = Vec::new();
    if new.tls != current.tls {
        restart_only.push("tls (the certificate file list and the TLS listener)");
        new.tls = current.tls.clone();
    }
    Plan {
        next: new,
        restart_only,
    }
}

fn update_of(s: &StaticSource) -> StaticUpdate {
    StaticUpdate {
        targets: s.targets.clone(),
        refresh: s.dns_refresh,
        protocol: s.protocol,
    }
}

/// The static source plus its configuration file, followed.
#[derive(Debug)]
pub struct ReloadingDiscovery {
    current: StaticSource,
    inner: StaticDiscovery,
    reload: Reload,
}

impl ReloadingDiscovery {
    /// A static source started from `current`, reloaded as `reload` says.
    pub fn new(current: StaticSource, inner: StaticDiscovery, reload: Reload) -> Self {
        Self {
            current,
            inner,
            reload,
        }
    }
}

impl Discovery for ReloadingDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let this = *self;
        let (tx, rx) = watch::channel(update_of(&this.current));
        let metrics = publisher.metrics().clone();
        metrics.config_loaded();
        tokio::spawn(follow(
            this.current,
            this.reload,
            tx,
            metrics,
            shutdown.clone(),
        ));
        Box::new(this.inner.following(rx)).run(publisher, shutdown)
    }
}

/// What the file held when last looked at.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Contents(Vec<u8>),
    Unreadable(String),
}

fn look(path: &std::path::Path) -> Seen {
    match std::fs::read(path) {
        Ok(b) => Seen::Contents(b),
        Err(e) => Seen::Unreadable(e.to_string()),
    }
}

/// Reloads on every trigger and whenever the file's contents change (and
/// stay the same for a moment), until `shutdown`.
async fn follow(
    mut current: StaticSource,
    mut reload: Reload,
    tx: watch::Sender<StaticUpdate>,
    metrics: crate::metrics::DiscoveryMetrics,
    shutdown: CancellationToken,
) {
    let settle = (reload.poll / 4).min(Duration::from_millis(200));
    let mut last = look(&reload.path);
    let mut signals = true;
    loop {
        let cause = tokio::select! {
            () = shutdown.cancelled() => return,
            t = reload.triggers.recv(), if signals => match t {
                Some(()) => "SIGHUP",
                None => {
                    signals = false;
                    continue;
                }
            },
            () = tokio::time::sleep(reload.poll) => "file change",
        };
        let now = look(&reload.path);
        if cause == "file change" {
            if now == last {
                continue;
            }
            // A file being written: wait until two reads agree.
            tokio::time::sleep(settle).await;
            if look(&reload.path) != now {
                continue;
            }
        }
        last = now;
        match (reload.load)() {
            Ok(new) => {
                let Plan { next, restart_only } = plan(&current, new);
                for what in &restart_only {
                    warn!(
                        file = %reload.path.display(),
                        change = what,
                        "this configuration change needs a restart; the rest is applied"
                    );
                }
                metrics.config_reload(true);
                let changed = next != current;
                info!(
                    file = %reload.path.display(),
                    cause,
                    backends = next.targets.len(),
                    dns_refresh = ?next.dns_refresh,
                    protocol = ?next.protocol,
                    changed,
                    "configuration reloaded"
                );
                tx.send_replace(update_of(&next));
                current = next;
            }
            Err(e) => {
                metrics.config_reload(false);
                error!(
                    file = %reload.path.display(),
                    cause,
                    error = %e,
                    "configuration reload failed; the previous configuration keeps serving"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Protocol;
    use crate::discovery::certs::CertFiles;

    fn source(backends: &[&str], tls: &[&str]) -> StaticSource {
        StaticSource {
            targets: backends.iter().map(|b| b.parse().unwrap()).collect(),
            dns_refresh: Duration::from_secs(5),
            tls: tls
                .iter()
                .map(|c| CertFiles {
                    cert: c.into(),
                    key: format!("{c}.key").into(),
                })
                .collect(),
            protocol: Protocol::Http1,
        }
    }

    #[test]
    fn tls_list_changes_need_a_restart_the_rest_applies() {
        let old = source(&["a:1"], &["a.crt"]);
        let p = plan(&old, source(&["a:1", "b:2"], &["a.crt"]));
        assert!(p.restart_only.is_empty());
        assert_eq!(p.next.targets.len(), 2);

        let mut new = source(&["b:2"], &["b.crt"]);
        new.protocol = Protocol::H2c;
        let p = plan(&old, new);
        assert_eq!(p.restart_only.len(), 1);
        assert_eq!(p.next.tls, old.tls, "the TLS list stays as started");
        assert_eq!(p.next.protocol, Protocol::H2c);
        assert_eq!(p.next.targets[0].host, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn reloads_on_signal_and_on_content_change_only() {
        let dir = std::env::temp_dir().join(format!("rh-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.yaml");
        std::fs::write(&path, "backends: [a:1]\n").unwrap();
        let load: Loader = {
            let path = path.clone();
            Arc::new(move || {
                super::super::file::read_file_config(&path, Duration::from_secs(5))
                    .map_err(|e| e.to_string())
            })
        };
        let (trigger, triggers) = mpsc::unbounded_channel();
        let (tx, mut rx) = watch::channel(update_of(&source(&["a:1"], &[])));
        let metrics = crate::metrics::DiscoveryMetrics::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            source(&["a:1"], &[]),
            Reload {
                path: path.clone(),
                load,
                poll: CONFIG_POLL,
                triggers,
            },
            tx,
            metrics.clone(),
            stop.clone(),
        ));
        let reloads = |r: &'static str| {
            metrics
                .config_reloads
                .get_or_create(&crate::metrics::ResultLabels { result: r })
                .get()
        };
        // Touching without a change does nothing.
        std::fs::write(&path, "backends: [a:1]\n").unwrap();
        tokio::time::sleep(CONFIG_POLL * 3).await;
        assert_eq!(reloads("success"), 0);
        // A change is applied at the next poll.
        std::fs::write(&path, "backends: [a:1, b:2]\ndnsRefresh: 1s\n").unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().targets.len(), 2);
        assert_eq!(rx.borrow().refresh, Duration::from_secs(1));
        assert_eq!(reloads("success"), 1);
        // A broken file is counted once, and nothing is applied.
        std::fs::write(&path, "backends: [a:1\n").unwrap();
        tokio::time::sleep(CONFIG_POLL * 3).await;
        assert_eq!(reloads("failure"), 1);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);
        assert!(!rx.has_changed().unwrap());
        // A signal reloads even without a change (and fails again here).
        trigger.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(reloads("failure"), 2);
        std::fs::write(&path, "backends: [c:3]\n").unwrap();
        trigger.send(()).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().targets[0].host, "c");
        assert_eq!(metrics.config_last_reload_successful.get(), 1);
        stop.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

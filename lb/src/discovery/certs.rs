//! TLS certificate files (`--tls-cert`/`--tls-key`, or the config file's
//! `tls:` list): read at the start, then followed for changes, so a renewed
//! certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{CertPair, Publisher};

/// A certificate chain file and its key file (`--tls-cert`/`--tls-key`,
/// or an entry of the config file's `tls:` list).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A certificate or key file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read TLS file {path}: {source}")]
pub struct CertFileError {
    /// The file.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Reads every pair (each named after its certificate file).
pub fn read_cert_files(files: &[CertFiles]) -> Result<Vec<CertPair>, CertFileError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertFileError {
            path: path.to_owned(),
            source,
        })
    };
    files
        .iter()
        .map(|f| {
            Ok(CertPair {
                name: f.cert.display().to_string(),
                chain_pem: read(&f.cert)?,
                key_pem: read(&f.key)?,
            })
        })
        .collect()
}

/// How often certificate files are checked for changes.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// What identifies a file's current contents cheaply: size, modification
/// time and inode (the path is followed, so a Kubernetes Secret volume's
/// symlink swap counts as a change).
fn stamp(files: &[CertFiles]) -> Vec<Option<(u64, std::time::SystemTime, u64)>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .flat_map(|f| [&f.cert, &f.key])
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.len(), m.modified().ok()?, m.ino()))
        })
        .collect()
}

/// Publishes the certificates in `files` now and again whenever one of the
/// files changes (checked every `every`), until `shutdown`. A pair that
/// cannot be read is logged and the last good set stays published.
pub async fn follow_cert_files(
    files: Vec<CertFiles>,
    every: Duration,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let now = stamp(&files);
        if last.as_ref() != Some(&now) {
            match read_cert_files(&files) {
                Ok(pairs) => publisher.publish_certs(pairs),
                Err(e) => {
                    warn!(error = %e, "cannot read the TLS certificate files; keeping the previous ones")
                }
            }
            last = Some(now);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn certificate_files_are_followed() {
        let dir = std::env::temp_dir().join(format!("rh-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = vec![CertFiles {
            cert: dir.join("a.crt"),
            key: dir.join("a.key"),
        }];
        std::fs::write(&files[0].cert, b"chain-1").unwrap();
        std::fs::write(&files[0].key, b"key-1").unwrap();
        let (publisher, _) = super::super::channel();
        let mut certs = publisher.subscribe_certs();
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow_cert_files(
            files.clone(),
            CERT_POLL,
            publisher,
            stop.clone(),
        ));
        certs.changed().await.unwrap();
        assert_eq!(certs.borrow_and_update()[0].chain_pem, b"chain-1");
        // A renewal: new contents (and size), picked up at the next check.
        std::fs::write(&files[0].cert, b"chain-two").unwrap();
        certs.changed().await.unwrap();
        assert_eq!(certs.borrow_and_update()[0].chain_pem, b"chain-two");
        // A file that disappears keeps the last good set.
        std::fs::remove_file(&files[0].key).unwrap();
        tokio::time::sleep(CERT_POLL * 3).await;
        assert!(!certs.has_changed().unwrap());
        stop.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The static configuration file (`--config FILE`): the backends and how
//! often their names are re-resolved.
//!
//! ```yaml
//! backends:
//!   - backend-1:5000
//!   - address: backend-2:5000
//!     weight: 2
//! dnsRefresh: 5s
//! protocol: h2c           # optional: http1 (default) or h2c to the backends
//! tls:                    # optional: the TLS listener's certificates
//!   - cert: /etc/roundhouse/tls/a.crt
//!     key: /etc/roundhouse/tls/a.key
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Protocol;
use super::certs::CertFiles;
use super::static_dns::{BackendTarget, TargetError};

/// Parses a duration such as `500ms`, `2s` or `1m`, with a hint on failure.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 1m)"))
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Unreadable file.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Invalid YAML or an invalid value.
    #[error("invalid config file {path}: {message}")]
    Yaml {
        /// File.
        path: PathBuf,
        /// What serde_yaml said, with line and column, or which value is wrong.
        message: String,
    },
    /// A bad backend entry.
    #[error("invalid config file {path}: bad backend: {source}")]
    Target {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: TargetError,
    },
}

/// One backend entry in the YAML file: `"host:port"` or a map.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum BackendEntry {
    Short(String),
    Long(BackendLong),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendLong {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// The YAML configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    backends: Vec<BackendEntry>,
    #[serde(default)]
    dns_refresh: Option<String>,
    #[serde(default)]
    tls: Vec<CertFiles>,
    #[serde(default)]
    protocol: Option<String>,
}

/// The static configuration: backends, refresh period and TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSource {
    /// Targets in order.
    pub targets: Vec<BackendTarget>,
    /// DNS refresh period.
    pub dns_refresh: Duration,
    /// Certificate files for the TLS listener (none: no TLS).
    pub tls: Vec<CertFiles>,
    /// What the backends speak (`--upstream-protocol`, `protocol:`).
    pub protocol: Protocol,
}

/// Reads and parses the file at `path`.
pub fn read_file_config(path: &Path, default_refresh: Duration) -> Result<StaticSource, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file_config(&text, path, default_refresh)
}

/// Parses the YAML config text (`path` is for messages only).
pub fn parse_file_config(
    text: &str,
    path: &Path,
    default_refresh: Duration,
) -> Result<StaticSource, FileError> {
    let file: FileConfig = serde_yaml::from_str(text).map_err(|e| FileError::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.backends.is_empty() {
        return Err(FileError::Yaml {
            path: path.to_owned(),
            message: "`backends` is empty".into(),
        });
    }
    let targets = file
        .backends
        .into_iter()
        .map(|b| match b {
            BackendEntry::Short(s) => s.parse::<BackendTarget>(),
            BackendEntry::Long(l) => l.address.parse::<BackendTarget>()?.with_weight(l.weight),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FileError::Target {
            path: path.to_owned(),
            source,
        })?;
    let dns_refresh = match file.dns_refresh {
        Some(s) => parse_duration(&s).map_err(|e| FileError::Yaml {
            path: path.to_owned(),
            message: format!("dnsRefresh: {e}"),
        })?,
        None => default_refresh,
    };
    let protocol = match file.protocol.as_deref() {
        Some(p) => p.parse().map_err(|e| FileError::Yaml {
            path: path.to_owned(),
            message: format!("protocol: {e}"),
        })?,
        None => Protocol::Http1,
    };
    Ok(StaticSource {
        targets,
        dns_refresh,
        tls: file.tls,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_config() {
        let p = Path::new("lb.yaml");
        let src = parse_file_config(
            "backends:\n  - backend-1:5000\n  - address: backend-2:5000\n    weight: 3\ndnsRefresh: 2s\n",
            p,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(src.targets.len(), 2);
        assert_eq!(src.targets[1].weight, 3);
        assert_eq!(src.dns_refresh, Duration::from_secs(2));

        let e = parse_file_config("backend: []\n", p, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("unknown field `backend`"), "{e}");
        let e = parse_file_config("backends: []\n", p, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = parse_file_config(
            "backends:\n  - address: a:1\n    weight: 0\n",
            p,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("weight"), "{e}");
        let e = parse_file_config(
            "backends: [a:1]\ndnsRefresh: often\n",
            p,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("dnsRefresh"), "{e}");
        let e = parse_file_config("backends: {", p, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
    }
}

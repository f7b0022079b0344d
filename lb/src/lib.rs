//! roundhouse: an exact round-robin HTTP load balancer.
//!
//! The crate is split by responsibility; each module depends only on the
//! ones listed before it (`scripts/module-graph.py --check` checks that there is no
//! cycle):
//!
//! - [`metrics`]: every Prometheus metric, below everything else;
//! - [`crd`]: the `Upstream` custom resource (types and schema only);
//! - [`discovery`]: where endpoints come from — static list and DNS
//!   (`static_dns`), the config file (`file`), Kubernetes (`k8s`, the only
//!   module besides `crd` that sees Kubernetes types) — published as
//!   complete routing snapshots;
//! - [`selection`]: the routing table, endpoint state and the round-robin
//!   cursor;
//! - [`proxy`]: the data plane — listeners and per-core workers, one
//!   attempt core (`proxy::attempt`) and the transports around it;
//! - [`admin`]: probes, metrics exposition and `/endpoints`;
//! - [`config`]: the flags; [`server`]: the wiring; [`shutdown`],
//!   [`telemetry`].
//!
//! The HTTP and gRPC clients of `lb probe` and `lb check` are the binary's
//! (`src/client.rs`, declared in `main.rs`), not part of this library.

pub mod admin;
pub mod config;
pub mod crd;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod metrics;
pub mod proxy;
pub mod selection;
pub mod server;
pub mod shutdown;
pub mod telemetry;

use std::net::SocketAddr;

/// Everything that can stop the LB from starting or running. Configuration
/// errors are reported before any port is bound ([`Error::is_config`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag value or config file.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot bind --{flag} {addr}: {source}")]
    Bind {
        /// The flag that named the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The discovery source could not be set up.
    #[error(transparent)]
    Discovery(#[from] discovery::SourceError),
    /// Any other I/O failure (runtime, threads, sockets).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether this is a configuration error (exit code 78).
    pub fn is_config(&self) -> bool {
        match self {
            Error::Config(_) => true,
            Error::Discovery(e) => e.is_config(),
            _ => false,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! roundhouse: an exact round-robin HTTP load balancer.
//!
//! The crate is split by responsibility, each module replaceable on its own:
//!
//! - [`discovery`]: where endpoints come from (static/DNS now, Kubernetes
//!   next), published as complete routing snapshots;
//! - [`selection`]: the routing table, endpoint state and the round-robin
//!   cursor;
//! - [`proxy`]: accepting clients and forwarding requests (per-core
//!   runtimes, per-worker connection pools);
//! - [`admin`]: probes, metrics and `/endpoints`;
//! - [`server`]: the wiring, and [`config`]: the flags.

pub mod admin;
pub mod client;
pub mod config;
pub mod crd;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod proxy;
pub mod selection;
pub mod server;
pub mod shutdown;
pub mod telemetry;

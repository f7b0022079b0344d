//! Prometheus metrics, below every other module: selection, the proxy,
//! discovery and the admin server all report here, and only the admin
//! server reads.
//!
//! Hot-path metrics are plain atomics: each endpoint keeps the handles of its
//! own per-status-class counters (resolved once, when the endpoint appears),
//! so a request never looks a label set up in a map.

pub mod histogram;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use self::histogram::ShardedHistogram;

/// Labels of a proxied request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Upstream name.
    pub upstream: String,
    /// Endpoint address.
    pub endpoint: String,
    /// `1xx` … `5xx`.
    pub class: &'static str,
}

/// Labels of a response the LB produced itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalLabels {
    /// Why: `no_route`, `no_endpoints`, `upstream_failed`, `upstream_timeout`, `body_too_large`, …
    pub reason: &'static str,
}

/// Labels of a per-worker metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's index (0-based; its thread is `lb-worker-<index>`).
    pub worker: String,
}

/// Labels of an endpoint-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStateLabels {
    /// Upstream name.
    pub upstream: String,
    /// `ready` or `ejected`.
    pub state: &'static str,
}

/// Labels of an upstream error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `connect`, `connect_timeout`, `send`, `response_timeout`, `body`.
    pub kind: &'static str,
}

/// Labels of a discovery (watch or list) error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The watched resource: `endpointslices`, `upstreams`.
    pub resource: &'static str,
}

/// Labels of a status write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Status writes: `ok`, `retryable_error`, `permanent_error`,
    /// `not_found`; certificate reloads: `success`, `failure`.
    pub result: &'static str,
}

/// Labels of a report about an Ingress annotation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnotationLabels {
    /// The annotation's full name (`other` beyond the first 256 names).
    pub annotation: String,
    /// `unsupported`, `invalid` or `not_applied`.
    pub result: &'static str,
}

/// What a discovery source reports. Cheap to clone: every field is a handle
/// to shared atomics, so the source owns a copy.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryMetrics {
    /// Failed watches and lists, by resource (never status writes).
    pub errors: Family<ResourceLabels, Counter>,
    /// Status writes by result.
    pub status_writes: Family<ResultLabels, Counter>,
    /// Upstreams whose status on the API server is not the computed one
    /// (write pending, backing off, or rejected).
    pub status_stale: Gauge,
    /// Upstreams not routed because an older one has the same match.
    pub conflicts: Gauge,
    /// Unix time at which every watch was last known to be in sync.
    pub last_sync: Gauge<f64, AtomicU64>,
    /// Ingress annotations reported (once per object generation), by
    /// annotation and result.
    pub ingress_annotations: Family<AnnotationLabels, Counter>,
    /// Ingress paths not routed because an older Ingress has the same one.
    pub ingress_conflicts: Gauge,
    /// Events on Ingresses by result (`created`, `failed`, `dropped`).
    pub ingress_events: Family<ResultLabels, Counter>,
    /// Configuration file reloads by result (`success`, `failure`).
    pub config_reloads: Family<ResultLabels, Counter>,
    /// 1 if the last configuration reload succeeded (or none was tried), 0
    /// if it failed.
    pub config_last_reload_successful: Gauge,
    /// Unix time of the last successful configuration load (the start
    /// counts).
    pub config_last_reload_success: Gauge<f64, AtomicU64>,
}

impl DiscoveryMetrics {
    /// Records a configuration reload (`success` or `failure`).
    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        self.config_last_reload_successful.set(i64::from(success));
        if success {
            self.config_loaded();
        }
    }

    /// Records that the configuration was loaded now (at the start).
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_reload_success.set(now);
    }
}

/// Every metric the LB exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Proxied requests by upstream, endpoint and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Responses produced by the LB itself.
    pub local_responses: Family<LocalLabels, Counter>,
    /// Time from request head to response head, for proxied requests
    /// (one shard per worker).
    pub duration: ShardedHistogram,
    /// Open client connections.
    pub active_connections: Gauge,
    /// Idle client connections parked outside their tasks
    /// (`--idle-park-after`); part of `active_connections`.
    pub parked_connections: Gauge,
    /// Client connections refused because `--max-connections` was reached.
    pub refused_connections: Counter,
    /// Client connections accepted, one counter per worker (indexed by
    /// worker): how evenly `SO_REUSEPORT` spreads new connections.
    pub accepted_connections: Vec<Counter>,
    /// Failed `accept(2)` calls by reason (`fd_limit`: EMFILE/ENFILE,
    /// `memory`: ENOBUFS/ENOMEM, `other`); the connection waits in the
    /// kernel's backlog while the worker backs off.
    pub accept_errors: Family<LocalLabels, Counter>,
    /// Endpoints per upstream and state.
    pub endpoints: Family<EndpointStateLabels, Gauge>,
    /// Attempts beyond the first.
    pub retries: Counter,
    /// Passive-health ejections.
    pub ejections: Counter,
    /// Upstream failures by kind.
    pub upstream_errors: Family<ErrorLabels, Counter>,
    /// Routing snapshots applied.
    pub discovery_updates: Counter,
    /// The discovery source's metrics.
    pub discovery: DiscoveryMetrics,
    /// Open WebSocket/upgrade tunnels.
    pub tunnels: Gauge,
    /// The process's soft RLIMIT_NOFILE after start (0 when unlimited).
    pub fd_limit: Gauge,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_errors: Counter,
    /// Certificate sets swapped in (or refused) after the start.
    pub tls_certificate_reloads: Family<ResultLabels, Counter>,
    /// Access-log lines handed to the writer thread.
    pub access_log_lines: Counter,
    /// Access-log lines dropped because the sink was slower than the traffic.
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Metrics {
    /// Creates and registers every metric under the `roundhouse` prefix;
    /// `workers` sizes the per-worker latency shards.
    pub fn new(workers: usize) -> Self {
        let mut registry = Registry::with_prefix("roundhouse");
        let requests = Family::<RequestLabels, Counter>::default();
        let local_responses = Family::<LocalLabels, Counter>::default();
        let duration = ShardedHistogram::new(workers);
        let active_connections = Gauge::default();
        let parked_connections = Gauge::default();
        let refused_connections = Counter::default();
        let accept_errors = Family::<LocalLabels, Counter>::default();
        let accepted = Family::<WorkerLabels, Counter>::default();
        let accepted_connections = (0..workers.max(1))
            .map(|i| {
                accepted
                    .get_or_create(&WorkerLabels {
                        worker: i.to_string(),
                    })
                    .clone()
            })
            .collect();
        registry.register(
            "accepted_connections",
            "Client connections accepted, by worker",
            accepted,
        );
        let endpoints = Family::<EndpointStateLabels, Gauge>::default();
        let retries = Counter::default();
        let ejections = Counter::default();
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        let discovery_updates = Counter::default();
        let discovery = DiscoveryMetrics::default();
        let tunnels = Gauge::default();
        let fd_limit = Gauge::default();
        registry.register(
            "fd_limit",
            "Soft limit on open file descriptors (RLIMIT_NOFILE) after start; 0 = unlimited",
            fd_limit.clone(),
        );
        let tls_handshake_errors = Counter::default();
        let tls_certificate_reloads = Family::<ResultLabels, Counter>::default();
        let access_log_lines = Counter::default();
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_lines",
            "Access-log lines handed to the writer thread",
            access_log_lines.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the sink was slower than the traffic",
            access_log_dropped.clone(),
        );
        registry.register(
            "requests",
            "Proxied requests by upstream, endpoint and status class",
            requests.clone(),
        );
        registry.register(
            "local_responses",
            "Responses produced by the load balancer itself, by reason",
            local_responses.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to upstream response head",
            duration.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections",
            active_connections.clone(),
        );
        registry.register(
            "parked_connections",
            "Idle client connections parked outside their tasks (part of active_connections)",
            parked_connections.clone(),
        );
        registry.register(
            "refused_connections",
            "Client connections refused at the connection limit",
            refused_connections.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept calls by reason (fd_limit, memory, other); the worker backs off 50 ms",
            accept_errors.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints by upstream and state (ready, ejected)",
            endpoints.clone(),
        );
        registry.register(
            "retries",
            "Request attempts beyond the first",
            retries.clone(),
        );
        registry.register(
            "ejections",
            "Endpoints ejected by passive health checking",
            ejections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "discovery_updates",
            "Routing snapshots applied",
            discovery_updates.clone(),
        );
        registry.register(
            "discovery_errors",
            "Failed watches and lists of the discovery source, by resource",
            discovery.errors.clone(),
        );
        registry.register(
            "status_writes",
            "Upstream status writes by result (ok, retryable_error, permanent_error, not_found)",
            discovery.status_writes.clone(),
        );
        registry.register(
            "upstream_status_stale",
            "Upstreams whose status on the API server is not the computed one (pending, retrying or rejected write)",
            discovery.status_stale.clone(),
        );
        registry.register(
            "upstream_conflicts",
            "Upstreams not routed because an older Upstream has the same host and path prefix",
            discovery.conflicts.clone(),
        );
        registry.register(
            "ingress_annotations",
            "Ingress annotations reported (an Event on the Ingress, once per generation) by annotation and result: unsupported, invalid, not_applied",
            discovery.ingress_annotations.clone(),
        );
        registry.register(
            "ingress_conflicts",
            "Ingress paths not routed because an older Ingress has the same host, path and path type",
            discovery.ingress_conflicts.clone(),
        );
        registry.register(
            "ingress_events",
            "Events created on Ingresses by result: created, failed, dropped (queue full)",
            discovery.ingress_events.clone(),
        );
        registry.register(
            "discovery_last_sync_timestamp_seconds",
            "Unix time at which every watch of the discovery source was last known to be in sync",
            discovery.last_sync.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration file reloads (SIGHUP or file change) by result: success, failure (the old configuration keeps serving)",
            discovery.config_reloads.clone(),
        );
        discovery.config_last_reload_successful.set(1);
        registry.register(
            "config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried), 0 if it failed",
            discovery.config_last_reload_successful.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (the start counts; 0 without --config)",
            discovery.config_last_reload_success.clone(),
        );
        registry.register(
            "tunnels",
            "Open upgraded (WebSocket) tunnels",
            tunnels.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed or timed out",
            tls_handshake_errors.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Certificate sets swapped in (success) or refused, keeping the previous ones (failure)",
            tls_certificate_reloads.clone(),
        );
        Self {
            registry,
            requests,
            local_responses,
            duration,
            active_connections,
            parked_connections,
            refused_connections,
            accepted_connections,
            accept_errors,
            endpoints,
            retries,
            ejections,
            upstream_errors,
            discovery_updates,
            discovery,
            tunnels,
            fd_limit,
            tls_handshake_errors,
            tls_certificate_reloads,
            access_log_lines,
            access_log_dropped,
        }
    }

    /// Counts a certificate reload (`success` or `failure`).
    pub fn tls_reloads(&self, result: &'static str) {
        self.tls_certificate_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a failed accept (`fd_limit`, `memory`, `other`).
    pub fn accept_error(&self, reason: &'static str) {
        self.accept_errors
            .get_or_create(&LocalLabels { reason })
            .inc();
    }

    /// Counts a response the LB produced itself.
    pub fn local(&self, reason: &'static str) {
        self.local_responses
            .get_or_create(&LocalLabels { reason })
            .inc();
    }

    /// Counts an upstream error.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Index of a status class in an endpoint's counter array.
pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The class labels in index order.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let m = Metrics::new(1);
        m.local("no_endpoints");
        m.retries.inc();
        m.duration.observe(0, std::time::Duration::from_millis(2));
        let text = m.encode();
        assert!(
            text.contains("roundhouse_local_responses_total{reason=\"no_endpoints\"} 1"),
            "{text}"
        );
        assert!(text.contains("roundhouse_retries_total 1"));
        assert!(text.contains("roundhouse_request_duration_seconds_bucket"));
    }

    #[test]
    fn classes() {
        assert_eq!(CLASSES[class_index(204)], "2xx");
        assert_eq!(CLASSES[class_index(503)], "5xx");
        assert_eq!(CLASSES[class_index(600)], "5xx");
        assert_eq!(CLASSES[class_index(302)], "3xx");
        assert_eq!(CLASSES[class_index(101)], "1xx");
    }
}

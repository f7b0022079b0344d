//! The `Upstream` custom resource: the Kubernetes form of nginx's
//! `upstream { ... }` block. `lb crd` prints its CustomResourceDefinition,
//! which is the only source of `manifests/01-crd.yaml` and the chart's
//! `crds/upstreams.yaml` (a test fails if they drift).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "roundhouse.dev";

/// A pool of endpoints: the EndpointSlices of one Service, optionally
/// restricted to requests matching a host and path prefix.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "roundhouse.dev",
    version = "v1alpha1",
    kind = "Upstream",
    plural = "upstreams",
    shortname = "ups",
    category = "roundhouse",
    namespaced,
    status = "UpstreamStatus",
    doc = "An Upstream: the endpoints of one Service that roundhouse balances across, \
           and which requests they serve (the Kubernetes form of nginx's `upstream` block).",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// The Service (same namespace) whose EndpointSlices form the pool.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub service: String,

    /// Port name or number on the EndpointSlices; optional when the slices
    /// have exactly one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,

    /// Which requests this Upstream serves; none means all of them. The
    /// most specific match wins: an exact host before no host, then the
    /// longest path prefix.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub route: Option<UpstreamMatch>,

    /// Selection strategy.
    #[serde(default)]
    pub strategy: Strategy,

    /// Timeouts overriding the LB's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Retries overriding the LB's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,

    /// Passive health checking overriding the LB's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,

    /// What the endpoints speak: `http1`, or `h2c` (HTTP/2 without TLS,
    /// needed for gRPC). Unset: `h2c` if the Service port says
    /// `appProtocol: kubernetes.io/h2c`, else `http1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
}

/// The protocol spoken to an Upstream's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, without TLS.
    H2c,
}

/// Request match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamMatch {
    /// Exact host name (no port), case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
    )]
    pub host: Option<String>,
    /// Path prefix, matched on `/` segment boundaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^/"))]
    pub path_prefix: Option<String>,
}

/// Selection strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Strategy {
    /// Exact round-robin.
    #[default]
    RoundRobin,
}

/// Timeouts in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// TCP connect timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600_000))]
    pub connect_ms: Option<u32>,
    /// Time from sending the request to the response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub response_header_ms: Option<u32>,
}

/// Retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Extra attempts on other endpoints (0 disables retries).
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
}

/// Passive health checking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive connect failures that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub consecutive_failures: Option<u32>,
    /// Base ejection period in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub base_ejection_seconds: Option<u32>,
}

/// Observed state, written by the LB through the status subresource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Endpoints taking new requests.
    #[serde(default)]
    pub ready_endpoints: u32,
    /// `ready/total`, e.g. `2/2` (for `kubectl get ups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Every endpoint of the Service.
    #[serde(default)]
    pub endpoints: Vec<EndpointStatus>,
    /// `Ready` condition.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One endpoint in the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// IP address.
    pub address: String,
    /// Port.
    pub port: i32,
    /// `conditions.ready` (unset counts as ready).
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// The pod behind it (`targetRef.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl UpstreamSpec {
    /// Checks what the schema cannot express (the `InvalidSpec` reasons).
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(IntOrString::Int(p)) = &self.port
            && !(1..=65535).contains(p)
        {
            return Err(SpecError::PortOutOfRange(*p));
        }
        if let Some(IntOrString::String(name)) = &self.port
            && name.is_empty()
        {
            return Err(SpecError::EmptyPortName);
        }
        if let Some(prefix) = self.route.as_ref().and_then(|m| m.path_prefix.as_ref())
            && !prefix.starts_with('/')
        {
            return Err(SpecError::PathPrefix(prefix.clone()));
        }
        Ok(())
    }
}

/// Why an Upstream cannot be routed (its `InvalidSpec` condition message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `spec.port` is a number outside 1-65535.
    #[error("port {0} is out of range 1-65535")]
    PortOutOfRange(i32),
    /// `spec.port` is an empty name.
    #[error("port name is empty")]
    EmptyPortName,
    /// `spec.match.pathPrefix` does not start with `/`.
    #[error("match.pathPrefix `{0}` must start with /")]
    PathPrefix(String),
    /// `spec.port` is unset but the Service has several ports.
    #[error("the Service has {count} ports; set spec.port to one of: {names}")]
    AmbiguousPort {
        /// How many ports the Service has.
        count: usize,
        /// Their names, comma-separated.
        names: String,
    },
    /// `spec.port` names no port of the Service.
    #[error("port {port} is not a port of Service {service}")]
    UnknownPort {
        /// The port as written in the spec.
        port: String,
        /// The Service.
        service: String,
    },
}

/// The CustomResourceDefinition as YAML (what `lb crd` prints).
pub fn crd_yaml() -> String {
    let crd = Upstream::crd();
    let yaml = serde_yaml::to_string(&crd).expect("the CRD serialises");
    format!(
        "# Generated by `lb crd` from lb/src/crd.rs. Do not edit: regenerate with\n\
         #   cargo run -q -p lb -- crd > manifests/01-crd.yaml\n{yaml}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_has_names_columns_and_status() {
        let crd = Upstream::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("upstreams.roundhouse.dev")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["ups".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Service", "Ready", "Age"]);
        let yaml = crd_yaml();
        assert!(yaml.contains("RoundRobin"));
        assert!(yaml.contains("pattern: ^/"));
    }

    #[test]
    fn spec_round_trips_and_defaults() {
        let spec: UpstreamSpec =
            serde_yaml::from_str("service: backend\nport: http\nmatch:\n  pathPrefix: /api\n")
                .unwrap();
        assert_eq!(spec.strategy, Strategy::RoundRobin);
        assert_eq!(spec.port, Some(IntOrString::String("http".into())));
        assert!(spec.validate().is_ok());
        let bad: UpstreamSpec = serde_yaml::from_str("service: b\nport: 70000\n").unwrap();
        assert_eq!(bad.validate(), Err(SpecError::PortOutOfRange(70000)));
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
    }
}

//! Command-line and file configuration, validated before any port is bound.
//!
//! Every `serve` flag has an environment twin (flag > env > default), so a
//! Helm value or a compose `environment:` entry can set it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::HeaderValue;

use crate::discovery::certs::CertFiles;
use crate::discovery::file::{self, FileError, parse_duration};
use crate::discovery::k8s::gateway::GatewayConfig;
use crate::discovery::k8s::ingress::IngressConfig;
use crate::discovery::static_dns::TargetError;
use crate::discovery::{
    DefaultUpstream, GatewaySource, IngressSource, Protocol, Source, StaticSource,
};
use crate::proxy::{ProxyConfig, access_log};
use crate::selection::Policy;

/// `lb`: the roundhouse load balancer.
#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "roundhouse: an exact round-robin HTTP load balancer"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer.
    Serve(Box<ServeArgs>),
    /// Print the Upstream CustomResourceDefinition as YAML.
    Crd,
    /// Run two backends and the load balancer on loopback (the quick start).
    #[cfg(feature = "demo")]
    Demo(Box<DemoArgs>),
    /// Exit 0 if URL answers 2xx (for container health checks; no shell needed).
    Probe(ProbeArgs),
    /// Send N requests to URL and check that K backends got exactly N/K each.
    Check(CheckArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `lb serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address clients connect to.
    #[arg(long, env = "LB_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin server (/healthz, /readyz, /metrics, /endpoints).
    #[arg(long, env = "LB_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// A backend HOST:PORT (repeatable; the env twin is comma-separated).
    /// Names are resolved with DNS and re-resolved every --dns-refresh.
    #[arg(
        long = "backend",
        env = "LB_BACKENDS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub backends: Vec<String>,

    /// A YAML file listing the backends (format: README, "Sources of endpoints").
    #[arg(long, env = "LB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How often the `--config` file is checked for changes (hidden: for
    /// tests; SIGHUP reloads at once).
    #[arg(long, env = "LB_CONFIG_POLL", default_value = "2s", value_parser = duration, hide = true)]
    pub config_poll: Duration,

    /// Discover endpoints from Kubernetes: watch this namespace's Upstream
    /// objects and their Services' EndpointSlices (in-cluster config, or
    /// KUBECONFIG outside a cluster).
    #[arg(long, env = "LB_KUBERNETES")]
    pub kubernetes: bool,

    /// Namespace to watch (default: the pod's own, else the kubeconfig's).
    #[arg(long, env = "LB_NAMESPACE", requires = "kubernetes")]
    pub namespace: Option<String>,

    /// Create this Upstream at start if absent (with --service/--service-port).
    #[arg(long, env = "LB_DEFAULT_UPSTREAM", requires_all = ["kubernetes", "service"], value_name = "NAME")]
    pub default_upstream: Option<String>,

    /// The default Upstream's Service.
    #[arg(
        long,
        env = "LB_SERVICE",
        requires = "default_upstream",
        value_name = "SERVICE"
    )]
    pub service: Option<String>,

    /// The default Upstream's port (name or number).
    #[arg(
        long,
        env = "LB_SERVICE_PORT",
        requires = "default_upstream",
        value_name = "PORT"
    )]
    pub service_port: Option<String>,

    /// What the static backends speak: `http1` or `h2c` (HTTP/2 with prior
    /// knowledge; needed for gRPC backends).
    #[arg(long, env = "LB_UPSTREAM_PROTOCOL", default_value = "http1", value_parser = protocol)]
    pub upstream_protocol: Protocol,

    /// How often static backend names are re-resolved.
    #[arg(long, env = "LB_DNS_REFRESH", default_value = "5s", value_parser = duration)]
    pub dns_refresh: Duration,

    /// Data-plane settings.
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// TLS listener settings.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Ingress mode.
    #[command(flatten)]
    pub ingress: IngressArgs,

    /// Gateway API mode.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// After SIGTERM, keep accepting (while /readyz reports 503) for this
    /// long before draining, so load balancers in front can react.
    #[arg(long, env = "LB_DRAIN_DELAY", default_value = "0s", value_parser = duration)]
    pub drain_delay: Duration,

    /// Log format.
    #[arg(long, env = "LB_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// Ingress mode (`--ingress`): the LB routes by the `networking.k8s.io/v1`
/// Ingresses of the IngressClasses naming `roundhouse.dev/ingress-controller`
/// (with the ingress-nginx annotations it supports) instead of Upstream
/// objects (docs/ingress.md).
#[derive(Debug, Clone, Args)]
pub struct IngressArgs {
    /// Route by Ingress objects (cluster-wide watches; needs the
    /// ClusterRole of manifests/ingress/).
    #[arg(long, env = "LB_INGRESS", requires = "kubernetes")]
    pub ingress: bool,

    /// Serve only these IngressClasses (repeatable; default: every class
    /// naming roundhouse.dev/ingress-controller).
    #[arg(
        long = "ingress-class",
        env = "LB_INGRESS_CLASSES",
        value_delimiter = ',',
        value_name = "NAME",
        requires = "ingress"
    )]
    pub ingress_classes: Vec<String>,

    /// An address of the LB written to the Ingresses' status.loadBalancer
    /// (repeatable).
    #[arg(
        long = "ingress-address",
        env = "LB_INGRESS_ADDRESSES",
        value_delimiter = ',',
        value_name = "IP|HOSTNAME",
        requires = "ingress"
    )]
    pub ingress_addresses: Vec<String>,

    /// The LB's Service (in its namespace) whose load-balancer, external
    /// or cluster addresses the Ingresses' status gets, when
    /// --ingress-address is unset.
    #[arg(
        long = "ingress-service",
        env = "LB_INGRESS_SERVICE",
        value_name = "NAME",
        requires = "ingress"
    )]
    pub ingress_service: Option<String>,

    /// The request body limit of an Ingress without the proxy-body-size
    /// annotation, in nginx's sizes (`8m`, `512k`; `0`: none). The default
    /// is ingress-nginx's (its ConfigMap's proxy-body-size); larger bodies
    /// are answered 413.
    #[arg(
        long = "ingress-max-body-size",
        env = "LB_INGRESS_MAX_BODY_SIZE",
        default_value = "1m",
        value_name = "SIZE",
        value_parser = nginx_size,
        requires = "ingress"
    )]
    pub ingress_max_body_size: u64,
}

/// An nginx size (`1m`, `512k`, bytes).
fn nginx_size(s: &str) -> Result<u64, String> {
    crate::discovery::k8s::ingress::annotations::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (bytes, or a number with k, m or g)"))
}

/// Gateway API mode (`--gateway-api`): the LB programs Gateways of the
/// GatewayClasses that name `roundhouse.dev/gateway-controller` and routes
/// by their HTTPRoutes and GRPCRoutes instead of Upstream objects
/// (docs/gateway-api.md).
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Route by Gateway API objects (cluster-wide watches; needs the
    /// Gateway API CRDs and the ClusterRole of manifests/gateway-api/).
    #[arg(long, env = "LB_GATEWAY_API", requires = "kubernetes")]
    pub gateway_api: bool,

    /// Serve only these GatewayClasses (repeatable; default: every class
    /// naming roundhouse.dev/gateway-controller).
    #[arg(
        long = "gateway-class",
        env = "LB_GATEWAY_CLASSES",
        value_delimiter = ',',
        value_name = "NAME",
        requires = "gateway_api"
    )]
    pub gateway_classes: Vec<String>,

    /// Program only these Gateways (repeatable; default: all of the
    /// classes). One LB per Gateway isolates Gateways that use the same
    /// port and hostname.
    #[arg(
        long = "gateway",
        env = "LB_GATEWAYS",
        value_delimiter = ',',
        value_name = "NAMESPACE/NAME",
        requires = "gateway_api"
    )]
    pub gateway_names: Vec<String>,

    /// Program only the Gateways of these namespaces (repeatable).
    #[arg(
        long = "gateway-namespace",
        env = "LB_GATEWAY_NAMESPACES",
        value_delimiter = ',',
        value_name = "NAMESPACE",
        requires = "gateway_api"
    )]
    pub gateway_namespaces: Vec<String>,

    /// The Gateway listener port that the plain listener (--listen) serves.
    #[arg(long, env = "LB_GATEWAY_HTTP_PORT", default_value = "80")]
    pub gateway_http_port: u16,

    /// The Gateway listener port that the TLS listener (--tls-listen) serves.
    #[arg(long, env = "LB_GATEWAY_HTTPS_PORT", default_value = "443")]
    pub gateway_https_port: u16,

    /// An address of the LB written to the Gateways' status (repeatable).
    #[arg(
        long = "gateway-address",
        env = "LB_GATEWAY_ADDRESSES",
        value_delimiter = ',',
        value_name = "IP|HOSTNAME",
        requires = "gateway_api"
    )]
    pub gateway_addresses: Vec<String>,

    /// The LB's Service (in its namespace) whose load-balancer or cluster
    /// addresses the Gateways' status gets, when --gateway-address is unset.
    #[arg(
        long = "gateway-service",
        env = "LB_GATEWAY_SERVICE",
        value_name = "NAME",
        requires = "gateway_api"
    )]
    pub gateway_service: Option<String>,
}

impl GatewayArgs {
    /// The adapter's configuration, checked.
    pub fn config(&self) -> Result<GatewayConfig, ConfigError> {
        for g in &self.gateway_names {
            if g.split('/').count() != 2 || g.split('/').any(str::is_empty) {
                return Err(ConfigError::Invalid(format!(
                    "--gateway {g:?}: expected NAMESPACE/NAME"
                )));
            }
        }
        if self.gateway_http_port == self.gateway_https_port {
            return Err(ConfigError::Invalid(
                "--gateway-http-port and --gateway-https-port must differ".into(),
            ));
        }
        Ok(GatewayConfig {
            classes: self.gateway_classes.clone(),
            gateways: self.gateway_names.clone(),
            namespaces: self.gateway_namespaces.clone(),
            http_port: self.gateway_http_port,
            https_port: self.gateway_https_port,
            addresses: self.gateway_addresses.clone(),
        })
    }
}

/// Data-plane flags shared by `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Worker threads (default: one per CPU).
    #[arg(long, env = "LB_WORKERS")]
    pub workers: Option<usize>,

    /// TCP connect timeout to an endpoint.
    #[arg(long, env = "LB_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// Time allowed from sending a request to the response head (then 504).
    #[arg(long, env = "LB_RESPONSE_HEADER_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub response_header_timeout: Duration,

    /// Time a client has to send a request head; also closes idle keep-alive
    /// client connections.
    #[arg(long, env = "LB_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub header_read_timeout: Duration,

    /// Idle upstream connections are closed after this (keep it below the
    /// backends' keep-alive timeout).
    #[arg(long, env = "LB_UPSTREAM_IDLE_TIMEOUT", default_value = "4s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,

    /// Idle upstream connections kept per endpoint and worker.
    #[arg(long, env = "LB_UPSTREAM_MAX_IDLE", default_value_t = 256)]
    pub upstream_max_idle: usize,

    /// A plain HTTP/1.1 client connection idle this long leaves its task and
    /// is parked in the worker's table (about 0.1 KB instead of 0.9 KB). It
    /// is still closed at the header-read timeout. 0 turns it off.
    #[arg(long, env = "LB_IDLE_PARK_AFTER", default_value = "1s", value_parser = duration)]
    pub idle_park_after: Duration,

    /// Largest request head in bytes (request line + headers); beyond → 431.
    #[arg(long, env = "LB_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,

    /// Most request header fields; beyond → 431.
    #[arg(long, env = "LB_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Largest request body in bytes; beyond → 413 (default: unlimited).
    #[arg(long, env = "LB_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,

    /// Most simultaneous client connections; beyond, new ones get 503.
    #[arg(long, env = "LB_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Extra attempts on other endpoints after a connect failure (any
    /// request) or a failure before the response (idempotent requests
    /// without body).
    #[arg(long, env = "LB_RETRIES", default_value_t = 2)]
    pub retries: u32,

    /// Consecutive connect failures that eject an endpoint (0 = never).
    #[arg(long, env = "LB_EJECT_AFTER", default_value_t = 3)]
    pub eject_after: u32,

    /// Base ejection period (multiplied by consecutive ejections, up to 10×).
    #[arg(long, env = "LB_EJECTION_TIME", default_value = "5s", value_parser = duration)]
    pub ejection_time: Duration,

    /// Serve plain bodiless HTTP/1.1 requests on the fast path (httparse,
    /// raw pooled connections); `false` sends everything through hyper.
    #[arg(long, env = "LB_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub fast_path: bool,

    /// Most concurrent streams on one client HTTP/2 connection (more are
    /// refused with REFUSED_STREAM).
    #[arg(long, env = "LB_H2_MAX_STREAMS", default_value_t = 100)]
    pub h2_max_streams: u32,

    /// Time in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "LB_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// Send this Host header upstream instead of the client's.
    #[arg(long, env = "LB_HOST_HEADER", value_name = "HOST")]
    pub host_header: Option<String>,

    /// Write an access log line per request to `stderr` or to a file
    /// (appended to; created if missing). Off by default.
    #[arg(long, env = "LB_ACCESS_LOG", value_name = "stderr|PATH")]
    pub access_log: Option<access_log::Target>,

    /// Access log line format: `json` or `combined`.
    #[arg(
        long,
        env = "LB_ACCESS_LOG_FORMAT",
        value_name = "json|combined",
        default_value = "json"
    )]
    pub access_log_format: access_log::Format,
}

/// The TLS listener: on when certificates are configured.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// Address of the TLS listener (HTTP/1.1 and HTTP/2 by ALPN); used when
    /// certificates are configured.
    #[arg(long, env = "LB_TLS_LISTEN", default_value = "0.0.0.0:8443")]
    pub tls_listen: SocketAddr,

    /// A PEM certificate chain for the TLS listener (repeatable, paired in
    /// order with --tls-key; several pairs are chosen by SNI). Reloaded when
    /// the file changes.
    #[arg(long, env = "LB_TLS_CERT", value_delimiter = ',', value_name = "FILE")]
    pub tls_cert: Vec<PathBuf>,

    /// The PEM private key of the --tls-cert at the same position.
    #[arg(long, env = "LB_TLS_KEY", value_delimiter = ',', value_name = "FILE")]
    pub tls_key: Vec<PathBuf>,

    /// With --kubernetes: a `kubernetes.io/tls` Secret in the namespace to
    /// serve (repeatable; chosen by SNI), watched and swapped live.
    #[arg(
        long,
        env = "LB_TLS_SECRETS",
        value_delimiter = ',',
        value_name = "NAME",
        requires = "kubernetes"
    )]
    pub tls_secret: Vec<String>,

    /// Time a client has to complete the TLS handshake.
    #[arg(long, env = "LB_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub tls_handshake_timeout: Duration,

    /// Answer every request on the plain listener with a 308 redirect to
    /// HTTPS (needs TLS).
    #[arg(long, env = "LB_HTTPS_REDIRECT")]
    pub https_redirect: bool,

    /// The HTTPS port the redirect points to (the one clients reach, e.g.
    /// the Service's 443, not necessarily --tls-listen's).
    #[arg(long, env = "LB_HTTPS_PORT", default_value_t = 443)]
    pub https_port: u16,
}

/// `lb demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address clients connect to.
    #[arg(long, env = "LB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Admin address.
    #[arg(long, env = "LB_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// Data-plane settings.
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// Log format.
    #[arg(long, env = "LB_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

/// `lb probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// URL to GET (http only).
    pub url: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub timeout: Duration,
}

/// `lb check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// URL to GET, e.g. http://lb:8080/host (with --grpc the server only:
    /// http://lb:8080).
    pub url: String,
    /// Requests to send (with --grpc: calls).
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// Make unary gRPC calls of roundhouse.v1.Hosts/Get over ONE HTTP/2
    /// connection (h2c with prior knowledge, like one gRPC channel) instead
    /// of GETs; a non-zero grpc-status fails the check.
    #[arg(long)]
    pub grpc: bool,
    /// Distinct backends that must each get exactly requests/K.
    #[arg(long, default_value_t = 2)]
    pub expect_backends: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
}

/// A configuration error, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No discovery source.
    #[error("no backends: pass --backend HOST:PORT (repeatable), --config FILE or --kubernetes")]
    NoSource,
    /// Several sources.
    #[error("choose one source of backends: {0}")]
    ManySources(&'static str),
    /// A bad backend.
    #[error("bad backend: {0}")]
    Target(#[from] TargetError),
    /// A config file that cannot be used.
    #[error(transparent)]
    File(#[from] FileError),
    /// A TLS certificate that cannot be served.
    #[error("TLS: {0}")]
    Tls(#[from] crate::proxy::tls::TlsError),
    /// An out-of-range value.
    #[error("{0}")]
    Invalid(String),
}

impl ProxyArgs {
    /// Validates and converts into data-plane settings and the default policy.
    pub fn build(&self) -> Result<(ProxyConfig, Policy), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let workers = match self.workers {
            Some(0) => return bad("--workers must be at least 1".into()),
            Some(n) if n > 1024 => return bad("--workers must be at most 1024".into()),
            Some(n) => n,
            None => ProxyConfig::default().workers,
        };
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return bad("--max-header-bytes must be between 1024 and 1048576".into());
        }
        if !(1..=10_000).contains(&self.max_headers) {
            return bad("--max-headers must be between 1 and 10000".into());
        }
        if self.retries > 10 {
            return bad("--retries must be at most 10".into());
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.h2_max_streams) {
            return bad("--h2-max-streams must be between 1 and 10000".into());
        }
        for (name, d) in [
            ("--connect-timeout", self.connect_timeout),
            ("--response-header-timeout", self.response_header_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--upstream-idle-timeout", self.upstream_idle_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be greater than zero"));
            }
        }
        let host_override = match &self.host_header {
            Some(h) => Some(HeaderValue::from_str(h).map_err(|_| {
                ConfigError::Invalid(format!("--host-header `{h}` is not a valid header value"))
            })?),
            None => None,
        };
        if let Some(access_log::Target::Path(path)) = &self.access_log {
            // Opened here only to fail early and clearly; the writer
            // thread opens it again when the LB starts.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    ConfigError::Invalid(format!(
                        "cannot open --access-log {}: {e}",
                        path.display()
                    ))
                })?;
        }
        let proxy = ProxyConfig {
            workers,
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes,
            upstream_idle_timeout: self.upstream_idle_timeout,
            upstream_max_idle: self.upstream_max_idle,
            idle_park_after: self.idle_park_after,
            shutdown_timeout: self.shutdown_timeout,
            host_override,
            max_connections: self.max_connections,
            fast_path: self.fast_path,
            h2_max_streams: self.h2_max_streams,
            access_log: self.access_log.clone(),
            access_log_format: self.access_log_format,
            ..ProxyConfig::default()
        };
        let policy = Policy {
            connect_timeout: self.connect_timeout,
            response_header_timeout: self.response_header_timeout,
            retries: self.retries,
            eject_after: self.eject_after,
            ejection_time: self.ejection_time,
            request_timeout: None,
        };
        Ok((proxy, policy))
    }
}

impl ServeArgs {
    /// The configured source of endpoints.
    pub fn source(&self) -> Result<Source, ConfigError> {
        if !self.kubernetes {
            return self.static_source().map(Source::Static);
        }
        if !self.backends.is_empty() || self.config.is_some() {
            return Err(ConfigError::ManySources(
                "--kubernetes, or --backend/--config",
            ));
        }
        let default_upstream = match (&self.default_upstream, &self.service) {
            (Some(name), Some(service)) => Some(
                DefaultUpstream::new(name, service, self.service_port.as_deref())
                    .map_err(|e| ConfigError::Invalid(format!("--service-port: {e}")))?,
            ),
            _ => None,
        };
        if !self.tls.tls_cert.is_empty() {
            return Err(ConfigError::Invalid(
                "with --kubernetes, TLS certificates come from Secrets: use --tls-secret NAME, not --tls-cert"
                    .into(),
            ));
        }
        if self.ingress.ingress && self.gateway.gateway_api {
            return Err(ConfigError::ManySources("--ingress, or --gateway-api"));
        }
        if self.ingress.ingress {
            if default_upstream.is_some() || !self.tls.tls_secret.is_empty() {
                return Err(ConfigError::Invalid(
                    "--ingress routes by Ingress objects: --default-upstream and --tls-secret do \
                     not apply (certificates come from the Ingresses' tls sections)"
                        .into(),
                ));
            }
            for a in &self.ingress.ingress_addresses {
                let host_ok = crate::discovery::HostMatch::parse(a)
                    .is_ok_and(|h| matches!(h, crate::discovery::HostMatch::Exact(_)));
                if a.parse::<std::net::IpAddr>().is_err() && !host_ok {
                    return Err(ConfigError::Invalid(format!(
                        "--ingress-address {a:?}: expected an IP address or a DNS name"
                    )));
                }
            }
            return Ok(Source::Ingress(Box::new(IngressSource {
                namespace: self.namespace.clone(),
                config: IngressConfig {
                    classes: self.ingress.ingress_classes.clone(),
                    https_port: self.tls.https_port,
                    addresses: self.ingress.ingress_addresses.clone(),
                    max_body_bytes: Some(self.ingress.ingress_max_body_size).filter(|n| *n > 0),
                },
                service: self.ingress.ingress_service.clone(),
            })));
        }
        let gateway = if self.gateway.gateway_api {
            if default_upstream.is_some() || !self.tls.tls_secret.is_empty() {
                return Err(ConfigError::Invalid(
                    "--gateway-api routes by Gateway API objects: --default-upstream and \
                     --tls-secret do not apply (certificates come from the Gateways' listeners)"
                        .into(),
                ));
            }
            Some(Box::new(GatewaySource {
                config: self.gateway.config()?,
                service: self.gateway.gateway_service.clone(),
            }))
        } else {
            None
        };
        Ok(Source::Kubernetes {
            namespace: self.namespace.clone(),
            default_upstream,
            tls_secrets: self.tls.tls_secret.clone(),
            gateway,
        })
    }

    /// The static source from `--backend` or `--config`, with the TLS
    /// files from `--tls-cert`/`--tls-key` or the config file.
    pub fn static_source(&self) -> Result<StaticSource, ConfigError> {
        let flags = self.tls.cert_files()?;
        let mut source = match (self.backends.is_empty(), &self.config) {
            (true, None) => return Err(ConfigError::NoSource),
            (false, Some(_)) => {
                return Err(ConfigError::ManySources("--backend or --config, not both"));
            }
            (false, None) => StaticSource {
                targets: self
                    .backends
                    .iter()
                    .filter(|b| !b.trim().is_empty())
                    .map(|b| b.parse())
                    .collect::<Result<_, _>>()?,
                dns_refresh: self.dns_refresh,
                tls: Vec::new(),
                protocol: self.upstream_protocol,
            },
            (true, Some(path)) => {
                let mut source = file::read_file_config(path, self.dns_refresh)?;
                // The file's `protocol:`, else the flag.
                if source.protocol == Protocol::Http1 {
                    source.protocol = self.upstream_protocol;
                }
                source
            }
        };
        match (flags.is_empty(), source.tls.is_empty()) {
            (false, false) => {
                return Err(ConfigError::ManySources(
                    "TLS certificates from --tls-cert/--tls-key or the config file's `tls:`, not both",
                ));
            }
            (false, true) => source.tls = flags,
            _ => {}
        }
        Ok(source)
    }
}

impl TlsArgs {
    /// The `--tls-cert`/`--tls-key` pairs.
    pub fn cert_files(&self) -> Result<Vec<CertFiles>, ConfigError> {
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(ConfigError::Invalid(format!(
                "--tls-cert and --tls-key come in pairs: {} certificate(s), {} key(s)",
                self.tls_cert.len(),
                self.tls_key.len()
            )));
        }
        if self.tls_handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "--tls-handshake-timeout must be greater than zero".into(),
            ));
        }
        Ok(self
            .tls_cert
            .iter()
            .zip(&self.tls_key)
            .map(|(cert, key)| CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut all = vec!["lb", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Serve(s) => Ok(*s),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults() {
        let s = serve(&["--backend", "a:1"]).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.admin_listen, "0.0.0.0:9090".parse().unwrap());
        let (proxy, policy) = s.proxy.build().unwrap();
        assert_eq!(policy, Policy::default());
        assert_eq!(proxy.upstream_idle_timeout, Duration::from_secs(4));
        assert_eq!(proxy.idle_park_after, Duration::from_secs(1));
        assert_eq!(s.static_source().unwrap().targets.len(), 1);
    }

    #[test]
    fn repeatable_and_comma_separated_backends() {
        let s = serve(&["--backend", "a:1,b:2", "--backend", "c:3"]).unwrap();
        let src = s.static_source().unwrap();
        let hosts: Vec<_> = src.targets.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["a", "b", "c"]);
    }

    #[test]
    fn access_log_flags() {
        let s = serve(&[]).unwrap();
        let (proxy, _) = s.proxy.build().unwrap();
        assert_eq!(proxy.access_log, None, "off by default");
        assert_eq!(proxy.access_log_format, access_log::Format::Json);
        let s = serve(&["--access-log", "stderr", "--access-log-format", "combined"]).unwrap();
        let (proxy, _) = s.proxy.build().unwrap();
        assert_eq!(proxy.access_log, Some(access_log::Target::Stderr));
        assert_eq!(proxy.access_log_format, access_log::Format::Combined);
        let e = serve(&["--access-log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("json or combined"), "{e}");
        let s = serve(&["--access-log", "/nonexistent-dir/x/access.log"]).unwrap();
        let e = s.proxy.build().unwrap_err().to_string();
        assert!(
            e.contains("cannot open --access-log /nonexistent-dir/x/access.log"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_clear() {
        let e = serve(&["--connect-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--connect-timeout") && e.contains("examples"),
            "{e}"
        );
        let e = serve(&["--listen", "nowhere"]).unwrap_err().to_string();
        assert!(e.contains("--listen"), "{e}");
        let s = serve(&["--backend", "a"]).unwrap();
        let e = s.static_source().unwrap_err().to_string();
        assert!(e.contains("no port"), "{e}");
        let s = serve(&[]).unwrap();
        assert!(matches!(s.static_source(), Err(ConfigError::NoSource)));
        let s = serve(&["--backend", "a:1", "--workers", "0"]).unwrap();
        assert!(
            s.proxy
                .build()
                .unwrap_err()
                .to_string()
                .contains("--workers")
        );
        let s = serve(&["--backend", "a:1", "--retries", "11"]).unwrap();
        assert!(s.proxy.build().is_err());
        let s = serve(&["--backend", "a:1", "--config", "x.yaml"]).unwrap();
        assert!(matches!(
            s.static_source(),
            Err(ConfigError::ManySources(_))
        ));
    }

    #[test]
    fn kubernetes_source() {
        let s = serve(&[
            "--kubernetes",
            "--default-upstream",
            "backend",
            "--service",
            "backend",
            "--service-port",
            "http",
        ])
        .unwrap();
        match s.source().unwrap() {
            Source::Kubernetes {
                default_upstream: Some(d),
                namespace: None,
                ..
            } => {
                assert_eq!((d.name(), d.port().as_deref()), ("backend", Some("http")));
            }
            other => panic!("{other:?}"),
        }
        let s = serve(&[
            "--kubernetes",
            "--default-upstream",
            "b",
            "--service",
            "b",
            "--service-port",
            "5000",
        ])
        .unwrap();
        assert_eq!(
            s.source().unwrap(),
            Source::Kubernetes {
                default_upstream: Some(DefaultUpstream::new("b", "b", Some("5000")).unwrap()),
                namespace: None,
                tls_secrets: Vec::new(),
                gateway: None,
            }
        );
        let s = serve(&["--kubernetes", "--backend", "a:1"]).unwrap();
        assert!(matches!(s.source(), Err(ConfigError::ManySources(_))));
        assert!(
            serve(&["--default-upstream", "x"]).is_err(),
            "needs --kubernetes and --service"
        );
        let s = serve(&[
            "--kubernetes",
            "--default-upstream",
            "b",
            "--service",
            "b",
            "--service-port",
            "0",
        ])
        .unwrap();
        assert!(
            s.source()
                .unwrap_err()
                .to_string()
                .contains("--service-port")
        );
    }

    #[test]
    fn ingress_flags() {
        let s = serve(&[
            "--kubernetes",
            "--ingress",
            "--ingress-class",
            "roundhouse,internal",
            "--ingress-address",
            "10.0.0.5,lb.example",
            "--ingress-service",
            "lb",
            "--https-port",
            "8443",
        ])
        .unwrap();
        let source = s.source().unwrap();
        assert!(source.has_tls(), "the TLS listener is on");
        match source {
            Source::Ingress(i) => {
                assert_eq!(i.config.classes, ["roundhouse", "internal"]);
                assert_eq!(i.config.addresses, ["10.0.0.5", "lb.example"]);
                assert_eq!(i.config.https_port, 8443);
                assert_eq!(i.service.as_deref(), Some("lb"));
                assert_eq!(i.namespace, None);
            }
            other => panic!("{other:?}"),
        }
        let defaults = serve(&["--kubernetes", "--ingress"]).unwrap();
        match defaults.source().unwrap() {
            Source::Ingress(i) => assert_eq!(i.config, IngressConfig::default()),
            other => panic!("{other:?}"),
        }
        for (size, want) in [
            ("8m", Some(8 << 20)),
            ("512k", Some(512 << 10)),
            ("0", None),
        ] {
            let s = serve(&["--kubernetes", "--ingress", "--ingress-max-body-size", size]).unwrap();
            match s.source().unwrap() {
                Source::Ingress(i) => assert_eq!(i.config.max_body_bytes, want, "{size}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            serve(&[
                "--kubernetes",
                "--ingress",
                "--ingress-max-body-size",
                "lots"
            ])
            .is_err()
        );
        let bad = serve(&[
            "--kubernetes",
            "--ingress",
            "--ingress-address",
            "not an address",
        ])
        .unwrap();
        assert!(
            bad.source()
                .unwrap_err()
                .to_string()
                .contains("--ingress-address")
        );
        let mixed = serve(&[
            "--kubernetes",
            "--ingress",
            "--default-upstream",
            "b",
            "--service",
            "b",
        ])
        .unwrap();
        assert!(
            mixed
                .source()
                .unwrap_err()
                .to_string()
                .contains("--ingress")
        );
        let secret = serve(&["--kubernetes", "--ingress", "--tls-secret", "x"]).unwrap();
        assert!(secret.source().is_err());
        assert!(serve(&["--ingress"]).is_err(), "needs --kubernetes");
        assert!(
            serve(&["--kubernetes", "--ingress-class", "x"]).is_err(),
            "needs --ingress"
        );
    }

    #[test]
    fn gateway_api_flags() {
        let s = serve(&[
            "--kubernetes",
            "--gateway-api",
            "--gateway",
            "infra/gw",
            "--gateway-address",
            "10.0.0.5,lb.example",
            "--gateway-service",
            "lb",
        ])
        .unwrap();
        match s.source().unwrap() {
            Source::Kubernetes {
                gateway: Some(g), ..
            } => {
                assert_eq!(g.config.gateways, ["infra/gw"]);
                assert_eq!(g.config.addresses, ["10.0.0.5", "lb.example"]);
                assert_eq!((g.config.http_port, g.config.https_port), (80, 443));
                assert_eq!(g.service.as_deref(), Some("lb"));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.source().unwrap().has_tls(), "the TLS listener is on");
        let bad = serve(&["--kubernetes", "--gateway-api", "--gateway", "gw"]).unwrap();
        assert!(
            bad.source()
                .unwrap_err()
                .to_string()
                .contains("NAMESPACE/NAME")
        );
        let mixed = serve(&[
            "--kubernetes",
            "--gateway-api",
            "--default-upstream",
            "b",
            "--service",
            "b",
        ])
        .unwrap();
        assert!(
            mixed
                .source()
                .unwrap_err()
                .to_string()
                .contains("--gateway-api")
        );
        assert!(serve(&["--gateway-api"]).is_err(), "needs --kubernetes");
    }

    #[test]
    fn one_route_source_at_a_time() {
        let both = serve(&["--kubernetes", "--ingress", "--gateway-api"]).unwrap();
        let err = both.source().unwrap_err().to_string();
        assert!(
            err.contains("--ingress") && err.contains("--gateway-api"),
            "{err}"
        );
    }
}

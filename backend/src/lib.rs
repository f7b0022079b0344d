//! The service that roundhouse balances.
//!
//! It replaces the Flask app of the original exercise: `GET /host` answers the
//! host name (the pod name in Kubernetes), `GET /date` the current UTC time, and
//! `/healthz` / `/readyz` serve the probes, and the gRPC method
//! `roundhouse.v1.Hosts/Get` ([`grpc`]) answers the same name as `/host`. One
//! port speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told apart by
//! the connection's first bytes. On SIGTERM it first reports not-ready, keeps
//! serving (both protocols) for a drain period so that endpoint controllers
//! can take it out of rotation, then shuts down gracefully: HTTP/2
//! connections get a GOAWAY and their open streams finish.
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`]; everything
//! else lives here so tests (and `lb demo`) can use it in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, info};

pub mod grpc;

/// Command-line configuration; every flag has an environment fallback.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "backend",
    version,
    about = "The roundhouse backend: GET /host and GET /date"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "BACKEND_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// Name reported by /host instead of the machine's host name.
    #[arg(long, env = "BACKEND_NAME")]
    pub name: Option<String>,

    /// Seconds to keep serving (while /readyz reports 503) after SIGTERM/SIGINT.
    #[arg(long, env = "BACKEND_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,

    /// Log format.
    #[arg(long, env = "BACKEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

impl Config {
    /// The drain period as a [`Duration`].
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// The name `/host` reports: `--name`, else the host name.
    pub fn host_name(&self) -> Result<String, NameError> {
        match &self.name {
            Some(name) if name.trim().is_empty() => Err(NameError::Empty),
            Some(name) => Ok(name.clone()),
            None => hostname::get()
                .map_err(NameError::Unreadable)?
                .into_string()
                .map_err(|_| NameError::NotUtf8),
        }
    }
}

/// Why the backend has no name to report.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// `--name ""`.
    #[error("--name must not be empty")]
    Empty,
    /// The host name could not be read.
    #[error("cannot read the host name: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The host name is not UTF-8.
    #[error("the host name is not valid UTF-8; pass --name")]
    NotUtf8,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs a tracing subscriber writing to stderr, filtered by `RUST_LOG`
/// (default `info`, which logs no line per request; `RUST_LOG=debug` does).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    host: Arc<str>,
    ready: Arc<AtomicBool>,
}

impl AppState {
    /// New state reporting `host`, initially ready.
    pub fn new(host: impl Into<Arc<str>>) -> Self {
        Self {
            host: host.into(),
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The name `/host` reports.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether `/readyz` reports ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the service ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

#[derive(Serialize)]
struct HostBody<'a> {
    host: &'a str,
}

#[derive(Serialize)]
struct DateBody<'a> {
    date: String,
    host: &'a str,
}

/// True when the client asked for JSON in `Accept`.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
        })
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn host(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if wants_json(&headers) {
        axum::Json(HostBody { host: &state.host }).into_response()
    } else {
        text(StatusCode::OK, format!("{}\n", state.host))
    }
}

/// Now, in UTC, RFC 3339 with millisecond precision and a `Z` suffix.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn date(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let date = now_rfc3339();
    if wants_json(&headers) {
        axum::Json(DateBody {
            date,
            host: &state.host,
        })
        .into_response()
    } else {
        text(StatusCode::OK, format!("{date}\n"))
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_owned())
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        text(StatusCode::OK, "ready\n".to_owned())
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n".to_owned())
}

async fn method_not_allowed() -> Response {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed\n".to_owned(),
    )
}

/// The service's router: the HTTP routes and the gRPC service
/// (`/roundhouse.v1.Hosts/*`, any other method of it answers gRPC status
/// UNIMPLEMENTED). Probes are added after the trace layer so they are never
/// traced; request spans and response events are at DEBUG level.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/host", get(host))
        .route("/date", get(date))
        .route_service(
            "/roundhouse.v1.Hosts/{*method}",
            grpc::Hosts::new(state.clone()).into_server(),
        )
        .layer(
            TraceLayer::new_for_http().on_response(
                DefaultOnResponse::new()
                    .level(Level::DEBUG)
                    .latency_unit(tower_http::LatencyUnit::Micros),
            ),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// How long connections still open when the listener closes get to finish
/// (HTTP/1.1 requests in flight; HTTP/2 streams after the GOAWAY) before they
/// are dropped. Without a bound, an HTTP/2 client that never answers the
/// GOAWAY's PING would hold the shutdown open forever.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `app(state)` on `listener` until `shutdown` resolves, then drains:
/// `/readyz` turns 503 while requests (HTTP/1.1, h2c and gRPC) are still
/// served for `drain`, after which the listener closes, HTTP/2 connections
/// get a GOAWAY, and in-flight requests get [`FINISH_TIMEOUT`] to finish.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state.clone());
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        state.set_ready(false);
        info!(
            drain_seconds = drain.as_secs_f64(),
            "shutdown requested; reporting not-ready and draining"
        );
        tokio::time::sleep(drain).await;
        info!("drain finished; closing the listener");
        let _ = closed_tx.send(());
    };
    let serve = axum::serve(listener, router)
        .with_graceful_shutdown(graceful)
        .into_future();
    let deadline = async {
        // Only once the listener has closed (a dropped sender: serve ended).
        if closed_rx.await.is_ok() {
            tokio::time::sleep(FINISH_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve => {
            served?;
            info!("shut down cleanly");
        }
        () = deadline => {
            tracing::warn!(
                finish_timeout_seconds = FINISH_TIMEOUT.as_secs_f64(),
                "connections still open after the finish timeout; closing them"
            );
        }
    }
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!(signal = "SIGINT", "signal received"),
        () = term => info!(signal = "SIGTERM", "signal received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(method: Method, uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        call_state(AppState::new("replica-a"), method, uri, accept).await
    }

    async fn call_state(
        state: AppState,
        method: Method,
        uri: &str,
        accept: Option<&str>,
    ) -> (StatusCode, String, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = app(state)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn host_is_plain_text_by_default() {
        let (status, ctype, body) = call(Method::GET, "/host", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        assert_eq!(body, "replica-a\n");
    }

    #[tokio::test]
    async fn host_as_json_when_asked() {
        let (status, ctype, body) = call(
            Method::GET,
            "/host",
            Some("text/html;q=0.9, Application/JSON; q=1"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"host": "replica-a"}));
    }

    #[tokio::test]
    async fn date_is_rfc3339_utc_and_current() {
        let (status, _, body) = call(Method::GET, "/date", None).await;
        assert_eq!(status, StatusCode::OK);
        let text = body.trim_end();
        assert!(text.ends_with('Z'), "{text}");
        let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap();
        let skew = (Utc::now() - parsed.with_timezone(&Utc))
            .num_milliseconds()
            .abs();
        assert!(skew < 1000, "date is {skew} ms off");
    }

    #[tokio::test]
    async fn date_as_json_names_the_replica() {
        let (_, ctype, body) = call(Method::GET, "/date", Some("application/json")).await;
        assert_eq!(ctype, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["host"], "replica-a");
        let date = v["date"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(date).is_ok(), "{date}");
        assert!(date.ends_with('Z'));
    }

    #[tokio::test]
    async fn probes_follow_readiness() {
        let state = AppState::new("x");
        let (s, _, b) = call_state(state.clone(), Method::GET, "/readyz", None).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "ready\n"));
        state.set_ready(false);
        let (s, _, b) = call_state(state.clone(), Method::GET, "/readyz", None).await;
        assert_eq!(
            (s, b.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        );
        let (s, _, _) = call_state(state, Method::GET, "/healthz", None).await;
        assert_eq!(s, StatusCode::OK, "liveness does not follow readiness");
    }

    #[tokio::test]
    async fn unknown_path_is_404_with_body() {
        let (status, _, body) = call(Method::GET, "/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "not found\n");
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_body() {
        let (status, _, body) = call(Method::POST, "/host", None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body, "method not allowed\n");
    }

    #[tokio::test]
    async fn head_is_allowed_on_get_routes() {
        let (status, _, body) = call(Method::HEAD, "/host", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
    }

    #[test]
    fn empty_name_is_rejected() {
        let cfg = Config::try_parse_from(["backend", "--name", " "]).unwrap();
        assert!(cfg.host_name().is_err());
    }

    #[test]
    fn bad_listen_address_is_a_parse_error() {
        let err = Config::try_parse_from(["backend", "--listen", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }

    #[test]
    fn accept_parsing() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, "application/jsonx".parse().unwrap());
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, "*/*, application/json".parse().unwrap());
        assert!(wants_json(&h));
    }
}

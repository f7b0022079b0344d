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
//! With `--echo` (for tests of what a proxy forwards, like the Gateway API
//! conformance suite's echo server) every other path answers a JSON
//! description of the request it received ([`Echo`]).
//!
//! The binary (`main.rs`) only parses [`Config`] and calls [`run`]; everything
//! else lives here so tests (and `lb demo`) can use it in-process.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
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

    /// Echo mode: every path but the probes and the gRPC service answers
    /// JSON describing the request it received.
    #[arg(long, env = "BACKEND_ECHO", default_value_t = false)]
    pub echo: bool,

    /// The namespace echo mode reports (the downward API's
    /// `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// The pod name echo mode reports (the downward API's `metadata.name`;
    /// default: the name `/host` reports).
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,
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
    echo: Option<Arc<Identity>>,
}

/// Who an echoing backend says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Its namespace (empty when unknown).
    pub namespace: String,
    /// Its pod (empty: the name `/host` reports).
    pub pod: String,
}

impl AppState {
    /// New state reporting `host`, initially ready.
    pub fn new(host: impl Into<Arc<str>>) -> Self {
        Self {
            host: host.into(),
            ready: Arc::new(AtomicBool::new(true)),
            echo: None,
        }
    }

    /// The same, in echo mode ([`Echo`]) as `identity`.
    pub fn echoing(mut self, identity: Identity) -> Self {
        self.echo = Some(Arc::new(identity));
        self
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

/// What echo mode answers: the request as the backend received it, and
/// who answered. Header names are lower case, each with its values in
/// order. A request header `X-Echo-Set-Header: Name: value, Other: value`
/// makes the response carry those headers (how tests give a backend
/// response headers to rewrite).
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Echo {
    /// The method.
    pub method: String,
    /// The path and query, as received.
    pub path: String,
    /// The `Host` header, or the `:authority` of an HTTP/2 request.
    pub host: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// The request headers.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Bytes of request body received.
    pub body_bytes: usize,
    /// The name `/host` reports.
    pub name: String,
    /// The namespace it runs in.
    pub namespace: String,
    /// Its pod.
    pub pod: String,
}

async fn echo(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let identity = state.echo.as_deref().cloned().unwrap_or_default();
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        by_name
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = headers
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let echo = Echo {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        host,
        protocol: format!("{version:?}"),
        headers: by_name,
        body_bytes: body.len(),
        name: state.host.to_string(),
        namespace: identity.namespace,
        pod: if identity.pod.is_empty() {
            state.host.to_string()
        } else {
            identity.pod
        },
    };
    let mut response = axum::Json(echo).into_response();
    for value in headers.get_all("x-echo-set-header") {
        let Ok(list) = value.to_str() else { continue };
        for pair in list.split(',') {
            let Some((name, value)) = pair.split_once(':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.trim()),
                HeaderValue::try_from(value.trim()),
            ) {
                response.headers_mut().append(name, value);
            }
        }
    }
    response
}

/// The service's router: the HTTP routes and the gRPC service
/// (`/roundhouse.v1.Hosts/*`, any other method of it answers gRPC status
/// UNIMPLEMENTED); in echo mode, [`Echo`] for every other path. Probes are
/// added after the trace layer so they are never traced; request spans and
/// response events are at DEBUG level.
pub fn app(state: AppState) -> Router {
    let router = if state.echo.is_some() {
        Router::new()
    } else {
        Router::new()
            .route("/host", get(host))
            .route("/date", get(date))
    };
    let router = router
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
        .route("/readyz", get(readyz));
    if state.echo.is_some() {
        router.fallback(echo).with_state(state)
    } else {
        router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(state)
    }
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

/// A future that resolves on the first SIGTERM or SIGINT. The handlers are
/// installed when this is called, not when the future is first polled: a
/// signal that arrives after the call (e.g. right after the "listening" log
/// line) is never the default action that kills the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let streams =
            signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
        async move {
            match streams {
                Ok((mut int, mut term)) => tokio::select! {
                    _ = int.recv() => info!(signal = "SIGINT", "signal received"),
                    _ = term.recv() => info!(signal = "SIGTERM", "signal received"),
                },
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM and SIGINT");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        info!(signal = "Ctrl-C", "signal received");
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

    #[tokio::test]
    async fn echo_mode_describes_the_request_and_sets_asked_headers() {
        let state = AppState::new("replica-a").echoing(Identity {
            namespace: "ns-1".into(),
            pod: "pod-7".into(),
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri("/any/path?x=1&y=2")
            .header(header::HOST, "example.com")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header("x-echo-set-header", "X-Resp: one, X-Other:two")
            .body(Body::from("hello"))
            .unwrap();
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-resp"], "one");
        assert_eq!(resp.headers()["x-other"], "two");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let echo: Echo = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo.method, "POST");
        assert_eq!(echo.path, "/any/path?x=1&y=2");
        assert_eq!(echo.host, "example.com");
        assert_eq!(echo.protocol, "HTTP/1.1");
        assert_eq!(echo.headers["x-multi"], ["a", "b"]);
        assert_eq!(echo.body_bytes, 5);
        assert_eq!(
            (&*echo.name, &*echo.namespace, &*echo.pod),
            ("replica-a", "ns-1", "pod-7")
        );
        // /host is echoed too; the probes are not.
        let (status, ctype, _) = call_state(state.clone(), Method::GET, "/host", None).await;
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::OK, "application/json")
        );
        let (status, _, body) = call_state(state, Method::GET, "/healthz", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }
}

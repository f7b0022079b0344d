//! The admin server: probes, metrics, the live endpoint table and a live
//! page over it, on its own port (never publish it; see docs/SECURITY.md).
//!
//! - `GET /`: the admin page ([`page`]), one self-contained HTML document.
//! - `GET /api/stats`: what the page shows, as JSON ([`stats::StatsDoc`]).
//! - `GET /endpoints`: the routing table ([`EndpointsDoc`]).
//! - `GET /metrics`, `/healthz`, `/readyz`.

pub mod page;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::selection::Balancer;

use self::stats::{DEFAULT_WINDOW, Stats};

/// Readiness as seen by `/readyz`: true once discovery has produced its
/// first complete set, false again when shutdown starts.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Current readiness.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The routing table owner.
    pub balancer: Arc<Balancer>,
    /// Readiness flag.
    pub ready: Readiness,
}

/// `/endpoints` document.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EndpointsDoc {
    /// Routing table version.
    pub version: u64,
    /// Upstreams.
    pub upstreams: Vec<UpstreamDoc>,
}

/// One upstream in `/endpoints`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UpstreamDoc {
    /// Name.
    pub name: String,
    /// Match host, if any.
    pub host: Option<String>,
    /// Match path prefix, if any.
    pub path_prefix: Option<String>,
    /// Endpoints.
    pub endpoints: Vec<EndpointDoc>,
}

/// One endpoint in `/endpoints`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EndpointDoc {
    /// `ip:port`.
    pub address: String,
    /// DNS or pod name.
    pub name: Option<String>,
    /// `ready` or `ejected`.
    pub state: String,
    /// Weight.
    pub weight: u32,
    /// Requests answered, all classes.
    pub requests: u64,
    /// Requests answered with 5xx.
    pub errors_5xx: u64,
}

/// Builds the `/endpoints` document from the current table.
pub fn endpoints_doc(balancer: &Balancer) -> EndpointsDoc {
    let table = balancer.snapshot();
    EndpointsDoc {
        version: table.version,
        upstreams: table
            .upstreams
            .iter()
            .map(|u| UpstreamDoc {
                name: u.name.to_string(),
                host: u.route.host.clone(),
                path_prefix: u.route.path_prefix.clone(),
                endpoints: u
                    .endpoints
                    .iter()
                    .map(|e| {
                        let by_class = e.requests_by_class();
                        EndpointDoc {
                            address: e.addr.to_string(),
                            name: e.name.as_deref().map(str::to_owned),
                            state: if e.is_available() { "ready" } else { "ejected" }.to_owned(),
                            weight: e.weight,
                            requests: by_class.iter().sum(),
                            errors_5xx: by_class[4],
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.get() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.balancer.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.balancer.metrics().encode(),
    )
        .into_response()
}

async fn endpoints(State(s): State<AdminState>) -> Response {
    axum::Json(endpoints_doc(&s.balancer)).into_response()
}

/// `?window=SECONDS` of `/` and `/api/stats`.
#[derive(Debug, serde::Deserialize)]
struct WindowQuery {
    window: Option<u64>,
}

impl WindowQuery {
    fn window(&self) -> Duration {
        self.window.map_or(DEFAULT_WINDOW, Duration::from_secs)
    }
}

/// The headers of the page and its data: nothing cached, nothing sniffed,
/// never framed.
fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn page(State(s): State<PageState>, Query(q): Query<WindowQuery>) -> Response {
    let html = page::render(&s.stats.doc(q.window()));
    let mut resp =
        no_store(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response());
    if let Ok(csp) = HeaderValue::from_str(&page::CSP) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    resp
}

async fn api_stats(State(s): State<PageState>, Query(q): Query<WindowQuery>) -> Response {
    let mut resp = no_store(axum::Json(s.stats.doc(q.window())).into_response());
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    resp
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// What the page handlers read: the ring of counter snapshots.
#[derive(Debug, Clone)]
struct PageState {
    stats: Arc<Stats>,
}

/// The admin router. Inside a tokio runtime it also starts the sampler
/// behind the page's sliding window, which ends once the router (and every
/// clone of it) is dropped.
pub fn router(state: AdminState) -> Router {
    let stats = Arc::new(Stats::new(state.balancer.clone()));
    stats.sample();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(Stats::run_sampler(Arc::downgrade(&stats)));
    }
    let pages = Router::new()
        .route("/", get(page))
        .route("/api/stats", get(api_stats))
        .with_state(PageState { stats });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/endpoints", get(endpoints))
        .with_state(state)
        .merge(pages)
        .fallback(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{EndpointSpec, RouteMatch, RoutingConfig, UpstreamConfig};
    use crate::selection::Policy;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state() -> AdminState {
        let b = Arc::new(Balancer::new(
            Policy::default(),
            Arc::new(crate::metrics::Metrics::new(1)),
        ));
        b.apply(&RoutingConfig {
            upstreams: vec![UpstreamConfig::catch_all(
                "default",
                vec![EndpointSpec::new("127.0.0.1:5001".parse().unwrap()).named("backend-1")],
            )],
            routes: Vec::new(),
        });
        AdminState {
            balancer: b,
            ready: Readiness::default(),
        }
    }

    async fn get(s: &AdminState, path: &str) -> (StatusCode, String) {
        let (status, _, body) = get_with_headers(s, path).await;
        (status, body)
    }

    async fn get_with_headers(
        s: &AdminState,
        path: &str,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = router(s.clone())
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Names as hostile as the API allows through (and more).
    const POD: &str = "<img src=x onerror=alert(1)>\"pod'&";
    const UPSTREAM: &str = "api</h2><script>alert(2)</script>";

    fn hostile_state() -> AdminState {
        let s = state();
        let mut api = UpstreamConfig::catch_all(
            UPSTREAM,
            vec![
                EndpointSpec::new("127.0.0.1:6001".parse().unwrap()).named(POD),
                EndpointSpec::new("127.0.0.1:6002".parse().unwrap()),
            ],
        );
        api.route = RouteMatch {
            host: Some("api.example.test".to_owned()),
            path_prefix: Some("/v1&<x>".to_owned()),
        };
        s.balancer.apply(&RoutingConfig {
            upstreams: vec![
                api,
                UpstreamConfig::catch_all(
                    "default",
                    vec![EndpointSpec::new("127.0.0.1:5001".parse().unwrap()).named("backend-1")],
                ),
            ],
            routes: Vec::new(),
        });
        s
    }

    #[tokio::test]
    async fn page_is_html_with_escaped_names_and_strict_headers() {
        let s = hostile_state();
        let t = s.balancer.snapshot();
        for _ in 0..3 {
            t.upstreams[0].endpoints[0].record_response(200);
        }
        t.upstreams[0].endpoints[1].record_response(502);
        let (status, headers, body) = get_with_headers(&s, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");

        assert!(body.starts_with("<!doctype html>"));
        assert!(
            body.contains("&lt;img src=x onerror=alert(1)&gt;&quot;pod&#39;&amp;"),
            "the pod name, escaped"
        );
        assert!(body.contains("api&lt;/h2&gt;&lt;script&gt;alert(2)&lt;/script&gt;"));
        assert!(body.contains("<code>path prefix /v1&amp;&lt;x&gt;</code>"));
        assert!(body.contains("<code>host api.example.test</code>"));
        assert!(!body.contains(POD) && !body.contains(UPSTREAM), "never raw");
        assert_eq!(body.matches("<script>").count(), 1, "only the page's own");
        // The server-rendered snapshot: both upstreams, a row per endpoint
        // with its state, since-start share and counts.
        assert_eq!(body.matches("<section class=\"upstream\"").count(), 2);
        assert_eq!(body.matches("<tr class=\"endpoint\"").count(), 3);
        assert_eq!(body.matches("<meter class=\"share-window\"").count(), 3);
        assert!(body.contains("data-address=\"127.0.0.1:6001\" data-state=\"ready\""));
        assert!(
            body.contains("<td class=\"num share-total\">75.0 %</td>"),
            "{body}"
        );
        assert!(
            body.contains("<th scope=\"row\">127.0.0.1:6002</th>"),
            "unnamed: address"
        );
        assert!(body.contains("<a href=\"?window=10\" aria-current=\"page\">"));
        assert!(!body.contains("{{"), "every placeholder filled");

        let (_, body) = get(&s, "/?window=30").await;
        assert!(body.contains("data-window=\"30\""));
        assert!(body.contains("<a href=\"?window=30\" aria-current=\"page\">"));
    }

    #[tokio::test]
    async fn page_without_upstreams() {
        let s = AdminState {
            balancer: Arc::new(Balancer::new(
                Policy::default(),
                Arc::new(crate::metrics::Metrics::new(1)),
            )),
            ready: Readiness::default(),
        };
        let (status, body) = get(&s, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("No upstreams yet"));
        let (_, json) = get(&s, "/api/stats").await;
        let doc: stats::StatsDoc = serde_json::from_str(&json).unwrap();
        assert!(doc.upstreams.is_empty());
    }

    #[tokio::test]
    async fn api_stats_shape() {
        let s = hostile_state();
        let t = s.balancer.snapshot();
        t.upstreams[0].endpoints[0].record_response(200);
        let (status, headers, body) = get_with_headers(&s, "/api/stats?window=30").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["window_seconds"], 30);
        assert_eq!(v["latency"]["scope"], "all upstreams");
        for key in ["count", "p50_ms", "p99_ms"] {
            assert!(v["latency"]["window"].get(key).is_some(), "{key}");
            assert!(v["latency"]["since_start"].get(key).is_some(), "{key}");
        }
        let up = &v["upstreams"][0];
        assert_eq!(up["name"], UPSTREAM, "raw in JSON: the page escapes");
        assert_eq!(up["host"], "api.example.test");
        assert_eq!(up["path_prefix"], "/v1&<x>");
        assert_eq!(up["protocol"], "http1");
        let ep = &up["endpoints"][0];
        assert_eq!(ep["name"], POD);
        assert_eq!(ep["address"], "127.0.0.1:6001");
        assert_eq!(ep["state"], "ready");
        assert_eq!(ep["requests"], 1);
        assert_eq!(ep["share_since_start"], 100.0);
        assert!(ep["ejected_for_seconds"].is_null());
        for key in ["weight", "errors_5xx", "consecutive_failures", "window"] {
            assert!(ep.get(key).is_some(), "{key}");
        }
        let doc: stats::StatsDoc = serde_json::from_str(&body).unwrap();
        assert_eq!(doc.upstreams.len(), 2);
        // /endpoints keeps its shape.
        let (_, body) = get(&s, "/endpoints").await;
        let doc: EndpointsDoc = serde_json::from_str(&body).unwrap();
        assert_eq!(doc.upstreams[0].endpoints[0].name.as_deref(), Some(POD));
    }

    #[tokio::test]
    async fn ejected_endpoint_is_shown_as_such() {
        let s = hostile_state();
        let t = s.balancer.snapshot();
        let api = &t.upstreams[0];
        for _ in 0..3 {
            s.balancer.connect_failed(api, 1);
        }
        let (_, body) = get(&s, "/").await;
        assert!(
            body.contains("data-address=\"127.0.0.1:6002\" data-state=\"ejected\""),
            "{body}"
        );
        assert!(body.contains("<span class=\"state ejected\">ejected · "));
        let (_, json) = get(&s, "/api/stats").await;
        let doc: stats::StatsDoc = serde_json::from_str(&json).unwrap();
        let ep = &doc.upstreams[0].endpoints[1];
        assert_eq!(ep.state, "ejected");
        assert!(ep.ejected_for_seconds.unwrap() > 0.0);
    }

    #[tokio::test]
    async fn readiness_follows_flag() {
        let s = state();
        assert_eq!(get(&s, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        s.ready.set(true);
        assert_eq!(get(&s, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(&s, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&s, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn endpoints_and_metrics() {
        let s = state();
        s.balancer.snapshot().upstreams[0].endpoints[0].record_response(200);
        let (status, body) = get(&s, "/endpoints").await;
        assert_eq!(status, StatusCode::OK);
        let doc: EndpointsDoc = serde_json::from_str(&body).unwrap();
        let ep = &doc.upstreams[0].endpoints[0];
        assert_eq!(ep.address, "127.0.0.1:5001");
        assert_eq!(ep.name.as_deref(), Some("backend-1"));
        assert_eq!((ep.state.as_str(), ep.requests), ("ready", 1));
        let (_, text) = get(&s, "/metrics").await;
        assert!(text.contains(
            "roundhouse_requests_total{upstream=\"default\",endpoint=\"127.0.0.1:5001\",class=\"2xx\"} 1"
        ), "{text}");
        assert!(
            text.contains("roundhouse_endpoints{upstream=\"default\",state=\"ready\"} 1"),
            "{text}"
        );
    }
}

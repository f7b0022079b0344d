//! The admin server: probes, metrics and the live endpoint table, on its own
//! port (never publish it; see docs/SECURITY.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::selection::Balancer;

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

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/endpoints", get(endpoints))
        .fallback(not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{EndpointSpec, RoutingConfig, UpstreamConfig};
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
        });
        AdminState {
            balancer: b,
            ready: Readiness::default(),
        }
    }

    async fn get(s: &AdminState, path: &str) -> (StatusCode, String) {
        let resp = router(s.clone())
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
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

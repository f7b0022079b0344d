//! HTTP/2 through the real data plane: h2c with prior knowledge on the
//! plain port, every stream balanced on its own, HTTP/2 to h2c upstreams,
//! gRPC trailers, statuses and deadlines.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use lb::discovery::EndpointSpec;

/// `n` concurrent requests on one HTTP/2 connection; the count per body.
async fn streams(
    tx: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    n: usize,
    req: impl Fn() -> Request<Full<Bytes>>,
) -> BTreeMap<String, usize> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let mut tx = tx.clone();
            let req = req();
            tokio::spawn(async move { h2_send(&mut tx, req).await })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for c in calls {
        let (status, _, body, _) = within(HANG, c).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        *counts.entry(body.trim().to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_one_h2c_connection_are_balanced_each_on_its_own() {
    let b1 = TestBackend::start("b1");
    let b2 = TestBackend::start("b2");
    let lb = TestLb::start(routing(vec![b1.spec(), b2.spec()]));
    // One client connection, 100 concurrent streams (the LB allows 100):
    // exactly 50/50, which per-connection balancing can never give.
    let mut tx = h2c_client(lb.addr).await;
    let counts = streams(&mut tx, 100, || h2_get("/host")).await;
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 50), ("b2".into(), 50)])
    );
    // And in sequence on the same connection: strict alternation.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(h2_send(&mut tx, h2_get("/host")).await.2.trim().to_owned());
    }
    assert!(
        seen == ["b1", "b2", "b1", "b2"] || seen == ["b2", "b1", "b2", "b1"],
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_reach_http11_backends_with_the_forwarding_headers() {
    let (rec, seen) = {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let b = TestBackend::with_service("rec", move |req: Request<hyper::body::Incoming>| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push((req.version(), req.headers().clone()));
                http::Response::new(Full::new(Bytes::from_static(b"rec\n")))
            }
        });
        (b, seen)
    };
    let lb = TestLb::start(routing(vec![rec.spec()]));
    let mut tx = h2c_client(lb.addr).await;
    let req = Request::get("http://app.example/x")
        .header("x-forwarded-for", "1.1.1.1")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let (status, headers, body, _) = h2_send(&mut tx, req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "rec\n"));
    assert!(
        headers.get_all("via").iter().any(|v| v == "2 roundhouse"),
        "{headers:?}"
    );
    let (version, h) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        version,
        http::Version::HTTP_11,
        "HTTP/1.1 to an HTTP/1.1 backend"
    );
    assert_eq!(h["host"], "app.example", ":authority became Host");
    assert_eq!(h["x-forwarded-host"], "app.example");
    assert_eq!(h["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["via"], "2 roundhouse");
    assert!(
        h.get("te").is_none(),
        "TE is hop-by-hop to an HTTP/1.1 backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstreams_get_exact_round_robin_from_http1_and_http2_clients() {
    let b1 = H2cBackend::start("g1", false).await;
    let b2 = H2cBackend::start("g2", false).await;
    let lb = TestLb::start(h2c_routing(vec![b1.spec(), b2.spec()]));
    // HTTP/1.1 clients (the fast path hands h2c upstreams to the hyper path).
    let mut conn = Conn::open(lb.addr).await.unwrap();
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..10 {
        let (status, body) = conn.get("/host").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *counts.entry(body.trim().to_owned()).or_default() += 1;
    }
    assert_eq!(counts, BTreeMap::from([("g1".into(), 5), ("g2".into(), 5)]));
    // One HTTP/2 client connection, 60 concurrent streams.
    let mut tx = h2c_client(lb.addr).await;
    let counts = streams(&mut tx, 60, || h2_get("/host")).await;
    assert_eq!(
        counts,
        BTreeMap::from([("g1".into(), 30), ("g2".into(), 30)])
    );
    let h = &b1.seen.lock().unwrap()[0];
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["via"], "1.1 roundhouse");
}

fn grpc_call(path: &str, timeout: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = Request::post(format!("http://test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        r = r.header("grpc-timeout", t);
    }
    // An empty protobuf message in one gRPC frame.
    r.body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_and_te_trailers_reaches_the_backend() {
    let b1 = H2cBackend::start("g1", true).await;
    let b2 = H2cBackend::start("g2", true).await;
    let lb = TestLb::start(h2c_routing(vec![b1.spec(), b2.spec()]));
    let mut tx = h2c_client(lb.addr).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let (status, _, body, trailers) = h2_send(&mut tx, grpc_call("/pkg.Svc/Get", None)).await;
        assert_eq!(status, StatusCode::OK);
        let trailers = trailers.expect("trailers pass through");
        assert_eq!(trailers["grpc-status"], "0");
        names.push(body.trim().to_owned());
    }
    names.sort();
    assert_eq!(names, ["g1", "g1", "g2", "g2"]);
    let seen = b1.seen.lock().unwrap();
    assert_eq!(
        seen[0]["te"], "trailers",
        "gRPC needs TE: trailers upstream"
    );
    assert_eq!(seen[0]["content-type"], "application/grpc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lbs_own_errors_on_grpc_calls_are_grpc_statuses() {
    // No endpoints: UNAVAILABLE, with HTTP 200 as gRPC clients expect.
    let lb = TestLb::start(h2c_routing(vec![]));
    let mut tx = h2c_client(lb.addr).await;
    let (status, headers, body, _) = h2_send(&mut tx, grpc_call("/pkg.Svc/Get", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(headers["grpc-message"], "no endpoints available");
    assert_eq!(body, "");
    // Unreachable endpoint: UNAVAILABLE too.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    lb.update(h2c_routing(vec![EndpointSpec::new(addr)]));
    let (status, headers, _, _) = h2_send(&mut tx, grpc_call("/pkg.Svc/Get", None)).await;
    assert_eq!(
        (status, &headers["grpc-status"]),
        (StatusCode::OK, &"14".parse::<http::HeaderValue>().unwrap())
    );
    // A plain HTTP/2 request still gets the plain 503.
    lb.update(h2c_routing(vec![]));
    let (status, _, body, _) = h2_send(&mut tx, h2_get("/host")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no endpoints available\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_a_deadline_answered_with_deadline_exceeded() {
    let hang = H2cBackend::start_with("hang", true, Some("/pkg.Svc/Slow")).await;
    let lb = TestLb::start(h2c_routing(vec![hang.spec()]));
    let mut tx = h2c_client(lb.addr).await;
    let t = Instant::now();
    let (status, headers, _, _) = within(
        HANG,
        h2_send(&mut tx, grpc_call("/pkg.Svc/Slow", Some("200m"))),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    // Not before the deadline; the response-header timeout (30 s) would
    // have taken far longer than HANG.
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert_eq!(
        hang.hits.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "not retried"
    );
    // A call without a deadline on the same connection still works.
    let (status, _, body, trailers) = h2_send(&mut tx, grpc_call("/pkg.Svc/Get", None)).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "hang"));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_allowed_are_refused_not_queued_without_bound() {
    let b = H2cBackend::start_with("hang", false, Some("/slow")).await;
    let lb = TestLb::start_with(
        routing(vec![]),
        lb::proxy::ProxyConfig {
            h2_max_streams: 4,
            ..test_proxy_config()
        },
        lb::selection::Policy::default(),
    );
    lb.update(h2c_routing(vec![b.spec()]));
    let mut tx = h2c_client(lb.addr).await;
    // Four streams hang in the backend; the client's fifth waits for the
    // LB's SETTINGS limit instead of opening a fifth stream.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tx = tx.clone();
        held.push(tokio::spawn(async move {
            tx.ready().await.unwrap();
            tx.send_request(h2_get("/slow")).await
        }));
    }
    wait_until("four streams in the backend", || {
        b.hits.load(std::sync::atomic::Ordering::Relaxed) == 4
    })
    .await;
    let fifth = tokio::time::timeout(
        Duration::from_millis(300),
        h2_send(&mut tx, h2_get("/host")),
    )
    .await;
    assert!(fifth.is_err(), "a fifth concurrent stream was served");
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::Relaxed), 4);
    for h in held {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http11_share_the_plain_port_with_the_fast_path_off() {
    let b1 = TestBackend::start("b1");
    let b2 = TestBackend::start("b2");
    let lb = TestLb::start_with(
        routing(vec![b1.spec(), b2.spec()]),
        lb::proxy::ProxyConfig {
            fast_path: false,
            ..test_proxy_config()
        },
        lb::selection::Policy::default(),
    );
    let mut tx = h2c_client(lb.addr).await;
    let counts = streams(&mut tx, 10, || h2_get("/host")).await;
    assert_eq!(counts, BTreeMap::from([("b1".into(), 5), ("b2".into(), 5)]));
    let (status, body) = get_once(lb.addr, "/host").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

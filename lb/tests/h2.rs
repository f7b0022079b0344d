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

/// An HTTP/2 client on the `h2` crate, for what hyper's client does not
/// let a test control: request bodies without a length, DATA frames one by
/// one, resets.
async fn raw_h2(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx
}

/// Sends `head` with `chunks` as its body (each its own DATA frame, each
/// sent once the LB's window allows); returns status and body.
async fn raw_call(
    tx: &h2::client::SendRequest<Bytes>,
    head: Request<()>,
    chunks: Vec<Bytes>,
) -> (StatusCode, String) {
    let mut tx = tx.clone().ready().await.unwrap();
    let (resp, mut body) = tx.send_request(head, chunks.is_empty()).unwrap();
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        body.reserve_capacity(chunk.len());
        let mut rest = chunk;
        while !rest.is_empty() {
            let cap = std::future::poll_fn(|cx| body.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
            let part = rest.split_to(cap.min(rest.len()));
            body.send_data(part, i + 1 == n && rest.is_empty()).unwrap();
        }
    }
    let resp = within(HANG, resp).await.unwrap();
    let status = resp.status();
    let mut rx = resp.into_body();
    let mut out = Vec::new();
    while let Some(data) = rx.data().await {
        let data = data.unwrap();
        let _ = rx.flow_control().release_capacity(data.len());
        out.extend_from_slice(&data);
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// A backend that answers with what framed the request's body and the
/// body's length and first bytes.
fn echo_backend() -> TestBackend {
    TestBackend::with_service("echo", |req: Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let h = |n: &str| {
            req.headers()
                .get(n)
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
        };
        let (cl, te, cookie) = (h("content-length"), h("transfer-encoding"), h("cookie"));
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let head = String::from_utf8_lossy(&body[..body.len().min(16)]).into_owned();
        http::Response::new(Full::new(Bytes::from(format!(
            "cl={cl} te={te} cookie={cookie} len={} head={head}",
            body.len()
        ))))
    })
}

fn post(path: &str, length: Option<usize>) -> Request<()> {
    let mut r = Request::post(format!("http://test{path}"));
    if let Some(n) = length {
        r = r.header("content-length", n);
    }
    r.body(()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_to_http11_backends_with_or_without_a_length() {
    let b = echo_backend();
    let lb = TestLb::start(routing(vec![b.spec()]));
    let tx = raw_h2(lb.addr).await;
    let parts = |s: &[&'static str]| s.iter().map(|p| Bytes::from_static(p.as_bytes())).collect();

    // A declared length is forwarded as it is.
    let (status, body) = raw_call(&tx, post("/a", Some(11)), parts(&["hello ", "world"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "cl=11 te=- cookie=- len=11 head=hello world");

    // Without one (HTTP/2 needs none), the body is chunked for HTTP/1.1.
    let (status, body) = raw_call(&tx, post("/b", None), parts(&["a", "bb", "ccc"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "cl=- te=chunked cookie=- len=6 head=abbccc");

    // 4 MiB, four times the window the LB gives a connection: it can only
    // be sent whole if the LB gives the window back as the backend takes
    // the bytes.
    let big: Vec<Bytes> = (0..256)
        .map(|_| Bytes::from(vec![b'z'; 16 * 1024]))
        .collect();
    let (status, body) = within(HANG, raw_call(&tx, post("/c", None), big)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "cl=- te=chunked cookie=- len=4194304 head=zzzzzzzzzzzzzzzz"
    );

    // Cookie fields, split in HTTP/2, are one field again in HTTP/1.1
    // (RFC 9113 §8.2.3).
    let req = Request::get("http://test/d")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let (status, body) = raw_call(&tx, req, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "cl=- te=- cookie=a=1; b=2 len=0 head=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_are_refused_with_413() {
    let b = echo_backend();
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        lb::proxy::ProxyConfig {
            max_body_bytes: Some(1000),
            ..test_proxy_config()
        },
        lb::selection::Policy::default(),
    );
    let tx = raw_h2(lb.addr).await;
    // Declared: refused before anything reaches the backend.
    let req = post("/declared", Some(5000));
    let mut open = tx.clone().ready().await.unwrap();
    let (resp, _body) = open.send_request(req, false).unwrap();
    let resp = within(HANG, resp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b.hits(), 0);
    // Streamed without a length: refused when it passes the limit.
    let chunks: Vec<Bytes> = (0..5).map(|_| Bytes::from(vec![b'x'; 1000])).collect();
    let mut open = tx.clone().ready().await.unwrap();
    let (resp, mut body) = open.send_request(post("/streamed", None), false).unwrap();
    for c in chunks {
        // The stream may be answered and reset before all of it is sent.
        if body.send_data(c, false).is_err() {
            break;
        }
    }
    let resp = within(HANG, resp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The connection is still good for the next request.
    let (status, _) = raw_call(
        &tx,
        post("/small", Some(3)),
        vec![Bytes::from_static(b"abc")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_close_delimited_responses_reach_http2_clients_whole() {
    // 1,000 chunks of 3 bytes: decoded, and not relayed as 1,000 frames
    // (the h2 client would end the connection for "too many data frames").
    let b = TestBackend::with_streaming("b", |path| match path {
        "/chunks" => (Bytes::from_static(b"abc"), 1000),
        _ => (Bytes::from_static(b"x"), 1),
    });
    let lb = TestLb::start(routing(vec![b.spec()]));
    let tx = raw_h2(lb.addr).await;
    for _ in 0..3 {
        let (status, body) = raw_call(&tx, h2_get_head("/chunks"), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "abc".repeat(1000));
    }

    // A response without a length ends when the backend closes.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = raw.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nx-shape: close\r\n\r\n")
                .await
                .unwrap();
            for _ in 0..100 {
                s.write_all(b"0123456789").await.unwrap();
            }
        }
    });
    lb.update(routing(vec![lb::discovery::EndpointSpec::new(raw_addr)]));
    for _ in 0..2 {
        let (status, body) = raw_call(&tx, h2_get_head("/close"), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "0123456789".repeat(100));
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_lb_sends_goaway_and_finishes_in_flight_streams() {
    // The backend answers only once SIGTERM has arrived at the LB.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let answer = release.clone();
    let slow = TestBackend::with_service("slow", move |_| {
        let answer = answer.clone();
        async move {
            answer.notified().await;
            http::Response::new(Full::new(Bytes::from_static(b"slow\n")))
        }
    });
    let lb = TestLb::start(routing(vec![slow.spec()]));
    let addr = lb.addr;
    let ready = lb.running.ready.clone();
    let tx = raw_h2(addr).await;
    let call = {
        let tx = tx.clone();
        tokio::spawn(async move { raw_call(&tx, h2_get_head("/slow"), vec![]).await })
    };
    wait_until("the request reached the backend", || slow.hits() == 1).await;
    let stopping = tokio::task::spawn_blocking(move || lb.stop());
    wait_until("shutdown started", || !ready.get()).await;
    // The GOAWAY reaches the client: it opens no new stream after it (the
    // h2 client refuses to once it has one).
    let goaway = async {
        while tx.clone().ready().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    within(HANG, goaway).await;
    release.notify_one();
    assert_eq!(
        within(HANG, call).await.unwrap(),
        (StatusCode::OK, "slow\n".into()),
        "the stream in flight finished"
    );
    assert!(within(HANG, stopping).await.unwrap().is_ok());
    assert_eq!(slow.hits(), 1, "nothing after the GOAWAY was forwarded");
}

fn h2_get_head(path: &str) -> Request<()> {
    Request::get(format!("http://test{path}")).body(()).unwrap()
}

//! The data plane over real sockets on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use lb::proxy::ProxyConfig;
use lb::selection::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `clients` keep-alive connections share `total` GETs of /host; returns
/// the count per backend name and the number of failures.
async fn spread(lb: &TestLb, clients: usize, total: usize) -> (BTreeMap<String, usize>, usize) {
    let per = total / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let addr = lb.addr;
            tokio::spawn(async move {
                let mut counts = BTreeMap::<String, usize>::new();
                let mut failures = 0;
                let mut conn = Conn::open(addr).await.unwrap();
                for _ in 0..per {
                    match conn.get("/host").await {
                        Ok((StatusCode::OK, body)) => {
                            *counts.entry(body.trim().to_owned()).or_default() += 1
                        }
                        _ => {
                            failures += 1;
                            conn = Conn::open(addr).await.unwrap();
                        }
                    }
                }
                (counts, failures)
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    let mut failures = 0;
    for t in tasks {
        let (c, f) = t.await.unwrap();
        failures += f;
        for (k, v) in c {
            *counts.entry(k).or_default() += v;
        }
    }
    (counts, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_three_backends_get_exactly_equal_shares() {
    let b1 = TestBackend::start("b1");
    let b2 = TestBackend::start("b2");
    let lb = TestLb::start(routing(vec![b1.spec(), b2.spec()]));
    let (counts, failures) = spread(&lb, 4, 400).await;
    assert_eq!(failures, 0);
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 200), ("b2".into(), 200)])
    );

    let b3 = TestBackend::start("b3");
    lb.update(routing(vec![b1.spec(), b2.spec(), b3.spec()]));
    // The cursor continues from where it was; over a multiple of 3 requests
    // starting at a multiple of 3 the split is exact.
    let (counts, failures) = spread(&lb, 3, 600).await;
    assert_eq!(failures, 0);
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 200), ("b2".into(), 200), ("b3".into(), 200)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_client_still_rotates_per_request() {
    let b1 = TestBackend::start("b1");
    let b2 = TestBackend::start("b2");
    let lb = TestLb::start(routing(vec![b1.spec(), b2.spec()]));
    let mut conn = Conn::open(lb.addr).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(conn.get("/host").await.unwrap().1.trim().to_owned());
    }
    assert_eq!(seen, ["b1", "b2", "b1", "b2", "b1", "b2"]);
    assert!(!conn.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_mid_run_costs_no_get() {
    let b1 = TestBackend::start("b1");
    let b2 = TestBackend::start("b2");
    let lb = TestLb::start(routing(vec![b1.spec(), b2.spec()]));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), lb.addr);
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match conn.get("/host").await {
                        Ok((StatusCode::OK, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            conn = Conn::open(addr).await.unwrap();
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    // Let load build up, kill b2 while requests are in flight, keep going.
    wait_until("2,000 GETs before the kill", || {
        ok.load(Ordering::Relaxed) >= 2_000
    })
    .await;
    tokio::task::spawn_blocking(move || b2.kill())
        .await
        .unwrap();
    let at_kill = ok.load(Ordering::Relaxed);
    wait_until("2,000 GETs after the kill", || {
        ok.load(Ordering::Relaxed) >= at_kill + 2_000
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed GETs");
    // The kill did hit traffic: attempts failed and were retried, and the
    // dead endpoint was ejected.
    let m = lb.running.balancer.metrics();
    assert!(m.retries.get() >= 1, "no retry happened");
    assert!(m.ejections.get() >= 1, "dead endpoint not ejected");
    assert!(b1.hits() > 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_gives_504_within_the_timeout() {
    // Accepts, reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let policy = Policy {
        response_header_timeout: Duration::from_millis(300),
        ..Policy::default()
    };
    let lb = TestLb::start_with(
        routing(vec![lb::discovery::EndpointSpec::new(addr)]),
        test_proxy_config(),
        policy,
    );
    let t = Instant::now();
    let (status, body) = within(HANG, get_once(lb.addr, "/host")).await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream timed out\n");
    assert!(
        took >= Duration::from_millis(300),
        "before the timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_gives_503_and_unreachable_gives_502() {
    let lb = TestLb::start(routing(vec![]));
    let (status, body) = get_once(lb.addr, "/host").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no endpoints available\n");

    // Two closed ports: connection refused on every attempt.
    let dead: Vec<_> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            lb::discovery::EndpointSpec::new(l.local_addr().unwrap())
        })
        .collect();
    lb.update(routing(dead));
    let (status, _) = get_once(lb.addr, "/host").await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let metrics = lb.running.balancer.metrics().encode();
    assert!(metrics.contains("reason=\"no_endpoints\"} 1"), "{metrics}");
    assert!(
        metrics.contains("reason=\"upstream_failed\"} 1"),
        "{metrics}"
    );
}

#[test]
fn oversize_headers_get_431_and_the_lb_keeps_serving() {
    let b1 = TestBackend::start("b1");
    let lb = TestLb::start_with(
        routing(vec![b1.spec()]),
        ProxyConfig {
            max_header_bytes: 4096,
            ..test_proxy_config()
        },
        Policy::default(),
    );
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = "a".repeat(8000);
    write!(s, "GET /host HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(b1.hits(), 0, "the request never reached the backend");

    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /host HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversize_body_gets_413_without_reaching_a_backend() {
    let b1 = TestBackend::start("b1");
    let lb = TestLb::start_with(
        routing(vec![b1.spec()]),
        ProxyConfig {
            max_body_bytes: Some(1024),
            ..test_proxy_config()
        },
        Policy::default(),
    );
    let mut conn = Conn::open(lb.addr).await.unwrap();
    let req = Request::post("/host")
        .header("host", "x")
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    let (status, _) = conn.send(req).await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b1.hits(), 0);
}

/// An upgrade echo server: answers 101 and echoes bytes on the tunnel.
fn echo_upgrade_backend(name: &str) -> TestBackend {
    TestBackend::with_service(name, |mut req| async move {
        if req.headers().get("upgrade").is_none() {
            return Response::new(Full::new(Bytes::from_static(b"no upgrade\n")));
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Full::default())
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_echoes_and_survives_endpoint_changes() {
    let ws = echo_upgrade_backend("ws");
    let other = TestBackend::start("other");
    let lb = TestLb::start(routing(vec![ws.spec()]));
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    async fn echo(s: &mut tokio::net::TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        buf
    }
    assert_eq!(echo(&mut s, b"hello").await, b"hello");
    // The endpoint set changes twice (the tunnel's endpoint even leaves it);
    // the open tunnel is unaffected.
    lb.update(routing(vec![other.spec()]));
    assert_eq!(echo(&mut s, b"still here").await, b"still here");
    lb.update(routing(vec![other.spec(), ws.spec()]));
    assert_eq!(echo(&mut s, b"bye").await, b"bye");
    let metrics = lb.running.balancer.metrics().encode();
    assert!(metrics.contains("roundhouse_tunnels 1"), "{metrics}");
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_body_passes_with_bounded_memory() {
    // The backend counts the body bytes as they stream by and answers the
    // total; the client generates 256 MiB in 64 KiB chunks.
    let counter = TestBackend::with_service("count", |req| async move {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                n += data.len() as u64;
            }
        }
        Response::new(Full::new(Bytes::from(n.to_string())))
    });
    let lb = TestLb::start(routing(vec![counter.spec()]));
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 4096;
    let before = vm_hwm_kib();
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let stream = futures::stream::iter(0..CHUNKS)
        .map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
    let body = StreamBody::new(stream);
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            Request::post("/upload")
                .header("host", "x")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, (CHUNK * CHUNKS).to_string());
    let grew_mib = (vm_hwm_kib() - before) / 1024;
    assert!(
        grew_mib < 64,
        "peak memory grew by {grew_mib} MiB for a 256 MiB body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_backend() {
    let echo = TestBackend::with_service("echo", |req| async move {
        let mut out = String::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "via",
            "host",
            "x-secret",
            "connection",
        ] {
            let v = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
                .join("|");
            out.push_str(&format!("{name}={v}\n"));
        }
        Response::new(Full::new(Bytes::from(out)))
    });
    let lb = TestLb::start(routing(vec![echo.spec()]));
    let mut conn = Conn::open(lb.addr).await.unwrap();
    let req = Request::get("/h")
        .header("host", "app.example")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::default())
        .unwrap();
    let (status, body) = conn.send(req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("x-forwarded-for=203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto=http\n"), "{body}");
    assert!(body.contains("x-forwarded-host=app.example\n"), "{body}");
    assert!(body.contains("via=1.1 roundhouse\n"), "{body}");
    assert!(body.contains("host=app.example\n"), "{body}");
    assert!(body.contains("x-secret=\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    // The backend answers only once SIGTERM has arrived at the LB.
    let release = Arc::new(tokio::sync::Notify::new());
    let answer = release.clone();
    let slow = TestBackend::with_service("slow", move |_| {
        let answer = answer.clone();
        async move {
            answer.notified().await;
            Response::new(Full::new(Bytes::from_static(b"slow\n")))
        }
    });
    let lb = TestLb::start(routing(vec![slow.spec()]));
    let addr = lb.addr;
    let ready = lb.running.ready.clone();
    let req = tokio::spawn(async move { get_once(addr, "/host").await });
    wait_until("the request reached the backend", || slow.hits() == 1).await;
    let stopping = tokio::task::spawn_blocking(move || lb.stop());
    // Shutdown has started (readiness is the first thing it drops); the
    // request is still in flight.
    wait_until("shutdown started", || !ready.get()).await;
    release.notify_one();
    let stopped = within(HANG, stopping).await.unwrap();
    assert!(stopped.is_ok());
    assert_eq!(
        req.await.unwrap().unwrap(),
        (StatusCode::OK, "slow\n".into())
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// Every accepted client connection is counted on the worker that accepted
/// it; with `SO_REUSEPORT` the kernel spreads new connections over both
/// workers' listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_are_counted_per_worker() {
    const CONNECTIONS: usize = 200;
    let b1 = TestBackend::start("b1");
    let lb = TestLb::start(routing(vec![b1.spec()]));
    let accepted = || -> BTreeMap<String, u64> {
        lb.running
            .balancer
            .metrics()
            .encode()
            .lines()
            .filter_map(|l| l.strip_prefix("roundhouse_accepted_connections_total{worker=\""))
            .filter_map(|l| l.split_once("\"} "))
            .map(|(w, n)| (w.to_owned(), n.trim().parse().unwrap()))
            .collect()
    };
    let before: u64 = accepted().values().sum();
    for _ in 0..CONNECTIONS {
        let mut conn = Conn::open(lb.addr).await.unwrap();
        assert_eq!(conn.get("/host").await.unwrap().0, StatusCode::OK);
    }
    let after = accepted();
    assert_eq!(
        after.keys().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1"],
        "one counter per worker: {after:?}"
    );
    assert_eq!(
        after.values().sum::<u64>() - before,
        CONNECTIONS as u64,
        "{after:?}"
    );
    assert!(
        after.values().all(|&n| n > 0),
        "both workers accepted some: {after:?}"
    );
}

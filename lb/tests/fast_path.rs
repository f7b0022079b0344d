//! The HTTP/1.1 fast path against real sockets: response framings it passes
//! through, upstream connection reuse, the hand-over to the general path in
//! the middle of a keep-alive connection, and equal answers with the fast
//! path switched off.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use lb::discovery::EndpointSpec;
use lb::proxy::ProxyConfig;
use lb::selection::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A hand-written HTTP/1.1 backend: reads request heads and answers each
/// from `answer(path)`; `close` after the answer when it says so. Counts
/// accepted connections.
struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(answer: fn(&str) -> (Vec<Vec<u8>>, bool)) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        let (pieces, close) = answer(&path);
                        for p in pieces {
                            if s.write_all(&p).await.is_err() {
                                return;
                            }
                            // Separate writes, so the LB sees split reads.
                            tokio::task::yield_now().await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    fn spec(&self) -> EndpointSpec {
        EndpointSpec::new(self.addr).named("raw")
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answers(path: &str) -> (Vec<Vec<u8>>, bool) {
    let v = |s: &str| s.as_bytes().to_vec();
    match path {
        "/chunked" => (
            vec![
                v(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5\r\nhel",
                ),
                v("lo\r\n6;ext=1\r\n world\r\n"),
                v("0\r\nX-Trailer: t\r\n\r\n"),
            ],
            false,
        ),
        "/until-close" => (
            vec![
                v("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil "),
                v("close"),
            ],
            true,
        ),
        "/early-hints" => (
            vec![
                v("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"),
                v("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints"),
            ],
            false,
        ),
        "/big" => {
            let body = vec![b'x'; 3 * 1024 * 1024 + 7];
            let mut head = v(&format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ));
            head.extend_from_slice(&body[..1000]);
            (vec![head, body[1000..].to_vec()], false)
        }
        "/short" => (
            vec![v("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")],
            true,
        ),
        "/bad-chunk" => (
            vec![v(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            )],
            true,
        ),
        "/head" => (
            vec![v("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")],
            false,
        ),
        _ => (
            vec![v("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
            false,
        ),
    }
}

/// Sends `raw` on a fresh blocking connection and reads until the LB closes.
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framings_pass_through_and_connections_are_reused() {
    let backend = RawBackend::start(answers).await;
    let lb = TestLb::start(routing(vec![backend.spec()]));
    let mut conn = Conn::open(lb.addr).await.unwrap();

    // Chunked: passed through unchanged (hyper's client decodes it here),
    // and the upstream connection is reused for the next request.
    for _ in 0..3 {
        assert_eq!(
            conn.get("/chunked").await.unwrap(),
            (StatusCode::OK, "hello world".into())
        );
    }
    assert_eq!(
        conn.get("/early-hints").await.unwrap(),
        (StatusCode::OK, "hints".into())
    );
    let (status, body) = conn.get("/big").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 3 * 1024 * 1024 + 7);
    assert!(body.bytes().all(|b| b == b'x'));
    assert_eq!(
        backend.accepted.load(Ordering::Relaxed),
        1,
        "the upstream connection was not reused"
    );

    // HEAD: the Content-Length is passed, no body is expected or sent.
    let resp = exchange(
        lb.addr,
        b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("Content-Length: 42\r\n"), "{resp}");
    assert!(
        resp.ends_with("\r\n\r\nok"),
        "HEAD response carried a body or the next one is missing: {resp:?}"
    );

    // Until close: the client gets the body and a closed connection.
    let resp = exchange(lb.addr, b"GET /until-close HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nuntil close"), "{resp:?}");

    // The raw chunked bytes reach the client as they were sent, trailers
    // included, with `Via` added.
    let resp = exchange(
        lb.addr,
        b"GET /chunked HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.contains("transfer-encoding: chunked\r\n"), "{resp}");
    assert!(resp.contains("via: 1.1 roundhouse\r\n"), "{resp}");
    assert!(
        resp.ends_with("\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
        "{resp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_aborts_the_client_connection() {
    let backend = RawBackend::start(answers).await;
    let lb = TestLb::start(routing(vec![backend.spec()]));
    for path in ["/short", "/bad-chunk"] {
        let mut conn = Conn::open(lb.addr).await.unwrap();
        assert!(
            conn.get(path).await.is_err(),
            "{path}: a truncated body passed as complete"
        );
    }
    // The LB counted both and still serves.
    let metrics = get_once(lb.admin, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("roundhouse_upstream_errors_total{kind=\"body\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        get_once(lb.addr, "/").await.unwrap(),
        (StatusCode::OK, "ok".into())
    );
}

/// A backend that records `METHOD /path body` for every request.
fn recorder() -> (TestBackend, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let backend = TestBackend::with_service("rec", move |req: Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let line = format!("{} {}", req.method(), req.uri().path());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            s.lock()
                .unwrap()
                .push(format!("{line} {}", String::from_utf8_lossy(&body)));
            Response::new(Full::new(Bytes::from_static(b"rec")))
        }
    });
    (backend, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_moves_to_the_general_path_when_needed() {
    let (backend, seen) = recorder();
    let lb = TestLb::start(routing(vec![backend.spec()]));
    // GET (fast path), POST with a body (general path from here on), GET,
    // pipelined in one write.
    let resp = exchange(
        lb.addr,
        b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 3, "{resp}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /one ", "POST /two hello", "GET /three "]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_answer_alike() {
    let a = TestBackend::start("backend-1");
    let b = TestBackend::start("backend-2");
    let mut answers = Vec::new();
    for fast_path in [true, false] {
        let lb = TestLb::start_with(
            routing(vec![a.spec(), b.spec()]),
            ProxyConfig {
                fast_path,
                ..test_proxy_config()
            },
            Policy::default(),
        );
        let mut conn = Conn::open(lb.addr).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(conn.get("/host").await.unwrap());
        }
        got.push(conn.get("/nope").await.unwrap());
        let head = exchange(
            lb.addr,
            b"GET /host HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\nvia: 1.1 roundhouse\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        answers.push(got);
        lb.stop().unwrap();
    }
    // Same rotation (each LB starts its cursor at the first endpoint) and
    // the same 404 from the backend.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][0].1, "backend-1\n");
    assert_eq!(answers[0][1].1, "backend-2\n");
}

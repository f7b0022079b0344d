//! Hostile clients against the data plane, over raw TCP on 127.0.0.1:
//! malformed requests, smuggling shapes, open-proxy attempts, header and
//! body bombs, slowloris and the connection limit. Every case checks the
//! exact answer, that the LB still serves afterwards, and (with a recording
//! backend) exactly which requests reached upstream.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::{BodyExt, Full};
use lb::proxy::ProxyConfig;
use lb::selection::Policy;

/// How long a raw exchange waits for the LB to answer and close.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back on a raw connection.
#[derive(Debug)]
struct Reply {
    text: String,
    /// The LB closed the connection (EOF or reset) within `IO_TIMEOUT`.
    closed: bool,
}

impl Reply {
    /// Status codes of the responses in `text`, in order.
    fn statuses(&self) -> Vec<u16> {
        let t = &self.text;
        t.match_indices("HTTP/1.")
            .filter(|(i, _)| *i == 0 || t.as_bytes()[i - 1] == b'\n')
            .filter_map(|(i, _)| t.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads until EOF, reset or `IO_TIMEOUT`.
fn read_all(s: &mut TcpStream) -> Reply {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                break true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    Reply {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// Sends `req` on a new connection and reads everything until close.
fn exchange(addr: SocketAddr, req: &[u8]) -> Reply {
    let mut s = connect(addr);
    // The LB may close before taking all of it; what it answered is read below.
    let _ = s.write_all(req);
    read_all(&mut s)
}

/// Reads one response (head plus Content-Length body) from a keep-alive
/// connection; returns the status and body.
fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// A normal GET on a fresh connection gets 200.
fn assert_healthy(addr: SocketAddr) {
    let r = exchange(
        addr,
        b"GET /healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.statuses(), [200], "LB no longer healthy: {r:?}");
}

/// Every request a backend received: "METHOD URI body=…" (the body part
/// is missing while, or if, it has not been read completely).
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<String>>>,
    hosts: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn all(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// "METHOD URI" of every request.
    fn heads(&self) -> Vec<String> {
        self.all()
            .iter()
            .map(|r| r.split(" body=").next().unwrap().to_owned())
            .collect()
    }

    fn hosts(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }

    /// Forgets everything (after the assertions of one case).
    fn clear(&self) {
        self.requests.lock().unwrap().clear();
        self.hosts.lock().unwrap().clear();
    }

    /// Runs the health check and forgets the request it made.
    fn healthy(&self, addr: SocketAddr) {
        assert_healthy(addr);
        assert_eq!(self.heads(), ["GET /healthy"]);
        self.clear();
    }
}

/// A backend that records every request it receives, with its body.
fn recorder() -> (TestBackend, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let backend = TestBackend::with_service("rec", move |req| {
        let s = s.clone();
        async move {
            let head = format!("{} {}", req.method(), req.uri());
            let host = req
                .headers()
                .get_all("host")
                .iter()
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join("|");
            s.hosts.lock().unwrap().push(host);
            let idx = {
                let mut v = s.requests.lock().unwrap();
                v.push(head.clone());
                v.len() - 1
            };
            let body = match req.into_body().collect().await {
                Ok(b) => {
                    let b = b.to_bytes();
                    if b.len() <= 64 {
                        format!("{:?}", String::from_utf8_lossy(&b))
                    } else {
                        format!("<{} bytes>", b.len())
                    }
                }
                Err(_) => "<error>".to_owned(),
            };
            if let Some(e) = s.requests.lock().unwrap().get_mut(idx) {
                *e = format!("{head} body={body}");
            }
            Response::new(Full::new(Bytes::from_static(b"rec\n")))
        }
    });
    (backend, seen)
}

/// The header-read timeout is far longer than `IO_TIMEOUT`: a connection
/// these tests see closed was closed by the LB's own decision, never by
/// the timeout (which has tests of its own below).
fn config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: Duration::from_secs(60),
        ..test_proxy_config()
    }
}

fn lb_with(backend: &TestBackend, proxy: ProxyConfig) -> TestLb {
    TestLb::start_with(routing(vec![backend.spec()]), proxy, Policy::default())
}

/// Sends each case on its own connection and checks the exact outcome:
/// `Some(status)` then close, or `None` = closed without any response;
/// no case may reach the backend.
fn refused_without_upstream(lb: &TestLb, seen: &Seen, cases: &[(&str, Vec<u8>, Option<u16>)]) {
    for (name, req, expected) in cases {
        let r = exchange(lb.addr, req);
        let expected: Vec<u16> = expected.iter().copied().collect();
        assert_eq!(r.statuses(), expected, "{name}: {r:?}");
        // Closed within IO_TIMEOUT, long before the header-read timeout.
        assert!(r.closed, "{name}: connection left open: {r:?}");
        assert_eq!(
            seen.all(),
            Vec::<String>::new(),
            "{name} reached the backend"
        );
        seen.healthy(lb.addr);
    }
}

fn req(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn malformed_request_lines_and_versions_get_400_and_never_reach_a_backend() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let cases = vec![
        (
            "HTTP/2.0 as text",
            req("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        ("HTTP/3", req("GET / HTTP/3\r\nHost: x\r\n\r\n"), Some(400)),
        (
            "HTTP/1.2",
            req("GET / HTTP/1.2\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "lower-case version",
            req("GET / http/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "garbage version",
            req("GET / FOO/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        ("HTTP/0.9", req("GET /\r\n\r\n"), Some(400)),
        ("method only", req("GET\r\n\r\n"), Some(400)),
        (
            "double space",
            req("GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "space in target",
            req("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "CR in target",
            req("GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "non-token method",
            req("G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "trailing junk",
            req("GET / HTTP/1.1 junk\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
        (
            "TLS ClientHello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "binary",
            b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(),
            Some(400),
        ),
        // The HTTP/2 preface is not malformed: it opens an h2c connection
        // (tests/h2.rs). A preface-like line that is not it is.
        (
            "HTTP/2 preface, mangled",
            req("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Some(400),
        ),
    ];
    refused_without_upstream(&lb, &seen, &cases);
}

#[test]
fn invalid_header_names_values_and_injections_get_400() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let with = |h: &[u8]| {
        let mut r = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let cases = vec![
        ("space in name", with(b"Bad Header: x"), Some(400)),
        ("space before colon", with(b"X-A : x"), Some(400)),
        ("@ in name", with(b"X@Y: 1"), Some(400)),
        ("( in name", with(b"X(Y): 1"), Some(400)),
        ("quote in name", with(b"X\"Y: 1"), Some(400)),
        ("non-ASCII name", with(b"X\xffY: 1"), Some(400)),
        ("empty name", with(b": value"), Some(400)),
        ("no colon", with(b"NoColonHere"), Some(400)),
        ("NUL in value", with(b"X-A: a\x00b"), Some(400)),
        ("bare CR in value", with(b"X-A: a\rb"), Some(400)),
        ("DEL in value", with(b"X-A: a\x7fb"), Some(400)),
        ("obs-fold", with(b"X-A: a\r\n folded"), Some(400)),
        ("obs-fold with tab", with(b"X-A: a\r\n\tfolded"), Some(400)),
        (
            "CR injecting a header",
            with(b"X-A: a\rX-Injected: 1"),
            Some(400),
        ),
        (
            "CRLF in the request target",
            req("GET /a\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(400),
        ),
    ];
    refused_without_upstream(&lb, &seen, &cases);
}

#[test]
fn transfer_codings_other_than_chunked_get_501_and_never_reach_a_backend() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    for te in ["gzip, chunked", "deflate, chunked"] {
        let req = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let r = exchange(lb.addr, req.as_bytes());
        assert_eq!(r.statuses(), [501], "{te}: {r:?}");
        assert!(r.closed, "{te}: connection left open");
        assert!(seen.all().is_empty(), "{te}: backend saw {:?}", seen.all());
        seen.healthy(lb.addr);
        seen.clear();
    }
}

#[test]
fn smuggling_shapes_are_refused_with_400_and_the_pipelined_request_is_dropped() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = |headers: &str, body: &str| {
        req(&format!(
            "POST /a HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}{smuggle}"
        ))
    };
    let cases = vec![
        (
            "conflicting Content-Length",
            post("Content-Length: 5\r\nContent-Length: 50\r\n", "hello"),
            Some(400),
        ),
        (
            "Content-Length list",
            post("Content-Length: 5, 50\r\n", "hello"),
            Some(400),
        ),
        (
            "signed Content-Length",
            post("Content-Length: +5\r\n", "hello"),
            Some(400),
        ),
        (
            "negative Content-Length",
            post("Content-Length: -1\r\n", "hello"),
            Some(400),
        ),
        (
            "hex Content-Length",
            post("Content-Length: 0x5\r\n", "hello"),
            Some(400),
        ),
        (
            "chunked, identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Some(400),
        ),
        (
            "xchunked",
            post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Some(400),
        ),
        (
            "identity only",
            post(
                "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
                "hello",
            ),
            Some(400),
        ),
        (
            "chunked then identity",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Some(400),
        ),
        (
            "space before colon",
            post(
                "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            Some(400),
        ),
        (
            "folded Transfer-Encoding",
            post(
                "Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            Some(400),
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            req(&format!(
                "POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggle}"
            )),
            Some(400),
        ),
    ];
    refused_without_upstream(&lb, &seen, &cases);
}

#[test]
fn content_length_with_transfer_encoding_is_one_request_then_close() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (name, request, what the backend must have seen): chunked framing
    // wins (RFC 9112 §6.1), and the connection is closed after the response,
    // so the bytes after the chunked body are never parsed as a request.
    let cases = [
        (
            "CL.TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"
            ),
            "POST /a body=\"\"",
        ),
        (
            "TE.CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{smuggle}"
            ),
            "POST /a body=\"SMUGGLED\"",
        ),
        (
            "TE.CL with the smuggled request inside the declared length",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggle}"
            ),
            "POST /a body=\"\"",
        ),
    ];
    for (name, request, expected) in cases {
        let r = exchange(lb.addr, request.as_bytes());
        assert_eq!(r.statuses(), [200], "{name}: {r:?}");
        assert!(r.closed, "{name}: connection kept open: {r:?}");
        assert_eq!(seen.all(), [expected], "{name}");
        seen.clear();
        seen.healthy(lb.addr);
    }
}

#[test]
fn pipelined_requests_reach_the_backend_exactly_as_framed() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    // Two plain pipelined GETs: two requests, in order.
    let r = exchange(
        lb.addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.statuses(), [200, 200], "{r:?}");
    assert!(r.closed);
    assert_eq!(seen.all(), ["GET /one body=\"\"", "GET /two body=\"\""]);
    seen.clear();

    // Duplicate but equal Content-Length is one length; the body is exactly
    // those bytes and what follows is the next request.
    let r = exchange(
        lb.addr,
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.statuses(), [200, 200], "{r:?}");
    assert_eq!(seen.all(), ["POST /a body=\"hello\"", "GET /b body=\"\""]);
    seen.clear();

    // A body that looks like a request stays a body.
    let inner = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let r = exchange(
        lb.addr,
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(seen.all(), [format!("POST /a body={inner:?}")]);
    seen.clear();
    seen.healthy(lb.addr);
}

/// Chunked bodies with broken framing, each followed by a pipelined request.
fn bad_chunked_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    [
        ("non-hex size", "zz\r\nhello\r\n0\r\n\r\n"),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "size overflow",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("data longer than size", "5\r\nhelloEXTRA\r\n0\r\n\r\n"),
        ("data shorter than size", "9\r\nhello\r\n0\r\n\r\n"),
    ]
    .into_iter()
    .map(|(name, body)| {
        (
            name,
            req(&format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{smuggle}"
            )),
        )
    })
    .collect()
}

#[test]
fn bad_chunk_sizes_never_become_a_second_upstream_request() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let cases = bad_chunked_bodies();
    for (name, request) in &cases {
        let r = exchange(lb.addr, request);
        assert!(r.closed, "{name}: connection kept open: {r:?}");
        let statuses = r.statuses();
        assert!(statuses.len() == 1 && statuses[0] >= 400, "{name}: {r:?}");
        assert_healthy(lb.addr);
    }
    // The head of the broken request may have been streamed upstream before
    // its body broke (and may be recorded after the client got its answer),
    // but never the pipelined request, and never a completed body.
    let all = seen.all();
    let posts = all.iter().filter(|r| r.starts_with("POST")).count();
    assert!(posts <= cases.len(), "{all:?}");
    for r in &all {
        assert!(
            ["GET /healthy body=\"\"", "POST /a", "POST /a body=<error>"].contains(&r.as_str()),
            "backend saw {r:?} in {all:?}"
        );
    }
    assert_eq!(all.len() - posts, cases.len(), "{all:?}");
}

#[test]

fn bad_chunk_sizes_get_400() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let mut wrong = Vec::new();
    for (name, request) in bad_chunked_bodies() {
        let r = exchange(lb.addr, &request);
        if r.statuses() != [400] || !r.closed {
            wrong.push(format!("{name}: answered {:?}", r.statuses()));
        }
        assert_healthy(lb.addr);
    }
    seen.clear();
    let metrics = lb.running.balancer.metrics().encode();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("roundhouse_upstream_errors_total{"))
    {
        wrong.push(format!("client error counted as upstream error: {line}"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn absolute_form_goes_to_our_endpoints_only_and_connect_gets_405() {
    let (rec, seen) = recorder();
    // Not in the routing table: whatever a client names, nothing may reach it.
    let decoy = TestBackend::start("decoy");
    let lb = lb_with(&rec, config());
    let d = decoy.addr;
    let r = exchange(
        lb.addr,
        format!("GET http://{d}/steal?x=1 HTTP/1.1\r\nHost: {d}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(
        seen.all(),
        ["GET /steal?x=1 body=\"\""],
        "origin-form upstream"
    );
    seen.clear();
    let r = exchange(
        lb.addr,
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(seen.all(), ["GET / body=\"\""]);
    seen.clear();

    for target in [d.to_string(), "evil.example:443".to_owned()] {
        let r = exchange(
            lb.addr,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.statuses(), [405], "CONNECT {target}: {r:?}");
        assert!(r.closed);
        assert_eq!(seen.all(), Vec::<String>::new(), "CONNECT {target}");
    }
    // Bytes after a refused CONNECT are not tunnelled anywhere.
    let r = exchange(
        lb.addr,
        format!(
            "CONNECT {d} HTTP/1.1\r\nHost: {d}\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(r.closed);
    let statuses = r.statuses();
    assert_eq!(statuses.first(), Some(&405), "{r:?}");
    assert!(statuses[1..].iter().all(|s| *s == 200), "{r:?}");
    assert_eq!(seen.heads().len(), statuses.len() - 1, "{:?}", seen.all());
    assert!(seen.heads().iter().all(|h| h == "GET /after"));
    seen.clear();

    assert_eq!(decoy.hits(), 0, "the LB connected where the client said");
    seen.healthy(lb.addr);
    assert_eq!(decoy.hits(), 0);
}

#[test]

fn ambiguous_or_missing_host_gets_400() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let mut wrong = Vec::new();
    for (name, request) in [
        (
            "two Host fields",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "no Host in HTTP/1.1",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let r = exchange(lb.addr, request.as_bytes());
        if r.statuses() != [400] || !seen.all().is_empty() {
            wrong.push(format!(
                "{name}: answered {:?}, backend saw {:?} with Host {:?}",
                r.statuses(),
                seen.all(),
                seen.hosts()
            ));
        }
        seen.clear();
        seen.healthy(lb.addr);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]

fn absolute_form_forwards_the_host_it_was_routed_by() {
    let (rec, seen) = recorder();
    let lb = lb_with(&rec, config());
    let r = exchange(
        lb.addr,
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(seen.heads(), ["GET /x"]);
    assert_eq!(seen.hosts(), ["a.example"]);
}

#[test]
fn too_many_or_too_large_headers_get_431() {
    let (rec, seen) = recorder();
    let lb = lb_with(
        &rec,
        ProxyConfig {
            max_headers: 20,
            max_header_bytes: 4096,
            ..config()
        },
    );
    let with_headers = |n: usize, size: usize| {
        let mut r = String::from("GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 0..n {
            r.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(size)));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    // Host + Connection + 18 = 20 fields: at the limit, served.
    let r = exchange(lb.addr, &with_headers(18, 1));
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(seen.heads(), ["GET /h"]);
    seen.clear();
    seen.healthy(lb.addr);

    let cases = vec![
        ("21 header fields", with_headers(19, 1), Some(431)),
        ("100 header fields", with_headers(98, 1), Some(431)),
        // 10 × 500 bytes: no single field is large, the head is.
        (
            "head over max_header_bytes",
            with_headers(10, 500),
            Some(431),
        ),
        (
            "request line over max_header_bytes",
            req(&format!(
                "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(5000)
            )),
            Some(431),
        ),
    ];
    refused_without_upstream(&lb, &seen, &cases);

    // A megabyte of headers, written while the LB already refuses: the
    // 431 arrives (or the connection is reset under the writer), and the LB
    // has not buffered the flood.
    let mut s = connect(lb.addr);
    let flood = with_headers(2000, 500);
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(&flood);
        })
    };
    let r = read_all(&mut s);
    writer.join().unwrap();
    assert!(r.closed, "{r:?}");
    assert!(
        r.statuses() == [431] || r.text.is_empty(),
        "header flood: {r:?}"
    );
    assert_eq!(seen.all(), Vec::<String>::new());
    seen.healthy(lb.addr);
}

#[test]
fn oversize_bodies_get_413_promptly_and_are_never_forwarded_whole() {
    let (rec, seen) = recorder();
    let lb = lb_with(
        &rec,
        ProxyConfig {
            max_body_bytes: Some(1024),
            ..config()
        },
    );
    // Claims 1 GiB, sends 100 bytes and waits: the answer must not wait for
    // the rest (which never comes), and the pipelined request must not
    // reach the backend.
    let mut s = connect(lb.addr);
    s.write_all(
        format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n{}",
            "x".repeat(100)
        )
        .as_bytes(),
    )
    .unwrap();
    let r = read_all(&mut s);
    assert_eq!(r.statuses(), [413], "{r:?}");
    assert!(r.closed, "connection kept open after 413");
    assert_eq!(seen.all(), Vec::<String>::new());
    seen.healthy(lb.addr);

    // Chunked within the limit: forwarded whole.
    let chunk = |n: usize| format!("{n:x}\r\n{}\r\n", "a".repeat(n));
    let r = exchange(
        lb.addr,
        format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}{}0\r\n\r\n",
            chunk(512),
            chunk(512)
        )
        .as_bytes(),
    );
    assert_eq!(r.statuses(), [200], "{r:?}");
    assert_eq!(seen.all(), ["POST /up body=<1024 bytes>"]);
    seen.clear();

    // Chunked over the limit (3 × 1000 bytes), then a pipelined request.
    let r = exchange(
        lb.addr,
        format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}{}{}0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            chunk(1000),
            chunk(1000),
            chunk(1000)
        )
        .as_bytes(),
    );
    assert_eq!(r.statuses(), [413], "{r:?}");
    assert!(r.closed);
    // The head and part of the body were streamed upstream (and may be
    // recorded after the client got its 413); the body never completed and
    // the pipelined request never went.
    assert_healthy(lb.addr);
    let mut all = seen.all();
    all.retain(|r| r != "GET /healthy body=\"\"");
    assert!(
        all.is_empty() || all == ["POST /up"] || all == ["POST /up body=<error>"],
        "backend saw {all:?}"
    );
}

#[test]
fn slowloris_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let (rec, seen) = recorder();
    let lb = lb_with(
        &rec,
        ProxyConfig {
            header_read_timeout: Duration::from_millis(500),
            ..test_proxy_config()
        },
    );

    // One header byte every 50 ms: never a complete head.
    let t = Instant::now();
    let mut s = connect(lb.addr);
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let trickle = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut got = Vec::new();
    let mut sent = 0;
    let closed_after = loop {
        // A hang guard, 20 times the timeout: not a bound on promptness.
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "trickler never closed"
        );
        if sent < trickle.len() && s.write_all(&trickle[sent..=sent]).is_ok() {
            sent += 1;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break t.elapsed(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break t.elapsed(),
        }
    };
    // Never before the timeout (the trickler sends a byte every 50 ms, so
    // an idle-read timer would have been reset all along).
    assert!(
        closed_after >= Duration::from_millis(500),
        "closed after {closed_after:?}"
    );
    assert!(
        got.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(sent < trickle.len());

    // An idle keep-alive connection after one request.
    let mut s = connect(lb.addr);
    s.write_all(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s), (200, "rec\n".into()));
    let t = Instant::now();
    let r = read_all(&mut s);
    let idle = t.elapsed();
    // Closed within IO_TIMEOUT, and not before the timeout had passed.
    assert!(r.closed && r.text.is_empty(), "{r:?}");
    assert!(
        idle >= Duration::from_millis(400),
        "idle connection closed after {idle:?}"
    );
    assert_eq!(seen.heads(), ["GET /idle"]);
    seen.clear();
    seen.healthy(lb.addr);
}

#[test]
fn a_thousand_slow_clients_do_not_starve_a_normal_one() {
    // `ulimit -n` here is 20000: 1,000 client sockets plus the LB's 1,000
    // fit in the soft limit, so the number did not have to be lowered.
    const SLOW: usize = 1000;
    let (rec, seen) = recorder();
    // Long enough that no slow client can time out while the normal
    // requests run, however busy the machine: the check below proves it.
    let timeout = Duration::from_secs(10);
    let lb = lb_with(
        &rec,
        ProxyConfig {
            header_read_timeout: timeout,
            ..test_proxy_config()
        },
    );
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let mut s = connect(lb.addr);
            s.set_read_timeout(Some(timeout + IO_TIMEOUT)).unwrap();
            write!(s, "GET /slow{i} HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    let active = || {
        let m = lb.running.balancer.metrics().encode();
        m.lines()
            .find_map(|l| l.strip_prefix("roundhouse_active_connections "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + IO_TIMEOUT;
    while active() < SLOW {
        assert!(
            Instant::now() < deadline,
            "active connections: {} (expected {SLOW})",
            active()
        );
        std::thread::yield_now();
    }
    // While all of them hold a connection at the LB: 20 normal requests,
    // each answered (each within IO_TIMEOUT, or `exchange` gives up).
    for _ in 0..20 {
        assert_healthy(lb.addr);
    }
    // All the slow ones were still held throughout: the normal requests
    // were served beside them, not after them.
    let deadline = Instant::now() + IO_TIMEOUT;
    while active() != SLOW {
        assert!(
            Instant::now() < deadline,
            "active connections after the normal requests: {} (expected {SLOW})",
            active()
        );
        std::thread::yield_now();
    }
    // Then every slow one is closed, without an answer, after the timeout.
    for s in &mut slow {
        let r = read_all(s);
        assert!(r.closed && r.text.is_empty(), "{r:?}");
    }
    assert!(opened.elapsed() >= timeout, "{:?}", opened.elapsed());
    assert_eq!(
        seen.heads(),
        vec!["GET /healthy"; 20],
        "no slow request reached upstream"
    );
    seen.clear();
    seen.healthy(lb.addr);
}

#[test]
fn connection_limit_refuses_the_next_connection_with_503_and_recovers() {
    let b = TestBackend::start("b1");
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        ProxyConfig {
            max_connections: 20,
            ..config()
        },
        Policy::default(),
    );
    // 20 keep-alive connections, each proven accepted by a served request.
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect(lb.addr);
            s.write_all(b"GET /host HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut s), (200, "b1\n".into()));
            s
        })
        .collect();
    assert_eq!(b.hits(), 20);

    // The 21st: 503 and closed (within IO_TIMEOUT, without sending
    // anything: long before any timeout of the LB's), nothing forwarded.
    let mut s = connect(lb.addr);
    let r = read_all(&mut s);
    assert_eq!(r.statuses(), [503], "{r:?}");
    assert!(r.text.ends_with("too many connections\n"), "{r:?}");
    assert!(r.closed);
    assert_eq!(b.hits(), 20);
    let metrics = lb.running.balancer.metrics().encode();
    assert!(
        metrics.contains("roundhouse_refused_connections_total 1"),
        "{metrics}"
    );

    // One client leaves: a new connection is served again (the LB notices
    // the close asynchronously, hence the bounded polling).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = exchange(
            lb.addr,
            b"GET /host HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        match r.statuses()[..] {
            [200] => break,
            // 503, or reset before it could be read (the LB does not read
            // the request of a refused connection).
            [503] | [] => assert!(Instant::now() < deadline, "still refusing: {r:?}"),
            _ => panic!("{r:?}"),
        }
    }
    assert_eq!(b.hits(), 21);
    // The others were never disturbed.
    for s in &mut held {
        s.write_all(b"GET /host HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(s), (200, "b1\n".into()));
    }
    assert_eq!(b.hits(), 40);
}

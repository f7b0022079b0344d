//! Hostile clients against the real `backend` binary over raw TCP:
//! malformed request lines and versions, invalid header names and values,
//! smuggling shapes and header bombs get 400/431 (or a close), HTTP/2
//! protocol errors close the connection, a gRPC frame announcing a 4 GiB
//! message is refused without reading it, and the process keeps serving.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start() -> Backend {
        let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--name",
                "hostile",
                "--log-format",
                "json",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("backend starts");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("\"listening\"") => break line,
                Ok(_) => {}
                Err(e) => panic!("backend never listened: {e}"),
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = v["addr"].as_str().unwrap().parse().unwrap();
        // Keep draining stderr so the child never blocks on a full pipe.
        thread::spawn(move || while lines.recv().is_ok() {});
        Backend { child, addr }
    }

    /// Still running, and a normal request still gets 200.
    fn assert_healthy(&mut self, after: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "backend exited after {after}"
        );
        let r = exchange(
            self.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.statuses(), [200], "unhealthy after {after}: {r:?}");
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    text: String,
    closed: bool,
}

impl Reply {
    fn statuses(&self) -> Vec<u16> {
        let t = &self.text;
        t.match_indices("HTTP/1.")
            .filter(|(i, _)| *i == 0 || t.as_bytes()[i - 1] == b'\n')
            .filter_map(|(i, _)| t.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Sends `req` on a new connection; reads until close, reset or timeout.
fn exchange(addr: SocketAddr, req: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(req);
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

fn req(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Each case: the exact statuses answered (empty = closed without a
/// response), then the connection must be closed by the backend. (`closed`
/// means closed before the read timeout, IO_TIMEOUT: the backend has no
/// timer of its own shorter than that which could close it instead, so no
/// wall-clock bound is needed on top.)
fn check(b: &mut Backend, cases: &[(&str, Vec<u8>, &[u16])]) {
    for (name, request, expected) in cases {
        let t = Instant::now();
        let r = exchange(b.addr, request);
        assert_eq!(r.statuses(), *expected, "{name}: {r:?}");
        assert!(
            r.closed,
            "{name}: connection left open after {:?}: {r:?}",
            t.elapsed()
        );
        b.assert_healthy(name);
    }
}

#[test]
fn malformed_request_lines_and_versions_get_400() {
    let mut b = Backend::start();
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "HTTP/2.0 as text",
            req("GET /host HTTP/2.0\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        ("HTTP/3", req("GET /host HTTP/3\r\nHost: x\r\n\r\n"), &[400]),
        (
            "HTTP/1.2",
            req("GET /host HTTP/1.2\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        (
            "garbage version",
            req("GET /host FOO/1.1\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        ("HTTP/0.9", req("GET /host\r\n\r\n"), &[400]),
        (
            "double space",
            req("GET  /host HTTP/1.1\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        (
            "space in target",
            req("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        (
            "CR in target",
            req("GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        (
            "non-token method",
            req("G(T /host HTTP/1.1\r\nHost: x\r\n\r\n"),
            &[400],
        ),
        (
            "TLS ClientHello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "binary",
            b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(),
            &[400],
        ),
        // The port also speaks h2c, so the preface itself is welcome; what
        // follows it must be HTTP/2 frames: a frame longer than the 16 KiB
        // maximum, or a SETTINGS frame on a stream, ends the connection (a
        // GOAWAY, no HTTP/1 answer).
        (
            "HTTP/2 preface, then an oversized frame",
            [
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
                b"\xff\xff\xff\x04\x00\x00\x00\x00\x00",
            ]
            .concat(),
            &[],
        ),
        (
            "HTTP/2 preface, then SETTINGS on stream 1",
            [
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
                b"\x00\x00\x00\x04\x00\x00\x00\x00\x01",
            ]
            .concat(),
            &[],
        ),
    ];
    check(&mut b, &cases);
}

#[test]
fn invalid_headers_and_injections_get_400() {
    let mut b = Backend::start();
    let with = |h: &[u8]| {
        let mut r = b"GET /host HTTP/1.1\r\nHost: x\r\n".to_vec();
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("space in name", with(b"Bad Header: x"), &[400]),
        ("space before colon", with(b"X-A : x"), &[400]),
        ("@ in name", with(b"X@Y: 1"), &[400]),
        ("non-ASCII name", with(b"X\xffY: 1"), &[400]),
        ("empty name", with(b": value"), &[400]),
        ("no colon", with(b"NoColonHere"), &[400]),
        ("NUL in value", with(b"X-A: a\x00b"), &[400]),
        ("bare CR in value", with(b"X-A: a\rb"), &[400]),
        ("obs-fold", with(b"X-A: a\r\n folded"), &[400]),
        (
            "CR injecting a header",
            with(b"X-A: a\rX-Injected: 1"),
            &[400],
        ),
        (
            "CRLF in the request target",
            req("GET /a\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            &[400],
        ),
    ];
    check(&mut b, &cases);
}

#[test]
fn smuggling_shapes_get_400_or_one_response_then_close() {
    let mut b = Backend::start();
    let smuggle = "GET /host HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = |headers: &str, body: &str| {
        req(&format!(
            "POST /host HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}{smuggle}"
        ))
    };
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "conflicting Content-Length",
            post("Content-Length: 5\r\nContent-Length: 50\r\n", "hello"),
            &[400],
        ),
        (
            "Content-Length list",
            post("Content-Length: 5, 50\r\n", "hello"),
            &[400],
        ),
        (
            "negative Content-Length",
            post("Content-Length: -1\r\n", "hello"),
            &[400],
        ),
        (
            "chunked, identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            &[400],
        ),
        (
            "xchunked",
            post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "space before colon",
            post(
                "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
                "hello",
            ),
            &[400],
        ),
        // Both framings: chunked wins, one response (POST /host is 405 here),
        // then the connection is closed, so the trailing GET is never served.
        (
            "CL.TE",
            post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            &[405],
        ),
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            &[405],
        ),
    ];
    check(&mut b, &cases);
}

#[test]
fn header_bombs_get_431() {
    let mut b = Backend::start();
    let with_headers = |n: usize, size: usize| {
        let mut r = String::from("GET /host HTTP/1.1\r\nHost: x\r\n");
        for i in 0..n {
            r.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(size)));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    // hyper's default limit is 100 header fields.
    let cases: Vec<(&str, Vec<u8>, &[u16])> =
        vec![("150 header fields", with_headers(150, 1), &[431])];
    check(&mut b, &cases);

    // A flood larger than hyper's read buffer (~400 KiB): 431, or a reset
    // under the writer; the process survives either way.
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let flood = with_headers(2000, 500);
    let writer = {
        let mut s = s.try_clone().unwrap();
        thread::spawn(move || {
            let _ = s.write_all(&flood);
        })
    };
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    b.assert_healthy("a 1 MB header flood");
}

#[test]
fn grpc_message_announcing_4_gib_is_refused() {
    use http_body_util::BodyExt;
    let mut b = Backend::start();
    let addr = b.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, grpc_status) = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        // A frame header announcing 0xffff_ffff bytes, then a few of them.
        let body = bytes::Bytes::from_static(b"\x00\xff\xff\xff\xffabc");
        let req = http::Request::post(format!("http://{addr}/roundhouse.v1.Hosts/Get"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(body))
            .unwrap();
        let resp = tokio::time::timeout(IO_TIMEOUT, send.send_request(req))
            .await
            .expect("an answer in time")
            .unwrap();
        let status = resp.status().as_u16();
        let head = resp.headers().get("grpc-status").cloned();
        let collected = tokio::time::timeout(IO_TIMEOUT, resp.into_body().collect())
            .await
            .expect("the answer ends in time")
            .unwrap();
        let grpc_status = head
            .or_else(|| {
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status").cloned())
            })
            .map(|v| v.to_str().unwrap().to_owned());
        (status, grpc_status)
    });
    assert_eq!(status, 200, "gRPC errors travel as HTTP 200");
    // OUT_OF_RANGE: tonic's answer to a message above its 4 MiB decoding
    // limit, given from the frame header alone.
    // (The request body ends after these 8 bytes, so nothing can wait for
    // the 4 GiB: the two IO_TIMEOUT guards above are hang guards only, and
    // OUT_OF_RANGE is what shows the header alone was judged.)
    assert_eq!(grpc_status.as_deref(), Some("11"));
    b.assert_healthy("a gRPC frame announcing 4 GiB");
}

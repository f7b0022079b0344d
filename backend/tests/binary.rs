//! Starts the real `backend` binary, calls every endpoint over HTTP/1.1, over
//! HTTP/2 with prior knowledge (h2c) and over gRPC (a tonic client), then
//! sends SIGTERM and checks the readiness flip, the drain (for both
//! protocols) and the clean exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a new connection; returns (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

struct Backend {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Backend {
    fn start(name: &str, drain: u64) -> Backend {
        let mut child = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--log-format",
                "json",
            ])
            .args(["--drain-seconds", &drain.to_string()])
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
        let mut b = Backend {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
        };
        let line = b.wait_for("\"listening\"");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        b.addr = v["addr"].as_str().unwrap().parse().unwrap();
        b
    }

    /// Waits for a log line containing `needle` (an event, not a sleep).
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle}: {e}"),
            }
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_every_endpoint_over_http() {
    let b = Backend::start("replica-7", 0);
    assert_eq!(
        http(b.addr, "GET", "/host", None).unwrap(),
        (200, "replica-7\n".into())
    );
    let (s, body) = http(b.addr, "GET", "/host", Some("application/json")).unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["host"],
        "replica-7"
    );

    let (s, date) = http(b.addr, "GET", "/date", None).unwrap();
    assert_eq!(s, 200);
    let t = chrono::DateTime::parse_from_rfc3339(date.trim()).unwrap();
    let skew = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_milliseconds()
        .abs();
    assert!(skew < 1000, "date {date} is {skew} ms off");
    assert!(date.trim().ends_with('Z'));

    assert_eq!(http(b.addr, "GET", "/healthz", None).unwrap().0, 200);
    assert_eq!(http(b.addr, "GET", "/readyz", None).unwrap().0, 200);
    assert_eq!(
        http(b.addr, "GET", "/missing", None).unwrap(),
        (404, "not found\n".into())
    );
    assert_eq!(http(b.addr, "DELETE", "/date", None).unwrap().0, 405);
}

#[test]
fn sigterm_flips_readiness_drains_then_exits_zero() {
    let mut b = Backend::start("drainer", 2);
    assert_eq!(http(b.addr, "GET", "/readyz", None).unwrap().0, 200);
    let sent = Instant::now();
    b.sigterm();
    b.wait_for("draining");
    // During the drain: not ready, but still serving.
    assert_eq!(
        http(b.addr, "GET", "/readyz", None).unwrap(),
        (503, "draining\n".into())
    );
    assert_eq!(
        http(b.addr, "GET", "/host", None).unwrap(),
        (200, "drainer\n".into())
    );
    let status = b.child.wait().unwrap();
    let took = sent.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_secs(2),
        "exited after {took:?}, before the drain period"
    );
    // A hang guard with the margin measured: the slowest of 6 runs under
    // load (load average 12-20 plus 2 busy loops on the 2 cores,
    // 2026-12-07) took 2.17 s from SIGTERM to exit.
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    // Listener closed after the drain.
    assert!(TcpStream::connect(b.addr).is_err());
}

#[test]
fn bad_flags_exit_non_zero_with_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'not-an-address' for '--listen"),
        "{err}"
    );

    // An address that cannot be bound (already taken).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["--listen", &addr, "--name", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("error: cannot listen on {addr}")),
        "{err}"
    );
}

// --- HTTP/2 (h2c) and gRPC on the same port -----------------------------------

use backend::grpc::{GetRequest, GetResponse, HostsClient};
use tonic::transport::{Channel, Endpoint};

/// A runtime whose worker keeps driving the client connections while the
/// test thread blocks (waiting for the child, reading its log).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("gRPC channel connects over h2c")
}

async fn grpc_host(ch: &Channel) -> Result<String, tonic::Status> {
    let resp = HostsClient::new(ch.clone()).get(GetRequest {}).await?;
    Ok(resp.into_inner().host)
}

/// GET `path` over a new HTTP/2 prior-knowledge connection.
async fn h2c_get(addr: SocketAddr, path: &str) -> (http::StatusCode, http::Version, String) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8(body.to_vec()).unwrap())
}

#[test]
fn one_port_serves_http1_h2c_and_grpc() {
    let b = Backend::start("replica-g", 0);
    let rt = runtime();
    rt.block_on(async {
        // Three calls on one channel (one HTTP/2 connection).
        let ch = channel(b.addr).await;
        for _ in 0..3 {
            assert_eq!(grpc_host(&ch).await.unwrap(), "replica-g");
        }
        // Another method of the service: UNIMPLEMENTED, as gRPC expects.
        let mut raw = tonic::client::Grpc::new(ch.clone());
        raw.ready().await.unwrap();
        let err = raw
            .unary::<GetRequest, GetResponse, _>(
                tonic::Request::new(GetRequest {}),
                http::uri::PathAndQuery::from_static("/roundhouse.v1.Hosts/Nope"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

        // The HTTP routes over h2c too.
        let (status, version, body) = h2c_get(b.addr, "/host").await;
        assert_eq!(
            (status.as_u16(), version, body.as_str()),
            (200, http::Version::HTTP_2, "replica-g\n")
        );
        assert_eq!(h2c_get(b.addr, "/readyz").await.0, 200);
        assert_eq!(h2c_get(b.addr, "/missing").await.0, 404);
    });
    // HTTP/1.1 on the same port, unchanged.
    assert_eq!(
        http(b.addr, "GET", "/host", None).unwrap(),
        (200, "replica-g\n".into())
    );
}

#[test]
fn sigterm_drain_keeps_serving_grpc_then_exits_zero() {
    let mut b = Backend::start("grpc-drainer", 2);
    let rt = runtime();
    let ch = rt.block_on(async {
        let ch = channel(b.addr).await;
        assert_eq!(grpc_host(&ch).await.unwrap(), "grpc-drainer");
        ch
    });
    let sent = Instant::now();
    b.sigterm();
    b.wait_for("draining");
    rt.block_on(async {
        // During the drain: the open channel and a new one are both served.
        assert_eq!(grpc_host(&ch).await.unwrap(), "grpc-drainer");
        let fresh = channel(b.addr).await;
        assert_eq!(grpc_host(&fresh).await.unwrap(), "grpc-drainer");
        assert_eq!(h2c_get(b.addr, "/readyz").await.0, 503);
    });
    // The open HTTP/2 connections do not hold the exit back: GOAWAY, the
    // client answers it, the connections close at once.
    b.wait_for("shut down cleanly");
    let status = b.child.wait().unwrap();
    let took = sent.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_secs(2), "exited after {took:?}");
    // Tells "closed at once" from "waited for the finish timeout" (7 s):
    // the slowest of 6 runs under load (load average 12-20 plus 2 busy
    // loops on the 2 cores, 2026-12-07) took 2.08 s.
    assert!(
        took < Duration::from_secs(2) + backend::FINISH_TIMEOUT,
        "shutdown took {took:?}: it waited for the finish timeout"
    );
    rt.block_on(async {
        assert!(grpc_host(&ch).await.is_err(), "served after exit");
    });
}

#[test]
fn an_http2_client_that_never_answers_cannot_hold_the_shutdown() {
    let mut b = Backend::start("stuck", 0);
    // Preface and SETTINGS, then silence: never reads, never acks the
    // GOAWAY's PING.
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    // The connection is open and served (the server's SETTINGS arrive).
    let mut first = [0u8; 9];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut first).unwrap();
    assert_eq!(first[3], 0x04, "a SETTINGS frame first: {first:?}");
    let sent = Instant::now();
    b.sigterm();
    b.wait_for("finish timeout");
    let status = b.child.wait().unwrap();
    let took = sent.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(took >= backend::FINISH_TIMEOUT, "exited after {took:?}");
    // A hang guard with the margin measured: the slowest of 6 runs under
    // load (load average 12-20 plus 2 busy loops on the 2 cores,
    // 2026-12-07) took 5.11 s, i.e. 0.11 s past the finish timeout.
    assert!(
        took < backend::FINISH_TIMEOUT + Duration::from_secs(4),
        "shutdown took {took:?}"
    );
    drop(s);
}

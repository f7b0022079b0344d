//! The access log end to end: the real `lb` binary (and, for the 503, the
//! LB in process) over real sockets, its lines read back from the file.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lb::proxy::ProxyConfig;
use lb::proxy::access_log::{Format, Target};
use lb::selection::Policy;

/// The `lb serve` process; killed if a test fails before stopping it.
struct Lb {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lb {
    /// Sends SIGTERM and waits (bounded) for the process to exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "lb exited with {s}");
                return;
            }
            assert!(Instant::now() < deadline, "lb did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rh-access-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Starts `lb serve` in front of `backend` with `extra` flags, and waits
/// until it is ready.
fn start_lb(backend: SocketAddr, extra: &[&str]) -> Lb {
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--backend", &backend.to_string(), "--workers", "2"])
        .args(["--drain-delay", "0s"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lb = Lb {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = Instant::now() + HANG;
    while !raw_get(admin, "/readyz", "").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "lb not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    lb
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`);
/// the whole response, or "" when the connection failed.
fn raw_get(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(HANG)).unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nhost: test\r\n{extra_headers}connection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A tiny HTTP/1.1 upstream that records every request head and answers
/// `200 hello` (keep-alive).
struct Upstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            seen.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                            if conn.write_all(resp).is_err() {
                                return;
                            }
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Upstream { addr, heads }
    }

    /// The `x-request-id` values of the recorded heads, in order.
    fn request_ids(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|h| {
                let ids: Vec<&str> = h
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                    .map(|(_, v)| v.trim())
                    .collect();
                assert_eq!(ids.len(), 1, "one x-request-id in {h:?}");
                ids[0].to_owned()
            })
            .collect()
    }
}

/// The file's lines once it has at least `n` (polled, bounded by HANG).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + HANG;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} access log lines after {HANG:?}, wanted {n}: {text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_proxied_request_is_one_json_line_with_every_field() {
    let up = Upstream::start();
    let path = log_path("json");
    let lb = start_lb(up.addr, &["--access-log", path.to_str().unwrap()]);
    let resp = raw_get(lb.addr, "/a/b?c=1", "");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello"),
        "{resp}"
    );
    let all = lines(&path, 1);
    assert_eq!(all.len(), 1, "{all:?}");
    let v = json(&all[0]);
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(
        v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a/b?c=1");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 5);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0, "{v}");
    assert_eq!(v["upstream_addr"], up.addr.to_string());
    assert_eq!(v["upstream_status"], 200);
    assert!(v["upstream_duration_ms"].as_f64().unwrap() >= 0.0, "{v}");
    assert_eq!(v["retries"], 0);
    assert_eq!(v["route"], "default");
    let id = v["request_id"].as_str().unwrap();
    assert!(!id.is_empty(), "{v}");
    assert_eq!(
        up.request_ids(),
        vec![id.to_owned()],
        "generated id sent upstream"
    );
}

#[test]
fn a_valid_client_request_id_passes_through_and_an_invalid_one_is_replaced() {
    let up = Upstream::start();
    let path = log_path("ids");
    let lb = start_lb(up.addr, &["--access-log", path.to_str().unwrap()]);
    let given = "req-42_abc";
    assert!(
        raw_get(lb.addr, "/1", &format!("x-request-id: {given}\r\n")).starts_with("HTTP/1.1 200")
    );
    // A space is not allowed: replaced by a generated id.
    assert!(raw_get(lb.addr, "/2", "x-request-id: not valid\r\n").starts_with("HTTP/1.1 200"));
    // Each worker hands its own batches to the writer, so lines of two
    // connections may be in either order in the file: sorted by path.
    let mut all: Vec<(String, String)> = lines(&path, 2)
        .iter()
        .map(|l| {
            let v = json(l);
            let id = v["request_id"].as_str().unwrap().to_owned();
            (v["path"].as_str().unwrap().to_owned(), id)
        })
        .collect();
    all.sort();
    let ids: Vec<String> = all.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids[0], given);
    assert_ne!(ids[1], "not valid");
    assert!(!ids[1].is_empty());
    assert_eq!(
        up.request_ids(),
        ids,
        "the logged ids are the forwarded ones (the requests were sequential)"
    );
}

#[test]
fn the_combined_format_has_the_combined_log_shape() {
    let up = Upstream::start();
    let path = log_path("combined");
    let lb = start_lb(
        up.addr,
        &[
            "--access-log",
            path.to_str().unwrap(),
            "--access-log-format",
            "combined",
        ],
    );
    assert!(raw_get(lb.addr, "/p?q=1", "x-request-id: rid-1\r\n").starts_with("HTTP/1.1 200"));
    let line = &lines(&path, 1)[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /p?q=1 HTTP/1.1\" 200 5 \"-\" \"-\" rt="),
        "{line}"
    );
    assert!(
        line.contains(&format!(" ua={} us=200 ut=", up.addr)),
        "{line}"
    );
    assert!(
        line.ends_with(" retries=0 route=\"default\" rid=\"rid-1\""),
        "{line}"
    );
}

#[tokio::test]
async fn an_http2_request_is_logged_as_http2() {
    let up = Upstream::start();
    let path = log_path("h2");
    let lb = start_lb(up.addr, &["--access-log", path.to_str().unwrap()]);
    let mut tx = within(HANG, h2c_client(lb.addr)).await;
    let (status, _, body, _) = within(HANG, h2_send(&mut tx, h2_get("/over/h2"))).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "hello"));
    let path2 = path.clone();
    let all = tokio::task::spawn_blocking(move || lines(&path2, 1))
        .await
        .unwrap();
    let v = json(&all[0]);
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["path"], "/over/h2");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 5, "Content-Length of the response");
    assert_eq!(v["upstream_status"], 200);
    let id = v["request_id"].as_str().unwrap().to_owned();
    assert_eq!(up.request_ids(), vec![id]);
}

#[test]
fn lines_are_flushed_on_sigterm() {
    let up = Upstream::start();
    let path = log_path("sigterm");
    let mut lb = start_lb(up.addr, &["--access-log", path.to_str().unwrap()]);
    for i in 0..20 {
        assert!(raw_get(lb.addr, &format!("/{i}"), "").starts_with("HTTP/1.1 200"));
    }
    lb.terminate();
    // The process has exited: everything must be in the file now.
    let text = std::fs::read_to_string(&path).unwrap();
    let paths: Vec<String> = text
        .lines()
        .map(|l| json(l)["path"].as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = (0..20).map(|i| format!("/{i}")).collect();
    let mut got = paths.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{text}");
}

#[tokio::test]
async fn a_local_503_is_logged_without_an_upstream() {
    let path = log_path("503");
    let lb = TestLb::start_with(
        routing(vec![]),
        ProxyConfig {
            access_log: Some(Target::Path(path.clone())),
            access_log_format: Format::Json,
            ..test_proxy_config()
        },
        Policy::default(),
    );
    let (status, _) = within(HANG, get_once(lb.addr, "/none")).await.unwrap();
    assert_eq!(status.as_u16(), 503);
    lb.stop().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let v = json(text.lines().next().expect("one line"));
    assert_eq!(v["status"], 503);
    assert_eq!(v["path"], "/none");
    assert_eq!(v["route"], "default");
    assert!(
        v["upstream_addr"].is_null() && v["upstream_status"].is_null(),
        "{v}"
    );
    assert!(v["bytes"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn an_access_log_file_that_cannot_be_opened_is_a_configuration_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["serve", "--backend", "127.0.0.1:1"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--access-log", "/nonexistent-roundhouse-dir/access.log"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("cannot open --access-log /nonexistent-roundhouse-dir/access.log"),
        "{stderr}"
    );
}

//! Reloading `--config FILE` without a restart, with the real `lb` binary
//! over real sockets: by SIGHUP and by a file change (also a ConfigMap-style
//! symlink swap), an invalid file keeping the old configuration, no failed
//! request across reloads under load, and a streaming response that
//! outlives a reload removing its backend.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use lb::admin::EndpointsDoc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Lb {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rh-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn yaml(backends: &[&TestBackend]) -> String {
    let mut s = String::from("backends:\n");
    for b in backends {
        s.push_str(&format!("  - {}\n", b.addr));
    }
    s
}

/// Writes `text` to `path` by rename, as an editor or a deploy tool does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Lb {
    /// `lb serve --config CONFIG` (file polled every `poll`), logging JSON
    /// lines to a file next to the config.
    fn start(config: &Path, poll: &str, extra: &[&str]) -> Lb {
        let (proxy, admin) = (free_addr(), free_addr());
        let log = config.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["serve", "--workers", "1", "--log-format", "json"])
            .args(["--listen", &proxy.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--config-poll", poll])
            .args(["--config", config.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Lb {
            child,
            proxy,
            admin,
            log,
        }
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        get_once(self.admin, "/metrics")
            .await
            .map(|(_, m)| m)
            .unwrap_or_default()
    }

    async fn endpoints(&self) -> Option<EndpointsDoc> {
        let (_, body) = get_once(self.admin, "/endpoints").await.ok()?;
        serde_json::from_str(&body).ok()
    }

    /// Polls until `cond` holds for the routing table.
    async fn await_table(&self, what: &str, cond: impl Fn(&EndpointsDoc) -> bool) -> EndpointsDoc {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(doc) = self.endpoints().await
                && cond(&doc)
            {
                return doc;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the table holds exactly `backends`.
    async fn await_backends(&self, backends: &[&TestBackend]) -> EndpointsDoc {
        let mut want: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        want.sort();
        self.await_table(&format!("endpoints {want:?}"), |doc| {
            let mut got: Vec<String> = doc.upstreams[0]
                .endpoints
                .iter()
                .map(|e| e.address.clone())
                .collect();
            got.sort();
            got == want
        })
        .await
    }

    /// Polls /metrics until it contains `line`.
    async fn await_metric(&self, line: &str) {
        let deadline = Instant::now() + HANG;
        loop {
            let m = self.metrics().await;
            if m.lines().any(|l| l == line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for `{line}` in:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the log until it has a line containing every one of `parts`.
    async fn await_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(l) = self
                .log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a log line with {parts:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `n` requests for `/host`: answers by backend name (all must be 200).
    async fn split(&self, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        let mut conn = Conn::open(self.proxy).await.unwrap();
        for _ in 0..n {
            let (status, body) = conn.get("/host").await.unwrap();
            assert_eq!(status, 200, "{body}");
            *counts.entry(body.trim().to_owned()).or_default() += 1;
        }
        counts
    }
}

const SUCCESS_1: &str = "roundhouse_config_reloads_total{result=\"success\"} 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_backend_and_the_split_is_exact_over_the_new_set() {
    let (b1, b2, b3) = (
        TestBackend::start("b1"),
        TestBackend::start("b2"),
        TestBackend::start("b3"),
    );
    let d = dir("hup");
    let config = d.join("lb.yaml");
    std::fs::write(&config, yaml(&[&b1, &b2])).unwrap();
    // Polling off in practice: only the signal reloads.
    let lb = Lb::start(&config, "1h", &[]);
    lb.await_backends(&[&b1, &b2]).await;
    assert_eq!(
        lb.split(10).await,
        HashMap::from([("b1".into(), 5), ("b2".into(), 5)])
    );
    std::fs::write(&config, yaml(&[&b1, &b2, &b3])).unwrap();
    lb.hup();
    lb.await_metric(SUCCESS_1).await;
    lb.await_metric("roundhouse_config_last_reload_successful 1")
        .await;
    let doc = lb.await_backends(&[&b1, &b2, &b3]).await;
    // The endpoints that stay keep their state: their request counters
    // were not reset by the reload.
    for e in &doc.upstreams[0].endpoints {
        let want = if e.address == b3.addr.to_string() {
            0
        } else {
            5
        };
        assert_eq!(e.requests, want, "{e:?}");
    }
    let split = lb.split(300).await;
    assert_eq!(
        split,
        HashMap::from([("b1".into(), 100), ("b2".into(), 100), ("b3".into(), 100)])
    );
    assert!(
        !lb.metrics()
            .await
            .contains("roundhouse_config_last_reload_success_timestamp_seconds 0\n")
    );
    lb.await_log(&["configuration reloaded", "SIGHUP"]).await;
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_change_is_applied_without_a_signal() {
    let (b1, b2) = (TestBackend::start("b1"), TestBackend::start("b2"));
    let d = dir("poll");
    let config = d.join("lb.yaml");
    std::fs::write(&config, yaml(&[&b1])).unwrap();
    let lb = Lb::start(&config, "100ms", &[]);
    lb.await_backends(&[&b1]).await;
    // Rewritten in place (not by rename), weights and protocol included.
    std::fs::write(
        &config,
        format!(
            "backends:\n  - address: {}\n    weight: 2\n  - {}\ndnsRefresh: 1s\nprotocol: http1\n",
            b1.addr, b2.addr
        ),
    )
    .unwrap();
    lb.await_metric(SUCCESS_1).await;
    lb.await_backends(&[&b1, &b2]).await;
    assert_eq!(
        lb.split(30).await,
        HashMap::from([("b1".into(), 20), ("b2".into(), 10)])
    );
    lb.await_log(&["configuration reloaded", "file change"])
        .await;
    // Replaced by rename (a new inode), as editors and deploy tools do.
    replace(&config, &yaml(&[&b2]));
    lb.await_metric("roundhouse_config_reloads_total{result=\"success\"} 2")
        .await;
    lb.await_backends(&[&b2]).await;
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_logged_and_the_old_configuration_keeps_serving() {
    let (b1, b2) = (TestBackend::start("b1"), TestBackend::start("b2"));
    let d = dir("invalid");
    let config = d.join("lb.yaml");
    std::fs::write(&config, yaml(&[&b1])).unwrap();
    let lb = Lb::start(&config, "1h", &[]);
    lb.await_backends(&[&b1]).await;
    let failures = |n: u32| format!("roundhouse_config_reloads_total{{result=\"failure\"}} {n}");

    // Bad YAML: the error names the file, line and column.
    std::fs::write(&config, format!("backends:\n  - {}\n  - [oops\n", b2.addr)).unwrap();
    lb.hup();
    lb.await_metric(&failures(1)).await;
    lb.await_metric("roundhouse_config_last_reload_successful 0")
        .await;
    let line = lb
        .await_log(&["ERROR", "configuration reload failed"])
        .await;
    assert!(
        line.contains(config.to_str().unwrap()) && line.contains("line 3 column"),
        "{line}"
    );
    assert_eq!(lb.split(4).await, HashMap::from([("b1".into(), 4)]));

    // A bad backend entry.
    std::fs::write(&config, format!("backends:\n  - {}\n  - nohost\n", b2.addr)).unwrap();
    lb.hup();
    lb.await_metric(&failures(2)).await;
    lb.await_log(&["configuration reload failed", "has no port"])
        .await;

    // An unreadable (here: missing) file.
    std::fs::remove_file(&config).unwrap();
    lb.hup();
    lb.await_metric(&failures(3)).await;
    lb.await_log(&["configuration reload failed", "cannot read config file"])
        .await;
    assert_eq!(lb.split(4).await, HashMap::from([("b1".into(), 4)]));
    lb.await_backends(&[&b1]).await;

    // Fixed: applied, and the gauge recovers.
    std::fs::write(&config, yaml(&[&b1, &b2])).unwrap();
    lb.hup();
    lb.await_metric(SUCCESS_1).await;
    lb.await_metric("roundhouse_config_last_reload_successful 1")
        .await;
    lb.await_backends(&[&b1, &b2]).await;
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_followed() {
    let (b1, b2) = (TestBackend::start("b1"), TestBackend::start("b2"));
    let d = dir("configmap");
    // What the kubelet lays out: lb.yaml -> ..data/lb.yaml, ..data -> ..v1.
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/lb.yaml"), yaml(&[&b1])).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/lb.yaml", d.join("lb.yaml")).unwrap();
    let lb = Lb::start(&d.join("lb.yaml"), "100ms", &[]);
    lb.await_backends(&[&b1]).await;
    // An update: a new directory, and `..data` replaced by rename.
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/lb.yaml"), yaml(&[&b2])).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    lb.await_metric(SUCCESS_1).await;
    lb.await_backends(&[&b2]).await;
    assert_eq!(lb.split(4).await, HashMap::from([("b2".into(), 4)]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_reloads_under_load() {
    let (b1, b2, b3) = (
        TestBackend::start("b1"),
        TestBackend::start("b2"),
        TestBackend::start("b3"),
    );
    let d = dir("load");
    let config = d.join("lb.yaml");
    std::fs::write(&config, yaml(&[&b1, &b2])).unwrap();
    let lb = Arc::new(Lb::start(&config, "1h", &[]));
    lb.await_backends(&[&b1, &b2]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (lb, stop, ok, failed) = (lb.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(lb.proxy).await.unwrap();
                // Bounded: stops when told, or at the deadline.
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match conn.get("/host").await {
                        Ok((s, _)) if s == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for i in 1..=6 {
        let set: &[&TestBackend] = if i % 2 == 1 {
            &[&b1, &b2, &b3]
        } else {
            &[&b2, &b3]
        };
        std::fs::write(&config, yaml(set)).unwrap();
        lb.hup();
        lb.await_metric(&format!(
            "roundhouse_config_reloads_total{{result=\"success\"}} {i}"
        ))
        .await;
        lb.await_backends(set).await;
        // Some traffic over each new set.
        let before = ok.load(Ordering::Relaxed);
        wait_until("requests after a reload", || {
            ok.load(Ordering::Relaxed) >= before + 200 || Instant::now() >= deadline
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        within(HANG, c).await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests across 6 reloads, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok >= 300, "{ok}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_outlives_a_reload_that_removes_its_backend() {
    // A backend that sends the head and a first chunk, then waits for the
    // test before sending the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
            .await
            .unwrap();
        let _ = released.await;
        s.write_all(b"5\r\nlast\n\r\n0\r\n\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let b1 = TestBackend::start("b1");
    let d = dir("stream");
    let config = d.join("lb.yaml");
    std::fs::write(&config, format!("backends:\n  - {slow_addr}\n")).unwrap();
    let lb = Lb::start(&config, "1h", &[]);
    lb.await_table("the slow backend", |doc| {
        doc.upstreams[0].endpoints.len() == 1
    })
    .await;

    let mut client = within(HANG, tokio::net::TcpStream::connect(lb.proxy))
        .await
        .unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !got.windows(6).any(|w| w == b"first\n") {
        let n = within(HANG, client.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // The reload removes the backend that is still streaming.
    std::fs::write(&config, yaml(&[&b1])).unwrap();
    lb.hup();
    lb.await_metric(SUCCESS_1).await;
    lb.await_backends(&[&b1]).await;
    release.send(()).unwrap();
    while !got.ends_with(b"0\r\n\r\n") {
        let n = within(HANG, client.read(&mut buf)).await.unwrap();
        assert!(n > 0, "cut off: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("first\n") && text.contains("last\n"),
        "{text}"
    );
    assert_eq!(lb.split(2).await, HashMap::from([("b1".into(), 2)]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_list_change_needs_a_restart_and_the_rest_applies() {
    let (b1, b2) = (TestBackend::start("b1"), TestBackend::start("b2"));
    let d = dir("tls");
    let (pair_a, der_a) = cert("a", &["a.example"]);
    let (pair_b, der_b) = cert("b", &["b.example"]);
    for (name, pair) in [("a", &pair_a), ("b", &pair_b)] {
        std::fs::write(d.join(format!("{name}.crt")), &pair.chain_pem).unwrap();
        std::fs::write(d.join(format!("{name}.key")), &pair.key_pem).unwrap();
    }
    let tls = |name: &str| {
        format!(
            "tls:\n  - cert: {}\n    key: {}\n",
            d.join(format!("{name}.crt")).display(),
            d.join(format!("{name}.key")).display()
        )
    };
    let config = d.join("lb.yaml");
    std::fs::write(&config, format!("{}{}", yaml(&[&b1]), tls("a"))).unwrap();
    let tls_addr = free_addr();
    let lb = Lb::start(&config, "1h", &["--tls-listen", &tls_addr.to_string()]);
    lb.await_backends(&[&b1]).await;
    std::fs::write(&config, format!("{}{}", yaml(&[&b1, &b2]), tls("b"))).unwrap();
    lb.hup();
    lb.await_metric(SUCCESS_1).await;
    lb.await_log(&["WARN", "needs a restart", "tls"]).await;
    lb.await_backends(&[&b1, &b2]).await;
    // Until the restart, the old list is what is served: a.example's
    // certificate answers, and b.example's new one is not there (a client
    // trusting only b's certificate gets a's, or none, and refuses it).
    let only_a = tls_client(std::slice::from_ref(&der_a), &[b"http/1.1"]);
    let mut s = within(HANG, tls_connect(&only_a, tls_addr, "a.example"))
        .await
        .expect("the old certificate is still served after the reload");
    s.write_all(b"GET /host HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within(HANG, s.read_to_end(&mut out)).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let only_b = tls_client(std::slice::from_ref(&der_b), &[b"http/1.1"]);
    assert!(
        within(HANG, tls_connect(&only_b, tls_addr, "b.example"))
            .await
            .is_err(),
        "the new certificate is served before a restart"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_is_logged_and_harmless() {
    let b1 = TestBackend::start("b1");
    let d = dir("noconfig");
    let (proxy, admin) = (free_addr(), free_addr());
    let log = d.join("lb.log");
    let mut lb = Lb {
        child: Command::new(env!("CARGO_BIN_EXE_lb"))
            .args(["serve", "--workers", "1", "--log-format", "json"])
            .args(["--listen", &proxy.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--backend", &b1.addr.to_string()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        proxy,
        admin,
        log,
    };
    lb.await_backends(&[&b1]).await;
    lb.hup();
    lb.await_log(&["nothing to reload"]).await;
    assert!(
        lb.child.try_wait().unwrap().is_none(),
        "SIGHUP killed the LB"
    );
    assert_eq!(lb.split(2).await, HashMap::from([("b1".into(), 2)]));
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_stays_ejected_across_a_reload() {
    let (b1, b2) = (TestBackend::start("b1"), TestBackend::start("b2"));
    // Nothing listens there: every connect is refused.
    let dead = free_addr();
    let d = dir("eject");
    let config = d.join("lb.yaml");
    std::fs::write(&config, format!("{}  - {dead}\n", yaml(&[&b1]))).unwrap();
    let lb = Lb::start(
        &config,
        "1h",
        &["--eject-after", "1", "--ejection-time", "1m"],
    );
    let ejected = |doc: &EndpointsDoc| {
        doc.upstreams[0]
            .endpoints
            .iter()
            .any(|e| e.address == dead.to_string() && e.state == "ejected")
    };
    lb.await_table("both endpoints", |doc| {
        doc.upstreams[0].endpoints.len() == 2
    })
    .await;
    // The refused connects are retried on b1: the client sees only b1.
    assert_eq!(lb.split(4).await, HashMap::from([("b1".into(), 4)]));
    lb.await_table("the dead endpoint ejected", ejected).await;
    std::fs::write(&config, format!("{}  - {dead}\n", yaml(&[&b1, &b2]))).unwrap();
    lb.hup();
    lb.await_metric(SUCCESS_1).await;
    let doc = lb
        .await_table("three endpoints", |doc| {
            doc.upstreams[0].endpoints.len() == 3
        })
        .await;
    assert!(ejected(&doc), "the reload re-admitted it: {doc:?}");
    // Every request answered by the live endpoints, the new one included
    // (the ejected one's turns go to its neighbour, so not exactly 5/5).
    let split = lb.split(10).await;
    assert_eq!(split.values().sum::<usize>(), 10);
    assert!(split["b1"] > 0 && split["b2"] > 0, "{split:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

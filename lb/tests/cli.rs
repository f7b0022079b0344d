//! The `lb` binary's TLS configuration as a user meets it: certificate
//! files served and followed for changes, and clear configuration errors
//! (exit code 78) for what cannot work.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Lb(Child);

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rh-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_pair(dir: &std::path::Path, pair: &lb::discovery::CertPair) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    // Written to a temporary name and renamed in, as a Secret volume or a
    // certificate manager does: a reader never sees half a file.
    std::fs::write(dir.join("tls.crt.new"), &pair.chain_pem).unwrap();
    std::fs::write(dir.join("tls.key.new"), &pair.key_pem).unwrap();
    std::fs::rename(dir.join("tls.key.new"), &k).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), &c).unwrap();
    (c, k)
}

/// Runs `lb serve` with `args`; returns its exit code and stderr when it
/// exits within HANG.
fn exits(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unusable_tls_configuration_is_a_configuration_error() {
    let d = dir("bad");
    let (good, _) = cert("a", &["a.example"]);
    let (c, k) = write_pair(&d, &good);
    std::fs::write(d.join("other.key"), cert("b", &["b.example"]).0.key_pem).unwrap();
    let common = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        exits(&args)
    };
    let c = c.to_str().unwrap();
    let k = k.to_str().unwrap();
    let other = d.join("other.key");
    for (extra, want) in [
        (vec!["--tls-cert", c], "come in pairs"),
        (
            vec!["--tls-cert", c, "--tls-key", "/nonexistent.key"],
            "/nonexistent.key",
        ),
        (
            vec!["--tls-cert", c, "--tls-key", other.to_str().unwrap()],
            "tls.crt",
        ),
        (vec!["--tls-cert", k, "--tls-key", k], "no certificate"),
        (vec!["--https-redirect"], "--https-redirect needs TLS"),
    ] {
        let (code, stderr) = run(&extra);
        assert_eq!(code, 78, "{extra:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "{extra:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_without_a_restart() {
    let backend = TestBackend::start("b1");
    let d = dir("reload");
    let (old, old_der) = cert("old", &["a.example"]);
    let (new, new_der) = cert("new", &["a.example"]);
    let (c, k) = write_pair(&d, &old);
    let (plain, tls, admin) = (free_port(), free_port(), free_port());
    let _lb = Lb(Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["serve", "--workers", "1"])
        .args(["--listen", &format!("127.0.0.1:{plain}")])
        .args(["--tls-listen", &format!("127.0.0.1:{tls}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--backend", &backend.addr.to_string()])
        .args([
            "--tls-cert",
            c.to_str().unwrap(),
            "--tls-key",
            k.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let tls_addr: std::net::SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    let client = tls_client_with(&[old_der.clone(), new_der.clone()], &[b"http/1.1"], false);
    let leaf = |client: tokio_rustls::TlsConnector| async move {
        let s = tls_connect(&client, tls_addr, "a.example").await.ok()?;
        Some(s.get_ref().1.peer_certificates()?[0].to_vec())
    };
    let deadline = Instant::now() + HANG;
    while leaf(client.clone()).await.as_ref() != Some(&old_der) {
        assert!(
            Instant::now() < deadline,
            "the LB never served the first certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A renewal: the new certificate is served within a few polls, and
    // every handshake meanwhile succeeds with one of the two.
    write_pair(&d, &new);
    let deadline = Instant::now() + HANG;
    loop {
        let got = leaf(client.clone())
            .await
            .expect("a handshake failed during the reload");
        if got == new_der {
            break;
        }
        assert_eq!(got, old_der);
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A broken renewal keeps the new (last good) certificate.
    std::fs::write(&c, b"garbage").unwrap();
    let metrics_url = format!("127.0.0.1:{admin}");
    let deadline = Instant::now() + HANG;
    loop {
        let (_, m) = get_once(metrics_url.parse().unwrap(), "/metrics")
            .await
            .unwrap();
        if m.contains("roundhouse_tls_certificate_reloads_total{result=\"failure\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was never noticed: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaf(client.clone()).await, Some(new_der));
    std::fs::remove_dir_all(&d).unwrap();
}

/// At start the LB raises its soft RLIMIT_NOFILE to the hard limit, logs
/// old soft, new soft and hard, exports `roundhouse_fd_limit`, and serves.
#[test]
fn fd_limit_is_raised_to_the_hard_limit_and_logged() {
    use std::io::BufRead;
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new("prlimit")
        .args(["--nofile=64:2048", "--"])
        .arg(env!("CARGO_BIN_EXE_lb"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--backend", "127.0.0.1:9", "--workers", "1"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs lb");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    let _lb = Lb(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .expect("no file-descriptor limit line within 20 s");
        if l.contains("RLIMIT_NOFILE") {
            break strip_ansi(&l);
        }
    };
    assert!(line.contains("old_soft=64"), "{line}");
    assert!(line.contains("new_soft=2048"), "{line}");
    assert!(line.contains("hard=2048"), "{line}");
    // The gauge says the same on /metrics (bounded wait for the admin port).
    let metrics = loop {
        let body = std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "1"])
            .arg(format!("http://127.0.0.1:{admin}/metrics"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if body.contains("roundhouse_fd_limit") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("roundhouse_fd_limit 2048"), "{metrics}");
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `lb serve` on `port` (one worker, admin on `admin`, an upstream that
/// refuses) under `prlimit --nofile=<nofile>`, with `extra` flags; stderr
/// goes to the returned file.
fn spawn_limited(nofile: &str, port: u16, admin: u16, extra: &[&str], name: &str) -> (Lb, PathBuf) {
    spawn_limited_log(nofile, port, admin, extra, name, "info")
}

/// The same, with `RUST_LOG` set to `filter`.
fn spawn_limited_log(
    nofile: &str,
    port: u16,
    admin: u16,
    extra: &[&str],
    name: &str,
    filter: &str,
) -> (Lb, PathBuf) {
    let log = dir(name).join("stderr.log");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_lb"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--backend", "127.0.0.1:9", "--workers", "1"])
        .args(extra)
        .env("RUST_LOG", filter)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("prlimit (util-linux) runs lb");
    (Lb(child), log)
}

/// `/metrics` from `admin` once it answers (bounded wait).
fn metrics_of(admin: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "1"])
            .arg(format!("http://127.0.0.1:{admin}/metrics"))
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection to `port` once the listener is up (bounded wait).
fn connect_when_up(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("lb never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The value of the sample line starting with `series ` in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The lines of `text` that contain `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// Stops `lb` and returns its whole stderr.
fn stderr_of(lb: Lb, log: &std::path::Path) -> String {
    drop(lb);
    strip_ansi(&std::fs::read_to_string(log).unwrap())
}

/// At the file-descriptor limit, accept(2) fails with EMFILE on every
/// retry: each failure is counted in `roundhouse_accept_errors_total`, the
/// warning (with the limit) is logged once per period instead of per
/// failure, and the LB serves again when descriptors are free.
#[test]
fn fd_limit_reached_is_counted_and_warned_once_per_period() {
    use std::io::{Read, Write};
    let (port, admin) = (free_port(), free_port());
    // Debug lines of the accept loop: each failed accept after the first
    // says so, which is how the test sees the worker retrying.
    let (lb, log) = spawn_limited_log("64:64", port, admin, &[], "fdlimit", "info,lb::proxy=debug");
    // Far more connections than descriptors; the kernel queues them.
    let mut held = vec![connect_when_up(port)];
    held.extend((0..120).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("file descriptor limit reached")
    {
        assert!(Instant::now() < deadline, "no fd-limit warning within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The condition lasts: the worker keeps retrying every 50 ms (a
    // debug line each time after the warning).
    while lines_with(
        &std::fs::read_to_string(&log).unwrap(),
        "accept failed again",
    )
    .len()
        < 2
    {
        assert!(Instant::now() < deadline, "no retried accept within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    let metrics = metrics_of(admin);
    let failures = sample(
        &metrics,
        r#"roundhouse_accept_errors_total{reason="fd_limit"}"#,
    )
    .unwrap_or_else(|| panic!("no fd_limit accept errors in {metrics}"));
    assert!(failures >= 2.0, "{failures} failures: {metrics}");
    // Serving again once descriptors are free.
    let mut s = connect_when_up(port);
    s.write_all(b"GET /host HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    let err = stderr_of(lb, &log);
    let warned = lines_with(&err, "file descriptor limit reached");
    assert_eq!(warned.len(), 1, "{failures} failures logged as {warned:#?}");
    assert!(warned[0].contains("fd_limit=64"), "{}", warned[0]);
}

/// At `--max-connections`, every refused connection gets its 503 and is
/// counted, and the warning is logged once per period, not per connection.
#[test]
fn max_connections_reached_is_warned_once_per_period() {
    use std::io::Read;
    let (port, admin) = (free_port(), free_port());
    let (lb, log) = spawn_limited(
        "4096:4096",
        port,
        admin,
        &["--max-connections", "2"],
        "maxconn",
    );
    let held = [connect_when_up(port), connect_when_up(port)];
    // The two above are accepted first (one worker, accept order), so each
    // of these is refused.
    for i in 0..5 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 503"), "connection {i}: {resp}");
    }
    let metrics = metrics_of(admin);
    assert_eq!(
        sample(&metrics, "roundhouse_refused_connections_total"),
        Some(5.0),
        "{metrics}"
    );
    drop(held);
    let err = stderr_of(lb, &log);
    let warned = lines_with(&err, "connection limit reached (--max-connections)");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("max_connections=2"), "{}", warned[0]);
}

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

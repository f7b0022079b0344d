//! `lb check --grpc` as the Helm test runs it: the real `lb` binary calling
//! the real backend's gRPC service over h2c, its output and exit codes.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

/// The real backend (HTTP/1.1 + h2c + gRPC) named `name`, on its own thread
/// and runtime for the rest of the test process.
fn backend(name: &str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let state = backend::AppState::new(name);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            backend::run(listener, state, Duration::ZERO, std::future::pending()).await
        })
        .unwrap();
    });
    addr
}

fn lb_check(args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn grpc_check_counts_calls_and_fails_an_inexact_split() {
    let url = format!("http://{}", backend("solo"));

    let (code, out, err) = lb_check(&[&url, "--grpc", "--requests", "6", "--expect-backends", "2"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out, "solo: 6\n");
    assert!(
        err.contains("expected 2 backends with 3 requests each"),
        "{err}"
    );

    let (code, out, err) = lb_check(&[&url, "--grpc", "--requests", "6", "--expect-backends", "1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "solo: 6\nok: 6 gRPC calls over one HTTP/2 connection split exactly over 1 backends\n"
    );
}

#[test]
fn grpc_check_rejects_a_path_and_a_dead_server() {
    let (code, _, err) = lb_check(&["http://127.0.0.1:1/host", "--grpc"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("name the server only"), "{err}");

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let (code, out, err) = lb_check(&[&dead, "--grpc", "--timeout", "2s"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("error: ") && err.contains("cannot connect"),
        "{err}"
    );
}

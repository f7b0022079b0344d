//! TLS termination through the real data plane: HTTP/1.1 and HTTP/2 by
//! ALPN, SNI, `X-Forwarded-Proto: https`, resumption, certificate swaps
//! under load, and what a bad client gets.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use lb::proxy::ProxyConfig;
use lb::proxy::tls::CertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that answers with the `X-Forwarded-Proto` it received.
fn proto_backend(name: &'static str) -> TestBackend {
    TestBackend::with_service(
        name,
        move |req: Request<hyper::body::Incoming>| async move {
            let proto = req
                .headers()
                .get("x-forwarded-proto")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            Response::new(Full::new(Bytes::from(format!("{name} {proto}\n"))))
        },
    )
}

/// One HTTP/1.1 request on a TLS stream, the response read to its end.
async fn h1_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within(HANG, s.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_and_h2_over_tls_are_balanced_and_forwarded_as_https() {
    let b1 = proto_backend("b1");
    let b2 = proto_backend("b2");
    let (pair, der) = cert("a", &["a.example"]);
    let lb = TestLb::start_tls(
        routing(vec![b1.spec(), b2.spec()]),
        test_proxy_config(),
        CertStore::new(&[pair]).unwrap(),
    );
    let tls_addr = lb.tls_addr.unwrap();
    // HTTP/1.1 (ALPN http/1.1), on the fast path.
    let h1 = tls_client(std::slice::from_ref(&der), &[b"http/1.1"]);
    let mut s = tls_connect(&h1, tls_addr, "a.example").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = h1_over(&mut s, "/host").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.ends_with(" https\n"),
        "X-Forwarded-Proto: https upstream: {resp}"
    );
    assert!(resp.contains("via: 1.1 roundhouse"), "{resp}");
    // HTTP/2 (ALPN h2): 40 concurrent streams on one connection, 20/20.
    let h2 = tls_client(std::slice::from_ref(&der), &[b"h2", b"http/1.1"]);
    let s = tls_connect(&h2, tls_addr, "a.example").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tx = h2_client(s).await;
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let mut tx = tx.clone();
            tokio::spawn(async move { h2_send(&mut tx, h2_get("/host")).await })
        })
        .collect();
    let mut counts = BTreeMap::<String, usize>::new();
    for c in calls {
        let (status, _, body, _) = within(HANG, c).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *counts.entry(body.trim().to_owned()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("b1 https".into(), 20), ("b2 https".into(), 20)])
    );
    // The plain port still says http.
    let (_, body) = get_once(lb.addr, "/host").await.unwrap();
    assert!(body.ends_with(" http\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_chosen_by_sni() {
    let b = proto_backend("b");
    let (a, a_der) = cert("a", &["a.example"]);
    let (bb, b_der) = cert("b", &["b.example"]);
    let lb = TestLb::start_tls(
        routing(vec![b.spec()]),
        test_proxy_config(),
        CertStore::new(&[a, bb]).unwrap(),
    );
    let tls_addr = lb.tls_addr.unwrap();
    let leaf = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let both = tls_client(&[a_der.clone(), b_der.clone()], &[b"http/1.1"]);
    let s = tls_connect(&both, tls_addr, "a.example").await.unwrap();
    assert_eq!(leaf(&s), a_der);
    let s = tls_connect(&both, tls_addr, "b.example").await.unwrap();
    assert_eq!(leaf(&s), b_der);
    // A client that only trusts b and asks for an unknown name gets the
    // default (first) certificate, which it rejects.
    let only_b = tls_client(std::slice::from_ref(&b_der), &[b"http/1.1"]);
    assert!(tls_connect(&only_b, tls_addr, "c.example").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume() {
    let b = proto_backend("b");
    let (pair, der) = cert("a", &["a.example"]);
    let lb = TestLb::start_tls(
        routing(vec![b.spec()]),
        test_proxy_config(),
        CertStore::new(&[pair]).unwrap(),
    );
    let tls_addr = lb.tls_addr.unwrap();
    let client = tls_client(std::slice::from_ref(&der), &[b"http/1.1"]);
    // The first connection receives a ticket (read a response so that the
    // post-handshake ticket message has arrived); the second resumes.
    let mut s = tls_connect(&client, tls_addr, "a.example").await.unwrap();
    let resp = h1_over(&mut s, "/host").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let s = tls_connect(&client, tls_addr, "a.example").await.unwrap();
    assert_eq!(
        s.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second handshake resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_under_load_costs_no_request() {
    let b = proto_backend("b");
    let (old, old_der) = cert("old", &["a.example"]);
    let (new, new_der) = cert("new", &["a.example"]);
    let store = CertStore::new(&[old]).unwrap();
    let lb = TestLb::start_tls(routing(vec![b.spec()]), test_proxy_config(), store.clone());
    let tls_addr = lb.tls_addr.unwrap();
    // Full handshakes only: a resumed one shows the session's old leaf.
    let client = Arc::new(tls_client_with(
        &[old_der.clone(), new_der.clone()],
        &[b"http/1.1"],
        false,
    ));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seen_new = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients, each: new TLS connection, one request, check the leaf.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (client, ok, failed, seen_new, stop) = (
                client.clone(),
                ok.clone(),
                failed.clone(),
                seen_new.clone(),
                stop.clone(),
            );
            let new_der = new_der.clone();
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + HANG;
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    match tls_connect(&client, tls_addr, "a.example").await {
                        Ok(mut s) => {
                            let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                            let resp = h1_over(&mut s, "/host").await;
                            if resp.starts_with("HTTP/1.1 200") {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if leaf == new_der {
                                    seen_new.fetch_add(1, Ordering::Relaxed);
                                }
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("load before the swap", || ok.load(Ordering::Relaxed) >= 100).await;
    store.replace(&[new]).unwrap();
    wait_until("the new certificate in use", || {
        seen_new.load(Ordering::Relaxed) >= 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the swap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_slow_handshakes_are_closed_and_counted() {
    let b = proto_backend("b");
    let (pair, der) = cert("a", &["a.example"]);
    let lb = TestLb::start_tls(
        routing(vec![b.spec()]),
        ProxyConfig {
            tls_handshake_timeout: Duration::from_millis(300),
            ..test_proxy_config()
        },
        CertStore::new(&[pair]).unwrap(),
    );
    let tls_addr = lb.tls_addr.unwrap();
    // Plain HTTP on the TLS port: closed (rustls answers with an alert).
    let mut s = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within(HANG, s.read_to_end(&mut out)).await.ok();
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
        "{out:?}"
    );
    // Silence after connecting: closed at the handshake timeout.
    let t = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let n = within(HANG, s.read(&mut [0u8; 16])).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // The worker counts a failed handshake after it has dropped the socket,
    // so the client can see the close first: wait for the count, then check
    // it is exactly two.
    const ERRORS: &str = "roundhouse_tls_handshake_errors_total";
    wait_until("two handshake errors counted", || lb.counter(ERRORS) >= 2).await;
    assert_eq!(lb.counter(ERRORS), 2);
    // And a good client is served meanwhile.
    let client = tls_client(std::slice::from_ref(&der), &[b"http/1.1"]);
    let mut s = tls_connect(&client, tls_addr, "a.example").await.unwrap();
    assert!(h1_over(&mut s, "/host").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_answers_the_plain_port_with_308() {
    let b = proto_backend("b");
    let (pair, der) = cert("a", &["a.example"]);
    let lb = TestLb::start_tls(
        routing(vec![b.spec()]),
        ProxyConfig {
            https_redirect: Some(8443),
            ..test_proxy_config()
        },
        CertStore::new(&[pair]).unwrap(),
    );
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let resp = h1_over(&mut s, "/x?y=1").await;
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: https://a.example:8443/x?y=1\r\n"),
        "{resp}"
    );
    assert_eq!(b.hits(), 0, "nothing proxied from the plain port");
    // HTTP/2 with prior knowledge on the plain port: redirected too.
    let mut tx = h2c_client(lb.addr).await;
    let (status, headers, _, _) = h2_send(&mut tx, h2_get("/z")).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "https://test:8443/z");
    // The TLS listener proxies.
    let client = tls_client(std::slice::from_ref(&der), &[b"http/1.1"]);
    let mut s = tls_connect(&client, lb.tls_addr.unwrap(), "a.example")
        .await
        .unwrap();
    let resp = h1_over(&mut s, "/host").await;
    assert!(resp.ends_with("b https\n"), "{resp}");
}

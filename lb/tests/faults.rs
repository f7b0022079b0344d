//! Misbehaving backends and a changing endpoint set: hangs, slow answers,
//! resets mid-response, non-HTTP replies, total outages and churn.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lb::discovery::EndpointSpec;
use lb::selection::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads a request head (up to the blank line) from an upstream socket.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

fn counter(metrics: &str, line: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_gets_504_and_the_request_is_not_retried_elsewhere() {
    let hang = TestBackend::with_service("hang", |_| std::future::pending());
    let good = TestBackend::start("good");
    let policy = Policy {
        response_header_timeout: Duration::from_millis(300),
        ..Policy::default()
    };
    let lb = TestLb::start_with(
        routing(vec![hang.spec(), good.spec()]),
        test_proxy_config(),
        policy,
    );
    // Round robin starts at the first endpoint: the hanging one.
    let t = Instant::now();
    let (status, body) = within(HANG, get_once(lb.addr, "/host")).await.unwrap();
    let took = t.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
    );
    assert!(
        took >= Duration::from_millis(300),
        "before the timeout: {took:?}"
    );
    assert_eq!(hang.hits(), 1);
    // A request that may be executing is not replayed on another endpoint.
    assert_eq!(good.hits(), 0);
    // The LB goes on serving.
    assert_eq!(
        get_once(lb.addr, "/host").await.unwrap(),
        (StatusCode::OK, "good\n".into())
    );
    let m = lb.running.balancer.metrics().encode();
    assert_eq!(
        counter(
            &m,
            "roundhouse_upstream_errors_total{kind=\"response_timeout\"} "
        ),
        1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_within_the_timeout_gets_200() {
    // The backend answers none of four requests until all four are in it at
    // once: they can only all succeed if the LB forwards them concurrently,
    // none waiting on another.
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let slow = TestBackend::with_service("slow", move |_| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            Response::new(Full::new(Bytes::from_static(b"slow\n")))
        }
    });
    let policy = Policy {
        response_header_timeout: HANG,
        ..Policy::default()
    };
    let lb = TestLb::start_with(routing(vec![slow.spec()]), test_proxy_config(), policy);
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get_once(lb.addr, "/host")))
        .collect();
    for task in tasks {
        assert_eq!(
            within(HANG * 2, task).await.unwrap().unwrap(),
            (StatusCode::OK, "slow\n".into())
        );
    }
    assert_eq!(slow.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_response_aborts_the_client_response() {
    // Answers a head and part of the body, then resets the connection when
    // told to (once the client has the head, so the order is certain).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reset_tx, mut reset_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let heads: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n",
    ];
    tokio::spawn(async move {
        for head in heads {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if !read_head(&mut s).await {
                return;
            }
            let _ = s.write_all(head).await;
            let _ = s.write_all(&[b'x'; 100]).await;
            if reset_rx.recv().await.is_none() {
                return;
            }
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
    });
    let lb = TestLb::start(routing(vec![EndpointSpec::new(addr)]));
    for (i, framing) in ["content-length", "chunked"].into_iter().enumerate() {
        let stream = TcpStream::connect(lb.addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = tx
            .send_request(
                Request::get("/big")
                    .header("host", "x")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{framing}");
        reset_tx.send(()).unwrap();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("the client response ends");
        assert!(
            body.is_err(),
            "{framing}: a truncated response was delivered as complete"
        );
        let want = i as u64 + 1;
        wait_until("the body error is counted", || {
            counter(
                &lb.running.balancer.metrics().encode(),
                "roundhouse_upstream_errors_total{kind=\"body\"} ",
            ) == want
        })
        .await;
    }
    // Healthy afterwards, with a working endpoint.
    let good = TestBackend::start("good");
    lb.update(routing(vec![good.spec()]));
    assert_eq!(
        get_once(lb.addr, "/host").await.unwrap(),
        (StatusCode::OK, "good\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_gets_502() {
    // Each connection gets the next non-HTTP (or broken HTTP) answer.
    let replies: [&'static [u8]; 5] = [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"", // closes without a byte
    ];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        for reply in replies {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            seen.fetch_add(1, Ordering::Relaxed);
            if read_head(&mut s).await {
                let _ = s.write_all(reply).await;
            }
            // Dropping closes the connection.
        }
        // Further connections would be counted, never answered.
        while let Ok((s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let lb = TestLb::start(routing(vec![EndpointSpec::new(addr)]));
    for (i, reply) in replies.iter().enumerate() {
        let (status, body) = get_once(lb.addr, "/host").await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_GATEWAY, "bad gateway: upstream failed\n"),
            "reply {:?}",
            String::from_utf8_lossy(reply)
        );
        // One endpoint: one attempt, no retry against the same broken one.
        assert_eq!(connections.load(Ordering::Relaxed), i + 1);
    }
    let good = TestBackend::start("good");
    lb.update(routing(vec![good.spec()]));
    assert_eq!(
        get_once(lb.addr, "/host").await.unwrap(),
        (StatusCode::OK, "good\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_then_one_returns_without_restarting_the_lb() {
    let b1 = TestBackend::start("b1");
    let b2 = TestBackend::start("b2");
    let a1 = b1.addr;
    let policy = Policy {
        ejection_time: Duration::from_millis(200),
        ..Policy::default()
    };
    let lb = TestLb::start_with(
        routing(vec![b1.spec(), b2.spec()]),
        test_proxy_config(),
        policy,
    );
    assert_eq!(get_once(lb.addr, "/host").await.unwrap().0, StatusCode::OK);
    tokio::task::spawn_blocking(move || {
        b1.kill();
        b2.kill();
    })
    .await
    .unwrap();

    for _ in 0..10 {
        let (status, _) = get_once(lb.addr, "/host").await.unwrap();
        assert!(
            status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} while every backend is down"
        );
    }

    // b1 comes back on its address; traffic resumes on its own.
    let b1 = tokio::task::spawn_blocking(move || TestBackend::start_on(a1, "b1"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get_once(lb.addr, "/host").await.unwrap();
        if status == StatusCode::OK {
            assert_eq!(body, "b1\n");
            break;
        }
        assert!(Instant::now() < deadline, "traffic never resumed: {status}");
    }
    // And stays up: b2 is still dead, every GET lands on b1.
    for _ in 0..20 {
        assert_eq!(
            get_once(lb.addr, "/host").await.unwrap(),
            (StatusCode::OK, "b1\n".into())
        );
    }
    assert!(b1.hits() >= 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_every_100ms_under_load_costs_no_get() {
    let backends: Vec<TestBackend> = ["b1", "b2", "b3", "b4"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let specs: Vec<EndpointSpec> = backends.iter().map(TestBackend::spec).collect();
    let lb = Arc::new(TestLb::start(routing(specs[..3].to_vec())));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), lb.addr);
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut conn = Conn::open(addr).await.unwrap();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match conn.get("/host").await {
                        Ok((StatusCode::OK, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed GET: {other:?}");
                            conn = Conn::open(addr).await.unwrap();
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // 30 updates, one every 100 ms (pacing, not synchronisation: each
    // update itself waits until the LB has applied it).
    let sets: [&[usize]; 7] = [
        &[1, 2, 3],
        &[3],
        &[0, 3],
        &[0, 1, 2, 3],
        &[2],
        &[1, 0],
        &[2, 3, 0],
    ];
    let churn = {
        let lb = lb.clone();
        let specs = specs.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..30 {
                let set = sets[i % sets.len()]
                    .iter()
                    .map(|&j| specs[j].clone())
                    .collect();
                lb.update(routing(set));
                std::thread::sleep(Duration::from_millis(100));
            }
            lb.update(routing(vec![specs[0].clone()]));
        })
    };
    churn.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed GETs during churn"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "too little load: {ok:?}");
    for b in &backends {
        assert!(b.hits() > 0, "{} never served", b.name);
    }
    // The last update holds: only b1 answers now.
    let mut conn = Conn::open(lb.addr).await.unwrap();
    for _ in 0..6 {
        assert_eq!(
            conn.get("/host").await.unwrap(),
            (StatusCode::OK, "b1\n".into())
        );
    }
}

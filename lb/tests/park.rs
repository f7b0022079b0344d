//! Idle plain connections parked outside their tasks (`--idle-park-after`):
//! they are served again when the client sends, closed at the header-read
//! timeout (from their last response while idle, from the first byte for a
//! head), counted while parked, closed when the LB drains, and can still
//! open with the HTTP/2 preface.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lb::proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARKED: &str = "roundhouse_parked_connections";
const OPEN: &str = "roundhouse_active_connections";

fn config(park_after: Duration, header_read_timeout: Duration) -> ProxyConfig {
    ProxyConfig {
        idle_park_after: park_after,
        header_read_timeout,
        ..test_proxy_config()
    }
}

/// Reads one response with a `Content-Length` body: (status line, body).
/// Bytes after it stay in `carry` for the next (pipelined) response.
async fn read_next(s: &mut TcpStream, carry: &mut Vec<u8>) -> (String, String) {
    let buf = carry;
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = within(HANG, s.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 1024];
        let n = within(HANG, s.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    buf.drain(..head_end + len);
    let status = head.lines().next().unwrap().to_owned();
    (status, body)
}

/// Reads one response, which must be all the client was sent.
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut carry = Vec::new();
    let r = read_next(s, &mut carry).await;
    assert!(carry.is_empty(), "more after the response: {carry:?}");
    r
}

async fn get(s: &mut TcpStream) -> (String, String) {
    s.write_all(b"GET /host HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_response(s).await
}

/// Waits until the client sees its connection closed, without a byte.
async fn closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    within(HANG, s.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// `n` connections, each served one request and then parked.
async fn parked_clients(lb: &TestLb, n: u64) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        assert_eq!(get(&mut s).await.0, "HTTP/1.1 200 OK");
        clients.push(s);
    }
    wait_until("all parked", || lb.counter(PARKED) == n).await;
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_parked_and_served_again_from_the_table() {
    let (b1, b2) = (TestBackend::start("b1"), TestBackend::start("b2"));
    let lb = TestLb::start_with(
        routing(vec![b1.spec(), b2.spec()]),
        config(Duration::from_millis(100), Duration::from_secs(30)),
        Default::default(),
    );
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let mut seen = Vec::new();
    for round in 0..3 {
        let (status, body) = get(&mut s).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "round {round}");
        seen.push(body);
        wait_until("the idle connection parked", || lb.counter(PARKED) == 1).await;
        assert_eq!(lb.counter(OPEN), 1, "a parked connection is still open");
    }
    // Two requests in one write wake it; both are answered, in order.
    s.write_all(b"GET /host HTTP/1.1\r\nHost: t\r\n\r\nGET /host HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut carry = Vec::new();
    for _ in 0..2 {
        let (status, body) = read_next(&mut s, &mut carry).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        seen.push(body);
    }
    assert!(carry.is_empty());
    // Round robin went on across the parks: b1, b2, b1, b2, b1.
    let firsts: Vec<_> = seen.iter().map(|b| b.trim().to_owned()).collect();
    for pair in firsts.windows(2) {
        assert_ne!(pair[0], pair[1], "{firsts:?}");
    }
    assert_eq!(b1.hits() + b2.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_the_header_read_timeout_from_its_last_response() {
    let b = TestBackend::start("b");
    let timeout = Duration::from_millis(800);
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        config(Duration::from_millis(100), timeout),
        Default::default(),
    );
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    // The LB's idle deadline runs from after its response, so from after
    // the request was sent.
    let answered = Instant::now();
    assert_eq!(get(&mut s).await.0, "HTTP/1.1 200 OK");
    wait_until("parked", || lb.counter(PARKED) == 1).await;
    closed(&mut s).await;
    let idle = answered.elapsed();
    assert!(idle >= timeout, "closed after {idle:?}, before the timeout");
    wait_until("counted out", || lb.counter(OPEN) == 0).await;
    assert_eq!(lb.counter(PARKED), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_connection_has_the_header_read_timeout_for_its_head() {
    // A new connection parked before its first byte, then a head that is
    // never finished: closed the header-read timeout after the first byte
    // woke it (the idle wait and the head are timed separately), never
    // forwarded.
    let b = TestBackend::start("b");
    let timeout = Duration::from_millis(800);
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        config(Duration::from_millis(100), timeout),
        Default::default(),
    );
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    wait_until("the new connection parked", || lb.counter(PARKED) == 1).await;
    let sent = Instant::now();
    s.write_all(b"GET /host HTTP/1.1\r\n").await.unwrap();
    wait_until("woken", || lb.counter(PARKED) == 0).await;
    closed(&mut s).await;
    let took = sent.elapsed();
    assert!(took >= timeout, "closed {took:?} after the first byte");
    assert_eq!(b.hits(), 0);
    wait_until("counted out", || lb.counter(OPEN) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_parked_connection_is_counted_out() {
    let b = TestBackend::start("b");
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        config(Duration::from_millis(50), Duration::from_secs(30)),
        Default::default(),
    );
    let mut clients = parked_clients(&lb, 20).await;
    assert_eq!(lb.counter(OPEN), 20);
    clients.truncate(5);
    wait_until("the 15 that left counted out", || lb.counter(OPEN) == 5).await;
    assert_eq!(lb.counter(PARKED), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_count_toward_the_connection_limit() {
    let b = TestBackend::start("b");
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        ProxyConfig {
            max_connections: 2,
            ..config(Duration::from_millis(50), Duration::from_secs(30))
        },
        Default::default(),
    );
    let mut held = parked_clients(&lb, 2).await;
    let mut third = TcpStream::connect(lb.addr).await.unwrap();
    let (status, body) = read_response(&mut third).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 503 Service Unavailable", "too many connections\n")
    );
    // The parked ones still work.
    for s in &mut held {
        assert_eq!(get(s).await.0, "HTTP/1.1 200 OK");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_new_connection_can_still_open_with_the_http2_preface() {
    let b = TestBackend::start("b");
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        config(Duration::from_millis(50), Duration::from_secs(30)),
        Default::default(),
    );
    let s = TcpStream::connect(lb.addr).await.unwrap();
    wait_until("parked before a byte", || lb.counter(PARKED) == 1).await;
    let mut h2 = h2_client(s).await;
    let (status, _, body, _) = h2_send(&mut h2, h2_get("/host")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "b\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_parked_connections_at_once() {
    let b = TestBackend::start("b");
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        ProxyConfig {
            shutdown_timeout: Duration::from_secs(30),
            ..config(Duration::from_millis(50), Duration::from_secs(60))
        },
        Default::default(),
    );
    let mut clients = parked_clients(&lb, 10).await;
    // Far within the 30 s the drain would wait for a busy connection.
    let stopped = within(HANG, tokio::task::spawn_blocking(move || lb.stop())).await;
    assert!(stopped.unwrap().is_ok());
    for s in &mut clients {
        closed(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_parking_off_idle_connections_stay_in_their_tasks() {
    let b = TestBackend::start("b");
    let lb = TestLb::start_with(
        routing(vec![b.spec()]),
        config(Duration::ZERO, Duration::from_millis(600)),
        Default::default(),
    );
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    // The LB's idle deadline runs from after its response, so from after
    // the request was sent.
    let answered = Instant::now();
    assert_eq!(get(&mut s).await.0, "HTTP/1.1 200 OK");
    // Closed at the timeout without ever being parked.
    let mut rest = Vec::new();
    let read = s.read_to_end(&mut rest);
    tokio::pin!(read);
    loop {
        tokio::select! {
            r = &mut read => { r.unwrap(); break; }
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                assert_eq!(lb.counter(PARKED), 0);
            }
        }
        assert!(answered.elapsed() < HANG, "not closed");
    }
    assert!(answered.elapsed() >= Duration::from_millis(600));
}

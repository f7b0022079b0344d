//! Hostile HTTP/2 and TLS clients against the real data plane, each
//! written frame by frame: rapid reset (CVE-2023-44487), a CONTINUATION
//! flood (CVE-2024-27316), an HPACK bomb, SETTINGS and PING floods, more
//! streams than allowed, window-update abuse, a client that never reads;
//! garbage, oversized and flooding TLS handshakes. Each must end in a
//! bounded answer (GOAWAY, a reset, or a close) while a normal client is
//! still served, within a bounded amount of the process's memory and CPU
//! (printed, for docs/SECURITY.md). The two clients that never read (the
//! SETTINGS/PING floods and the big response) are measured per
//! connection, from the sockets (`common::sockets`): the bytes the LB holds
//! in user space for that connection, whatever its HTTP/2 implementation.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use lb::proxy::ProxyConfig;
use lb::proxy::tls::CertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://t{path}`: indexed `:method GET`, `:scheme http`,
/// and literal `:path` and `:authority` with indexed names.
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x44); // :path, literal with incremental indexing, name index 4
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x41); // :authority, name index 1
    b.push(1);
    b.push(b't');
    b
}

/// A raw HTTP/2 connection: preface and an empty SETTINGS already sent.
async fn raw(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Frames read from `s` until it closes, a GOAWAY arrives, or `limit`
/// passes; (type, flags, stream, payload) each.
async fn read_frames(s: &mut TcpStream, limit: Duration) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let f = (buf[3], buf[4], stream, buf[9..9 + len].to_vec());
            buf.drain(..9 + len);
            let goaway = f.0 == GOAWAY;
            frames.push(f);
            if goaway {
                return (frames, true);
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (frames, false),
        }
    }
}

fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY && f.3.len() >= 8)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}

/// This process's resident memory (KiB) and CPU time (user + system).
fn usage() -> (u64, Duration) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, Duration::from_millis(ticks * 10))
}

/// Runs `attack`, then checks that a normal client is served; prints the
/// memory and CPU it cost the whole test process.
async fn bounded(name: &str, lb: &TestLb, attack: impl Future<Output = ()>) {
    let (rss0, cpu0) = usage();
    let t = Instant::now();
    within(HANG * 3, attack).await;
    let (rss1, cpu1) = usage();
    println!(
        "{name}: {:?} wall, {:?} CPU, RSS {} → {} KiB (+{} KiB)",
        t.elapsed(),
        cpu1.saturating_sub(cpu0),
        rss0,
        rss1,
        rss1.saturating_sub(rss0)
    );
    assert!(
        rss1.saturating_sub(rss0) < 64 * 1024,
        "{name}: memory grew by {} KiB",
        rss1 - rss0
    );
    let mut tx = h2c_client(lb.addr).await;
    let (status, _, body, _) = within(HANG, h2_send(&mut tx, h2_get("/host"))).await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::OK, "b1"),
        "{name}: a normal client after it"
    );
}

fn slow_backend() -> TestBackend {
    TestBackend::with_service("b1", |req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(HANG * 10).await;
        }
        Response::new(Full::new(Bytes::from_static(b"b1\n")))
    })
}

fn lb(b: &TestBackend) -> TestLb {
    TestLb::start_with(
        routing(vec![b.spec()]),
        test_proxy_config(),
        lb::selection::Policy::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_goaway() {
    let b = slow_backend();
    let lb = lb(&b);
    bounded("rapid reset", &lb, async {
        let mut s = raw(lb.addr).await;
        // HEADERS then RST_STREAM(CANCEL), 20,000 times, as fast as it goes.
        let mut burst = Vec::new();
        for i in 0..20_000u32 {
            let id = 2 * i + 1;
            burst.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &get_block("/slow"),
            ));
            burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        let _ = s.write_all(&burst).await; // the LB may close mid-way
        let (frames, ended) = read_frames(&mut s, HANG).await;
        assert!(ended, "the connection neither closed nor got a GOAWAY");
        if let Some(code) = goaway_code(&frames) {
            assert!(matches!(code, 0xb | 0x1), "GOAWAY code {code:#x}");
        }
    })
    .await;
    assert!(
        b.hits() < 2_000,
        "{} of 20,000 reset streams reached the backend",
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let b = slow_backend();
    let lb = lb(&b);
    bounded("CONTINUATION flood", &lb, async {
        let mut s = raw(lb.addr).await;
        // A header block that never ends: HEADERS without END_HEADERS, then
        // CONTINUATION frames of literal headers, up to 64 MiB.
        let _ = s
            .write_all(&frame(HEADERS, END_STREAM, 1, &get_block("/")))
            .await;
        let mut lit = Vec::new();
        for _ in 0..100 {
            lit.extend_from_slice(&[0x00, 3, b'x', b'-', b'a', 100]);
            lit.extend_from_slice(&[b'v'; 100]);
        }
        let cont = frame(CONTINUATION, 0, 1, &lit);
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match tokio::time::timeout(Duration::from_secs(2), s.write_all(&cont)).await {
                Ok(Ok(())) => sent += cont.len(),
                _ => break,
            }
        }
        let (_, ended) = read_frames(&mut s, HANG).await;
        assert!(ended, "still open after {sent} bytes of CONTINUATION");
        assert!(
            sent < 16 << 20,
            "the LB read {sent} bytes of one header block"
        );
    })
    .await;
    assert_eq!(b.hits(), 1, "only the normal request after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_bomb_does_not_expand() {
    let b = slow_backend();
    let lb = lb(&b);
    bounded("HPACK bomb", &lb, async {
        let mut s = raw(lb.addr).await;
        // One 4,000-byte header inserted into the dynamic table (it fits
        // the default 4 KiB), then referenced 16,000 times (one byte each):
        // 64 MB if expanded.
        let mut block = get_block("/");
        block.extend_from_slice(&[0x40, 4, b'b', b'o', b'm', b'b', 0x7f, 0xa1, 0x1e]);
        block.extend_from_slice(&[b'x'; 4000]);
        let refs = vec![0xbe_u8; 16_000];
        let _ = s.write_all(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        let _ = s
            .write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 3, &refs))
            .await;
        let (frames, _) = read_frames(&mut s, Duration::from_secs(3)).await;
        // Refused: a reset of the stream, a GOAWAY, or a 431 response.
        let refused = frames.iter().any(|f| f.0 == RST_STREAM || f.0 == GOAWAY)
            || frames.iter().any(|f| f.0 == HEADERS && f.2 == 3);
        assert!(
            refused,
            "frames: {:?}",
            frames.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>()
        );
    })
    .await;
    // Stream 1 (one 4 KB header) may be forwarded; the bomb (stream 3)
    // never is; the last is the normal request.
    assert!(b.hits() <= 2, "the bomb reached the backend");
}

/// The most a socket's send queue may grow to (`tcp_wmem`'s maximum).
fn tcp_wmem_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .unwrap()
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What the LB may hold in user space for one flooding connection: the
/// acknowledgements it owes and has not handed to the kernel. A server
/// that stops reading while its writes are blocked holds one write buffer
/// (hyper's HTTP/2 server: at most about 16 KiB); the bound leaves room
/// for a larger one, and none for queuing acknowledgements per frame read.
const FLOOD_HELD_LIMIT: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_from_a_client_that_never_reads() {
    let b = slow_backend();
    let lb = lb(&b);
    // Each flood frame, and the size of the acknowledgement the LB owes
    // for it (a SETTINGS ACK is a bare frame header, a PING ACK echoes the
    // 8 bytes).
    for (name, f, ack) in [
        (
            "SETTINGS flood",
            frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]),
            9u64,
        ),
        ("PING flood", frame(PING, 0, 0, &[7; 8]), 17),
    ] {
        bounded(name, &lb, async {
            // A client that never reads, with a small receive buffer: what
            // the LB cannot send stays with the LB (or in its socket).
            let mut s = sockets::connect_small(lb.addr, 16 * 1024).await;
            let me = s.local_addr().unwrap();
            // Enough frames that their acknowledgements are twice what the
            // LB's socket can queue (4 MiB by default): the kernel cannot
            // hold them all, so the LB has to stop reading, close, or keep
            // them itself (which the bound below catches).
            let flood = usize::try_from(2 * tcp_wmem_max() / ack).unwrap();
            let mut out = PREFACE.to_vec();
            out.extend(frame(SETTINGS, 0, 0, &[]));
            let head = out.len() as u64;
            out.extend(f.iter().copied().cycle().take(f.len() * flood));
            // Written until done, closed, or until the kernel has taken
            // nothing for a second (the LB stopped reading and the socket
            // buffers are full). That only decides how much of the flood
            // is sent; the verdict is the measurement below.
            let mut sent = 0usize;
            while sent < out.len() {
                match tokio::time::timeout(Duration::from_secs(1), s.write(&out[sent..])).await {
                    Ok(Ok(n)) if n > 0 => sent += n,
                    _ => break,
                }
            }
            let (client, server) = sockets::at_rest(name, HANG, || {
                (
                    sockets::socket(me, lb.addr),
                    sockets::socket(lb.addr, me).filter(|s| s.state == sockets::ESTABLISHED),
                )
            })
            .await;
            let Some(server) = server else {
                println!("{name}: the LB closed the connection after {sent} bytes");
                return;
            };
            let client = client.expect("the client's socket");
            // What the LB read: sent, minus what is still in the kernel on
            // the way in. What it owes: an ACK of the client's first
            // SETTINGS and one per flood frame read. What it handed on: the
            // kernel on the way out (the client reads nothing).
            let read = sent as u64 - client.tx - server.rx;
            let frames = read.saturating_sub(head) / f.len() as u64;
            let owed = 9 + frames * ack;
            let handed = server.tx + client.rx;
            let held = owed.saturating_sub(handed);
            println!(
                "{name}: {} of {flood} frames written; the LB read {frames} and owes {owed} bytes of \
                 acknowledgements; the kernel holds {handed} bytes towards the client \
                 (LB send queue {}, client receive queue {}) and {} of the flood unread by the LB; \
                 the LB holds {held} bytes for this connection",
                (sent as u64).saturating_sub(head) / f.len() as u64,
                server.tx,
                client.rx,
                server.rx + client.tx,
            );
            assert!(
                held <= FLOOD_HELD_LIMIT,
                "{name}: the LB holds {held} bytes of acknowledgements for one connection \
                 (limit {FLOOD_HELD_LIMIT}): it keeps reading frames it cannot answer"
            );
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_streams_than_advertised_are_refused() {
    let b = slow_backend();
    let lb = lb(&b);
    bounded("too many streams", &lb, async {
        let mut s = raw(lb.addr).await;
        let mut burst = Vec::new();
        for i in 0..300u32 {
            burst.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                2 * i + 1,
                &get_block("/slow"),
            ));
        }
        s.write_all(&burst).await.unwrap();
        let (frames, _) = read_frames(&mut s, Duration::from_secs(3)).await;
        let refused = frames
            .iter()
            .filter(|f| f.0 == RST_STREAM && f.3 == 7u32.to_be_bytes())
            .count();
        let goaway = goaway_code(&frames);
        assert!(
            refused >= 150 || goaway.is_some(),
            "{refused} streams refused, GOAWAY {goaway:?}"
        );
    })
    .await;
    // At most the 100 allowed, and the normal request after it.
    assert!(
        b.hits() <= 101,
        "{} streams reached the backend (limit 100)",
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_updates_that_overflow_are_a_flow_control_error() {
    let b = slow_backend();
    let lb = lb(&b);
    bounded("window overflow", &lb, async {
        let mut s = raw(lb.addr).await;
        let inc = 0x7fff_ffffu32.to_be_bytes();
        s.write_all(&frame(WINDOW_UPDATE, 0, 0, &inc))
            .await
            .unwrap();
        s.write_all(&frame(WINDOW_UPDATE, 0, 0, &inc))
            .await
            .unwrap();
        let (frames, ended) = read_frames(&mut s, HANG).await;
        assert!(ended);
        assert_eq!(goaway_code(&frames), Some(0x3), "FLOW_CONTROL_ERROR");
    })
    .await;
}

/// What the LB may hold in user space for one HTTP/2 connection whose
/// client opened 10 streams of 64 MiB each and reads nothing: per stream,
/// its send buffer (`max_send_buf_size`, 256 KiB) and 64 KiB read ahead
/// from its upstream connection. (Measured: 343 KiB for all ten; see
/// docs/SECURITY.md.)
const NEVER_READS_HELD_LIMIT: u64 = 10 * (256 + 64) * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_a_big_response_holds_little() {
    // The backend streams 64 MiB per request from one shared 64 KiB chunk,
    // as fast as the LB takes it, and counts the bytes it writes.
    let big = common::TestBackend::with_streaming("b1", |path: &str| {
        if path == "/big" {
            (Bytes::from(vec![b'x'; 64 * 1024]), 1024)
        } else {
            (Bytes::from_static(b"b1\n"), 1)
        }
    });
    let lb = lb(&big);
    bounded("never reads", &lb, async {
        // Ten streams for 64 MiB each, and not one byte read.
        let mut s = sockets::connect_small(lb.addr, 16 * 1024).await;
        let me = s.local_addr().unwrap();
        let mut burst = PREFACE.to_vec();
        burst.extend(frame(SETTINGS, 0, 0, &[]));
        for i in 0..10u32 {
            burst.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                2 * i + 1,
                &get_block("/big"),
            ));
        }
        s.write_all(&burst).await.unwrap();
        // Once nothing moves: what the backend wrote, minus what the kernel
        // holds between the backend and the LB, is what the LB read; minus
        // what the kernel holds between the LB and the client, is what the
        // LB holds. (Upstream chunk framing counts as read, downstream
        // HTTP/2 framing as handed on: both make the figure a little larger
        // than the body bytes held, never smaller.)
        let (client, server, backend_side, lb_upstream, written) =
            sockets::at_rest("never reads", HANG * 2, || {
                let all = sockets::tcp_sockets();
                (
                    all.iter().find(|s| s.local == me && s.remote == lb.addr).copied(),
                    all.iter().find(|s| s.local == lb.addr && s.remote == me).copied(),
                    sockets::queued(&all, |s| s.local == big.addr),
                    sockets::queued(&all, |s| s.remote == big.addr),
                    big.written.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .await;
        assert_eq!(big.hits(), 10, "all ten streams reached the backend");
        let (client, server) = (
            client.expect("the client's socket"),
            server.expect("the LB kept the connection open"),
        );
        let read = written - backend_side.0 - lb_upstream.1;
        let handed = server.tx + client.rx;
        let held = read.saturating_sub(handed);
        println!(
            "never reads: the backend wrote {written} bytes; the kernel holds {} between it and \
             the LB and {handed} between the LB and the client (LB send queue {}, client receive \
             queue {}); the LB read {read} and holds {held} bytes for this connection",
            backend_side.0 + lb_upstream.1,
            server.tx,
            client.rx,
        );
        assert!(
            held <= NEVER_READS_HELD_LIMIT,
            "the LB holds {held} bytes for a client that reads nothing (limit {NEVER_READS_HELD_LIMIT})"
        );
        drop(s);
    })
    .await;
    let _ = DATA;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_oversized_hellos_and_handshake_floods() {
    let b = slow_backend();
    let (pair, der) = cert("a", &["a.example"]);
    let lb = TestLb::start_tls(
        routing(vec![b.spec()]),
        ProxyConfig {
            tls_handshake_timeout: Duration::from_millis(500),
            ..test_proxy_config()
        },
        CertStore::new(&[pair]).unwrap(),
    );
    let tls = lb.tls_addr.unwrap();
    bounded("TLS: oversized ClientHello", &lb, async {
        // A handshake record claiming a 16 MiB ClientHello.
        let mut s = TcpStream::connect(tls).await.unwrap();
        let mut hello = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        hello.extend_from_slice(&[0u8; 16_000]);
        let _ = s.write_all(&hello).await;
        let mut out = Vec::new();
        let _ = within(HANG, s.read_to_end(&mut out)).await;
    })
    .await;
    bounded("TLS: 1,000 handshakes that never finish", &lb, async {
        // Each sends half a ClientHello and waits: all are closed at the
        // handshake timeout.
        let mut held = Vec::new();
        for _ in 0..1_000 {
            let mut s = TcpStream::connect(tls).await.unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
            held.push(s);
        }
        for mut s in held {
            let n = within(HANG, s.read(&mut [0u8; 64])).await.unwrap_or(0);
            let _ = n;
        }
    })
    .await;
    let client = tls_client(std::slice::from_ref(&der), &[b"http/1.1"]);
    let mut s = tls_connect(&client, tls, "a.example").await.unwrap();
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
    // A handshake error is counted after its socket is dropped, so the
    // last held client may have seen its close before the count.
    wait_until("1,001 handshake errors counted", || {
        lb.counter("roundhouse_tls_handshake_errors_total") >= 1_001
    })
    .await;
}

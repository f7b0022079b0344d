//! What the kernel holds for TCP connections on 127.0.0.1, read from
//! `/proc/net/tcp` (any process's sockets, so also the in-process LB's):
//! per socket, the bytes in its send queue (written by its process, not yet
//! acknowledged by the peer) and in its receive queue (arrived, not yet
//! read by its process).
//!
//! With these, a test can tell how many bytes a process holds in user
//! space for one connection without knowing how it is implemented: bytes
//! that went in (written by the peer, minus what still sits in the
//! kernel on the way in) minus bytes that came out (sitting in the kernel
//! on the way out, or read by the next peer).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// TCP state `ESTABLISHED` in `/proc/net/tcp`.
pub const ESTABLISHED: u8 = 0x01;

/// One IPv4 TCP socket as `/proc/net/tcp` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state (`ESTABLISHED` is 1).
    pub state: u8,
    /// Send queue: bytes written and not yet acknowledged by the peer.
    pub tx: u64,
    /// Receive queue: bytes arrived and not yet read.
    pub rx: u64,
}

fn addr(field: &str) -> SocketAddr {
    let (ip, port) = field.split_once(':').expect("address:port");
    // The address is the 4 network-order bytes printed as a native u32.
    let ip = u32::from_str_radix(ip, 16).expect("hex address");
    let port = u16::from_str_radix(port, 16).expect("hex port");
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// Every IPv4 TCP socket of this network namespace.
pub fn tcp_sockets() -> Vec<TcpSocket> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f[4].split_once(':').expect("tx:rx");
            TcpSocket {
                local: addr(f[1]),
                remote: addr(f[2]),
                state: u8::from_str_radix(f[3], 16).expect("state"),
                tx: u64::from_str_radix(tx, 16).expect("tx queue"),
                rx: u64::from_str_radix(rx, 16).expect("rx queue"),
            }
        })
        .collect()
}

/// The socket with exactly this local and remote address, if it exists.
pub fn socket(local: SocketAddr, remote: SocketAddr) -> Option<TcpSocket> {
    tcp_sockets()
        .into_iter()
        .find(|s| s.local == local && s.remote == remote)
}

/// Sums of the send and receive queues of the sockets `which` selects.
pub fn queued(sockets: &[TcpSocket], which: impl Fn(&TcpSocket) -> bool) -> (u64, u64) {
    sockets
        .iter()
        .filter(|s| which(s))
        .fold((0, 0), |(tx, rx), s| (tx + s.tx, rx + s.rx))
}

/// Polls `sample` until it returns the same value twice in a row, 50 ms
/// apart (nothing moved in between: every process involved is blocked on
/// the others or on the kernel), and returns that value. Panics after
/// `limit`.
pub async fn at_rest<T: PartialEq + std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut sample: impl FnMut() -> T,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = sample();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sample();
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still moving after {limit:?}: {now:?}"
        );
        last = now;
    }
}

/// A stream that counts the bytes written through it.
pub struct Counted<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, written: Arc<AtomicU64>) -> Self {
        Counted { inner, written }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP connection to `addr` whose receive buffer is `rcvbuf` bytes (the
/// kernel doubles it), set before the handshake so the window starts small:
/// a client that never reads then takes little into its kernel, and what
/// a server cannot send stays with the server, where the tests measure it.
pub async fn connect_small(addr: SocketAddr, rcvbuf: usize) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(u32::try_from(rcvbuf).unwrap())
        .unwrap();
    s.connect(addr).await.unwrap()
}

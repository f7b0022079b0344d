//! HTTP/1.1 connections to endpoints and the one per-worker pool they wait
//! in between requests.
//!
//! Each worker thread owns its pool (no lock is shared between threads).
//! Both transports take their connections from it: the fast path writes
//! raw heads on them, the hyper path runs one hyper client exchange on a
//! checked-out connection and puts it back afterwards. Connections are
//! reused last-in-first-out so that few stay hot, kept at most `max_idle`
//! per endpoint, and closed after `idle_timeout` unused — which must stay
//! below the backends' own keep-alive timeout.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::net::TcpStream;
use tracing::debug;

use super::buffers::UpstreamBuf;
use super::timer::LazyTimer;

/// A connection that can wait in a pool.
pub trait Reusable {
    /// Whether the peer has closed it (or it is otherwise unusable).
    fn is_closed(&self) -> bool;
}

/// A raw HTTP/1.1 connection to an endpoint, with its read buffer (given
/// back to the worker's free list when the connection is dropped).
#[derive(Debug)]
pub struct UpConn {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// Bytes read and not yet consumed.
    pub(crate) buf: UpstreamBuf,
    /// The response-header deadline of the request on it (the fast path):
    /// one timer per upstream connection rather than per client connection,
    /// as there are far fewer of them.
    pub(crate) timer: LazyTimer,
}

impl UpConn {
    /// Wraps a connected socket.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: UpstreamBuf::take(),
            timer: LazyTimer::new(),
        }
    }

    /// The socket, for a transport that brings its own buffering (hyper);
    /// the read buffer goes back to the free list.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl Reusable for UpConn {
    /// Probes the socket: a readable socket means the peer closed it or sent
    /// bytes nobody asked for, and either way it cannot carry a request.
    /// No syscall unless the socket is readable.
    fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// One request in flight on a multiplexed (HTTP/2) connection: counted
/// while it lives, counted down when dropped (with the response body, or
/// when the attempt failed).
#[derive(Debug)]
pub struct StreamLease(Rc<std::cell::Cell<usize>>);

impl StreamLease {
    /// Counts one more stream on the connection whose count is `streams`.
    pub fn new(streams: Rc<std::cell::Cell<usize>>) -> Self {
        streams.set(streams.get() + 1);
        Self(streams)
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A connection to an endpoint that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the connect timeout.
    #[error("connect timed out")]
    Timeout,
    /// Refused, reset or unreachable.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Connects to an endpoint within `timeout`, with `TCP_NODELAY`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<UpConn, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(e)) => {
            debug!(endpoint = %addr, error = %e, "connect failed");
            Err(e.into())
        }
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(UpConn::new(s))
        }
    }
}

/// Returns a connection that a hyper client exchange borrowed to the pool,
/// once both halves of that exchange agree that it is reusable: the
/// connection task, which hands the socket back when hyper is done with it
/// ([`Reuse::conn_done`]), and the response body, which must have been read
/// to its end ([`Reuse::body_done`]). A body abandoned half-way (the client
/// left) or a response that closes the connection means the socket is
/// dropped: a later request must never read the rest of an earlier
/// response.
pub struct Reuse {
    pool: Rc<Pool>,
    addr: SocketAddr,
    state: RefCell<ReuseState>,
}

#[derive(Default)]
struct ReuseState {
    stream: Option<TcpStream>,
    body_done: bool,
    refused: bool,
}

impl fmt::Debug for Reuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reuse")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Reuse {
    /// For a connection to `addr` borrowed from `pool`.
    pub fn new(pool: Rc<Pool>, addr: SocketAddr) -> Rc<Self> {
        Rc::new(Self {
            pool,
            addr,
            state: RefCell::default(),
        })
    }

    /// hyper has finished with the connection and gives the socket back.
    pub fn conn_done(&self, stream: TcpStream) {
        self.state.borrow_mut().stream = Some(stream);
        self.settle();
    }

    /// The response body was read to its end.
    pub fn body_done(&self) {
        self.state.borrow_mut().body_done = true;
        self.settle();
    }

    /// The connection must not be reused (the response closes it, or its
    /// body was abandoned or failed).
    pub fn refuse(&self) {
        let mut state = self.state.borrow_mut();
        state.refused = true;
        state.stream = None;
    }

    fn settle(&self) {
        let mut state = self.state.borrow_mut();
        if state.body_done
            && !state.refused
            && let Some(stream) = state.stream.take()
        {
            drop(state);
            self.pool
                .checkin(self.addr, UpConn::new(stream), Instant::now());
        }
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// A map keyed by endpoint address, hashed with foldhash: the pool is
/// looked up twice per proxied request, and the standard SipHash of a
/// `SocketAddr` cost about 240 instructions each time (measured under
/// callgrind). The keys are the LB's own endpoints, not client input, so
/// SipHash's resistance to chosen keys buys nothing here.
pub(crate) type EndpointMap<V> = HashMap<SocketAddr, V, foldhash::fast::RandomState>;

/// Per-worker connection pool.
pub struct Pool<C = UpConn> {
    idle: RefCell<EndpointMap<Vec<Idle<C>>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.max_idle)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Reusable> Pool<C> {
    /// An empty pool.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            idle: RefCell::new(EndpointMap::default()),
            max_idle,
            idle_timeout,
        })
    }

    /// The most recently used live idle connection to `addr`, if any;
    /// closed or expired ones (idle for the idle timeout at `now`) found on
    /// the way are dropped.
    pub fn checkout(&self, addr: SocketAddr, now: Instant) -> Option<C> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if now.saturating_duration_since(idle.since) < self.idle_timeout
                && !idle.conn.is_closed()
            {
                return Some(idle.conn);
            }
            debug!(endpoint = %addr, "pooled connection closed by the endpoint or expired; discarding");
        }
        None
    }

    /// Returns a connection for reuse (dropped if closed or over the limit),
    /// idle since `since` (the caller's latest clock reading).
    pub fn checkin(&self, addr: SocketAddr, conn: C, since: Instant) {
        if self.max_idle == 0 || conn.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle {
            list.push(Idle { conn, since });
        }
    }

    /// Closes idle connections past the idle timeout or closed by their
    /// peer, and forgets endpoints without connections.
    pub fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|c| c.since.elapsed() < timeout && !c.conn.is_closed());
            !list.is_empty()
        });
    }

    /// Idle connections to `addr`.
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.idle.borrow().get(&addr).map_or(0, Vec::len)
    }

    /// The configured idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Fake {
        id: u32,
        closed: Rc<Cell<bool>>,
    }

    impl Reusable for Fake {
        fn is_closed(&self) -> bool {
            self.closed.get()
        }
    }

    fn fake(id: u32) -> (Fake, Rc<Cell<bool>>) {
        let closed = Rc::new(Cell::new(false));
        (
            Fake {
                id,
                closed: closed.clone(),
            },
            closed,
        )
    }

    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    #[test]
    fn last_in_first_out_and_bounded() {
        let pool = Pool::new(2, Duration::from_secs(60));
        for id in 0..3 {
            pool.checkin(A, fake(id).0, Instant::now());
        }
        assert_eq!(pool.idle(A), 2, "the third is over max_idle");
        assert_eq!(pool.checkout(A, Instant::now()).map(|c| c.id), Some(1));
        assert_eq!(pool.checkout(A, Instant::now()).map(|c| c.id), Some(0));
        assert!(pool.checkout(A, Instant::now()).is_none());
    }

    #[test]
    fn closed_connections_are_skipped_and_swept() {
        let pool = Pool::new(8, Duration::from_secs(60));
        let (a, a_closed) = fake(1);
        let (b, _) = fake(2);
        pool.checkin(A, a, Instant::now());
        pool.checkin(A, b, Instant::now());
        pool.sweep();
        assert_eq!(pool.idle(A), 2);
        a_closed.set(true);
        pool.sweep();
        assert_eq!(pool.idle(A), 1, "the closed one is gone");
        let (c, c_closed) = fake(3);
        pool.checkin(A, c, Instant::now());
        c_closed.set(true);
        assert_eq!(
            pool.checkout(A, Instant::now()).map(|c| c.id),
            Some(2),
            "closed c skipped"
        );
        let (d, d_closed) = fake(4);
        d_closed.set(true);
        pool.checkin(A, d, Instant::now());
        assert_eq!(pool.idle(A), 0, "a closed connection is not kept");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire() {
        let pool = Pool::new(8, Duration::from_secs(4));
        pool.checkin(A, fake(1).0, Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        pool.checkin(A, fake(2).0, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        pool.sweep();
        assert_eq!(pool.idle(A), 1, "the first is past the idle timeout");
        assert_eq!(pool.checkout(A, Instant::now()).map(|c| c.id), Some(2));
    }
}

//! Per-worker pools of HTTP/1.1 connections to endpoints.
//!
//! Each worker thread owns its pools (no lock is shared between threads):
//! one of hyper client connections (the general path) and one of raw TCP
//! connections (the HTTP/1 fast path, see `fast/`).
//! Connections are reused last-in-first-out so that few stay hot, kept at
//! most `max_idle` per endpoint, and closed after `idle_timeout` unused —
//! which must stay below the backends' own keep-alive timeout.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::body::ReqBody;

/// The sending half of an upstream connection.
pub type Sender = SendRequest<ReqBody>;

/// A connection that can wait in a pool.
pub trait Reusable {
    /// Whether the peer has closed it (or it is otherwise unusable).
    fn is_closed(&self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

struct Idle<C> {
    tx: C,
    since: Instant,
}

/// Per-worker connection pool.
pub struct Pool<C = Sender> {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle<C>>>>,
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
            idle: RefCell::new(HashMap::new()),
            max_idle,
            idle_timeout,
        })
    }

    /// The most recently used live idle connection to `addr`, if any.
    pub fn checkout(&self, addr: SocketAddr) -> Option<C> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            if !conn.tx.is_closed() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.tx);
            }
        }
        None
    }

    /// Returns a connection for reuse (dropped if closed or over the limit).
    pub fn checkin(&self, addr: SocketAddr, tx: C) {
        if tx.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout and forgets endpoints
    /// without connections.
    pub fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && c.since.elapsed() < timeout);
            !list.is_empty()
        });
    }

    /// The configured idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// A connection on loan to a response body, returned when the body ends.
pub struct Checkin {
    pool: Rc<Pool>,
    addr: SocketAddr,
    tx: Sender,
}

impl fmt::Debug for Checkin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkin").field("addr", &self.addr).finish()
    }
}

impl Checkin {
    /// A loan of `tx` to `addr` from `pool`.
    pub fn new(pool: Rc<Pool>, addr: SocketAddr, tx: Sender) -> Self {
        Self { pool, addr, tx }
    }

    /// Returns the connection to its pool.
    pub fn checkin(self) {
        self.pool.checkin(self.addr, self.tx);
    }
}

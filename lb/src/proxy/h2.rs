//! HTTP/2 to endpoints (h2c, prior knowledge), for Upstreams whose protocol
//! is `h2c`: a few multiplexed connections per endpoint per worker, each
//! carrying at most `max_streams` requests at once. A connection the
//! endpoint closed, or sent GOAWAY on, is not chosen again; a request it
//! refused before sending goes out again on another connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::debug;

use super::attempt::{Connector, Failure, FailureKind, SendFailure};
use super::body::ReqBody;
use super::stream::LocalExec;
use super::upstream::{self, StreamLease};
use crate::selection::Policy;

/// One multiplexed connection.
struct H2Conn {
    tx: http2::SendRequest<ReqBody>,
    /// Requests in flight on it (shared with their leases).
    streams: Rc<Cell<usize>>,
}

/// A worker's HTTP/2 connections, by endpoint.
pub(crate) struct H2Pool {
    conns: RefCell<HashMap<SocketAddr, Vec<H2Conn>>>,
    max_streams: usize,
    client: http2::Builder<LocalExec>,
}

impl fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Pool")
            .field("max_streams", &self.max_streams)
            .finish_non_exhaustive()
    }
}

impl H2Pool {
    /// An empty pool; each connection carries at most `max_streams`
    /// requests at once.
    pub(crate) fn new(max_streams: usize) -> Self {
        let mut client = http2::Builder::new(LocalExec);
        client
            .timer(TokioTimer::new())
            .max_concurrent_reset_streams(1024)
            .initial_stream_window_size(Some(1024 * 1024))
            .initial_connection_window_size(Some(4 * 1024 * 1024));
        Self {
            conns: RefCell::new(HashMap::new()),
            max_streams: max_streams.max(1),
            client,
        }
    }

    /// Forgets connections the endpoints closed.
    pub(crate) fn sweep(&self) {
        self.conns.borrow_mut().retain(|_, list| {
            list.retain(|c| !c.tx.is_closed());
            !list.is_empty()
        });
    }
}

/// A stream on a multiplexed connection: the sender and its lease.
pub(crate) struct H2Stream {
    tx: http2::SendRequest<ReqBody>,
    lease: StreamLease,
}

impl Connector for &H2Pool {
    type Conn = H2Stream;

    fn checkout(&mut self, addr: SocketAddr) -> Option<H2Stream> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&addr)?;
        list.retain(|c| !c.tx.is_closed());
        let conn = list
            .iter()
            .filter(|c| c.tx.is_ready() && c.streams.get() < self.max_streams)
            .min_by_key(|c| c.streams.get())?;
        Some(H2Stream {
            tx: conn.tx.clone(),
            lease: StreamLease::new(conn.streams.clone()),
        })
    }

    async fn connect(&mut self, addr: SocketAddr, policy: &Policy) -> Result<H2Stream, Failure> {
        let stream = upstream::connect(addr, policy.connect_timeout)
            .await?
            .into_stream();
        let (tx, conn) = self
            .client
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::because(FailureKind::Connect, e))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                debug!(endpoint = %addr, error = %e, "HTTP/2 upstream connection closed with an error");
            }
        });
        let streams = Rc::new(Cell::new(0));
        self.conns
            .borrow_mut()
            .entry(addr)
            .or_default()
            .push(H2Conn {
                tx: tx.clone(),
                streams: streams.clone(),
            });
        Ok(H2Stream {
            tx,
            lease: StreamLease::new(streams),
        })
    }
}

/// Sends `request` on `stream` and waits for the response head within
/// `timeout`; the lease goes with the response (its body holds it).
pub(crate) async fn send(
    stream: H2Stream,
    request: Request<ReqBody>,
    timeout: std::time::Duration,
) -> Result<(Response<Incoming>, StreamLease), SendFailure<Request<ReqBody>>> {
    let H2Stream { mut tx, lease } = stream;
    match tokio::time::timeout(timeout, tx.try_send_request(request)).await {
        Err(_) => Err(SendFailure::sent(Failure::new(
            FailureKind::ResponseTimeout,
        ))),
        Ok(Ok(response)) => Ok((response, lease)),
        Ok(Err(mut e)) => {
            let unsent = e.take_message();
            let failure = Failure::because(FailureKind::Send, e.into_error());
            Err(SendFailure { failure, unsent })
        }
    }
}

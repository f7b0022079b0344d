//! HTTP/2 to endpoints (h2c, prior knowledge), for Upstreams whose protocol
//! is `h2c`: a few multiplexed connections per endpoint per worker, on the
//! `h2` crate's client, each carrying at most `max_streams` requests at
//! once. A connection the endpoint closed, or sent GOAWAY on, is not chosen
//! again; a request that could not be opened on one goes out again on
//! another connection. Both client transports use it: the HTTP/2 one
//! (`h2/`), and the hyper path for HTTP/1.1 clients (`general.rs`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tracing::debug;

use crate::proxy::attempt::{Connector, Failure, FailureKind, SendFailure};
use crate::proxy::upstream::{self, EndpointMap, StreamLease};
use crate::selection::Policy;

/// One multiplexed connection.
struct H2Conn {
    tx: SendRequest<Bytes>,
    /// Requests in flight on it (shared with their leases).
    streams: Rc<Cell<usize>>,
    /// Set when its connection task ended (closed, GOAWAY, error).
    closed: Rc<Cell<bool>>,
}

/// A worker's HTTP/2 connections, by endpoint.
pub(crate) struct H2Pool {
    conns: RefCell<EndpointMap<Vec<H2Conn>>>,
    max_streams: usize,
    client: h2::client::Builder,
}

impl fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Pool")
            .field("max_streams", &self.max_streams)
            .finish_non_exhaustive()
    }
}

/// Flow-control windows the LB offers an endpoint: large enough that a
/// response is rarely held up by the LB's own window, while a client that
/// reads slowly still holds the endpoint back (the LB releases window only
/// as the client takes the data).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

impl H2Pool {
    /// An empty pool; each connection carries at most `max_streams`
    /// requests at once.
    pub(crate) fn new(max_streams: usize) -> Self {
        let mut client = h2::client::Builder::new();
        client
            .enable_push(false)
            .max_concurrent_reset_streams(1024)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        Self {
            conns: RefCell::new(EndpointMap::default()),
            max_streams: max_streams.max(1),
            client,
        }
    }

    /// Forgets connections the endpoints closed.
    pub(crate) fn sweep(&self) {
        self.conns.borrow_mut().retain(|_, list| {
            list.retain(|c| !c.closed.get());
            !list.is_empty()
        });
    }
}

/// A stream to be opened on a multiplexed connection: the sender and its
/// lease.
pub(crate) struct H2Stream {
    tx: SendRequest<Bytes>,
    lease: StreamLease,
    gone: Rc<Cell<bool>>,
}

impl Connector for &H2Pool {
    type Conn = H2Stream;

    fn checkout(&mut self, addr: SocketAddr, _: Instant) -> Option<H2Stream> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&addr)?;
        list.retain(|c| !c.closed.get());
        let conn = list
            .iter()
            .filter(|c| c.streams.get() < self.max_streams)
            .min_by_key(|c| c.streams.get())?;
        Some(H2Stream {
            tx: conn.tx.clone(),
            lease: StreamLease::new(conn.streams.clone()),
            gone: conn.closed.clone(),
        })
    }

    async fn connect(&mut self, addr: SocketAddr, policy: &Policy) -> Result<H2Stream, Failure> {
        let stream = upstream::connect(addr, policy.connect_timeout)
            .await?
            .into_stream();
        let (tx, conn) = self
            .client
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| Failure::because(FailureKind::Connect, e))?;
        let closed = Rc::new(Cell::new(false));
        let done = closed.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                debug!(endpoint = %addr, error = %e, "HTTP/2 upstream connection closed with an error");
            }
            done.set(true);
        });
        let streams = Rc::new(Cell::new(0));
        self.conns
            .borrow_mut()
            .entry(addr)
            .or_default()
            .push(H2Conn {
                tx: tx.clone(),
                streams: streams.clone(),
                closed: closed.clone(),
            });
        Ok(H2Stream {
            tx,
            lease: StreamLease::new(streams),
            gone: closed,
        })
    }
}

/// A stream opened on an endpoint: the response to come, the request
/// body's sender (unless the request ended with its head), and the lease
/// that counts it on its connection.
pub(crate) struct Opened {
    /// The response head, when it comes.
    pub(crate) response: ResponseFuture,
    /// Where the request body goes.
    pub(crate) body: SendStream<Bytes>,
    /// Held until the exchange is over.
    pub(crate) lease: StreamLease,
    /// Marks its connection as not to be chosen again (see [`response`]).
    pub(crate) gone: Rc<Cell<bool>>,
}

/// Opens a stream for `head` on `stream` (`end`: the request has no body).
/// A connection that turns out unusable before the stream was opened gives
/// the head back, so it can go out on another one.
pub(crate) async fn open(
    stream: H2Stream,
    head: Request<()>,
    end: bool,
) -> Result<Opened, SendFailure<Request<()>>> {
    let H2Stream { tx, lease, gone } = stream;
    let mut tx = match tx.ready().await {
        Ok(tx) => tx,
        Err(e) => {
            gone.set(true);
            return Err(SendFailure::unsent(
                Failure::because(FailureKind::Send, e),
                head,
            ));
        }
    };
    match tx.send_request(head, end) {
        Ok((response, body)) => Ok(Opened {
            response,
            body,
            lease,
            gone,
        }),
        Err(e) => Err(SendFailure::sent(Failure::because(FailureKind::Send, e))),
    }
}

/// Waits for the response head of an opened stream within `timeout`. Any
/// error before the head is a failure to send; a GOAWAY or a broken
/// connection also marks the connection (`gone`) as not to be chosen again.
pub(crate) async fn response(
    response: ResponseFuture,
    gone: &Cell<bool>,
    timeout: std::time::Duration,
) -> Result<Response<RecvStream>, Failure> {
    match tokio::time::timeout(timeout, response).await {
        Err(_) => Err(Failure::new(FailureKind::ResponseTimeout)),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            if e.is_go_away() || e.is_io() {
                gone.set(true);
            }
            Err(Failure::because(FailureKind::Send, e))
        }
    }
}

/// Streams a request body that hyper's HTTP/1.1 server read (the hyper
/// path's) onto an opened stream, as the endpoint's window allows; run as
/// a task of its own beside the exchange. A body that fails (the client's
/// fault: the hyper path answers that from the body's state) resets the
/// stream.
pub(crate) async fn send_body<B>(body: B, mut tx: SendStream<Bytes>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                debug!(error = %e, "request body failed; resetting the upstream stream");
                tx.send_reset(h2::Reason::CANCEL);
                return;
            }
            None => {
                let _ = super::body::finish(&mut tx);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(data) => super::body::send_all(&mut tx, data, false).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    let _ = tx.send_trailers(trailers);
                    return;
                }
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = sent {
            debug!(error = %e, "the endpoint stopped taking the request body");
            return;
        }
    }
}

/// Prepares a request's head for an HTTP/2 endpoint: absolute-form URI
/// (its authority becomes `:authority`) and `te: trailers` when the client
/// asked for trailers (gRPC does; RFC 9113 §8.2.2 allows nothing else).
pub(crate) fn for_h2(parts: &mut http::request::Parts, te_trailers: bool) {
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    let mut uri = http::uri::Builder::new().scheme("http");
    if let Some(a) = authority {
        uri = uri.authority(a);
    } else {
        uri = uri.authority("upstream");
    }
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(u) = uri.path_and_query(pq).build() {
        parts.uri = u;
    }
    parts.version = Version::HTTP_2;
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_h2_upstream_request_is_absolute_and_keeps_te_trailers() {
        let (mut parts, ()) = Request::get("/pkg.Svc/Call?x=1")
            .header("host", "api.example:8080")
            .body(())
            .unwrap()
            .into_parts();
        for_h2(&mut parts, true);
        assert_eq!(parts.uri, "http://api.example:8080/pkg.Svc/Call?x=1");
        assert_eq!(parts.version, Version::HTTP_2);
        assert!(parts.headers.get("host").is_none(), ":authority instead");
        assert_eq!(parts.headers["te"], "trailers");
    }
}

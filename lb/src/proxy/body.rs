//! Body types on the hyper path: request bodies forwarded upstream (with an
//! optional size limit) and response bodies sent to clients (streamed from
//! upstream — an HTTP/1.1 exchange's or an HTTP/2 stream's — failures
//! mid-body reported through a hook).

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::upstream::{Reuse, StreamLease};

/// Error raised when a streamed request body exceeds the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// What happened to a client's request body on its way upstream, so a
/// failed forward can be blamed on the right side.
#[derive(Debug, Default)]
pub struct BodyState(AtomicU8);

/// [`BodyState`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Nothing went wrong on the client's side (so far).
    Fine,
    /// The body went over `--max-body-bytes`.
    TooLarge,
    /// The client sent a malformed body (bad chunk framing) or went away.
    ClientError,
}

impl BodyState {
    fn set(&self, outcome: BodyOutcome) {
        self.0.store(outcome as u8, Ordering::Relaxed);
    }

    /// The outcome so far.
    pub fn get(&self) -> BodyOutcome {
        match self.0.load(Ordering::Relaxed) {
            1 => BodyOutcome::TooLarge,
            2 => BodyOutcome::ClientError,
            _ => BodyOutcome::Fine,
        }
    }
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// A client body that is already complete (no bytes to come).
    Done(Incoming),
    /// The client's body, streamed as it arrives, counted against an
    /// optional limit, with client-side failures recorded in `state`.
    Stream {
        /// The client's body.
        inner: Incoming,
        /// Bytes still allowed (`u64::MAX` when unlimited).
        remaining: u64,
        /// The configured limit, for the error.
        limit: u64,
        /// Shared with the request handler.
        state: Arc<BodyState>,
    },
    /// No body (a replayed bodyless request).
    Empty,
}

impl ReqBody {
    /// Wraps a client body; `limit` is `--max-body-bytes`. Returns the body
    /// and, when it still has bytes to come, the state to check on failure.
    pub fn client(inner: Incoming, limit: Option<u64>) -> (Self, Option<Arc<BodyState>>) {
        if inner.is_end_stream() {
            return (ReqBody::Done(inner), None);
        }
        let state = Arc::new(BodyState::default());
        let limit = limit.unwrap_or(u64::MAX);
        let body = ReqBody::Stream {
            inner,
            remaining: limit,
            limit,
            state: state.clone(),
        };
        (body, Some(state))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Done(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ReqBody::Stream {
                inner,
                remaining,
                limit,
                state,
            } => match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if n > *remaining {
                            state.set(BodyOutcome::TooLarge);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                        }
                        *remaining -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    state.set(BodyOutcome::ClientError);
                    Poll::Ready(Some(Err(e.into())))
                }
                None => Poll::Ready(None),
            },
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Done(b) | ReqBody::Stream { inner: b, .. } => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Done(b) | ReqBody::Stream { inner: b, .. } => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An error of a body, whichever side it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from an endpoint: read by hyper's HTTP/1.1 client, or
/// a stream of one of the worker's HTTP/2 connections (its window is given
/// back as its data is passed on, so a slow client holds the endpoint
/// back).
#[derive(Debug)]
pub enum Inbound {
    /// An HTTP/1.1 response body.
    H1(Incoming),
    /// An HTTP/2 response stream.
    H2(h2::RecvStream),
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Inbound::H1(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            Inbound::H2(rx) => match ready!(rx.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = rx.flow_control().release_capacity(data.len());
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                None => match ready!(rx.poll_trailers(cx)) {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::H1(inner) => inner.is_end_stream(),
            Inbound::H2(rx) => rx.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::H1(inner) => inner.size_hint(),
            Inbound::H2(_) => SizeHint::default(),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum RespBody {
    /// Streamed from an upstream response.
    Upstream(UpstreamBody),
    /// Produced by the LB.
    Local(Option<Bytes>),
}

impl From<String> for RespBody {
    /// A local body made per request (a rule's fixed response).
    fn from(text: String) -> Self {
        RespBody::Local(Some(Bytes::from(text)))
    }
}

impl From<&'static str> for RespBody {
    /// A short local body.
    fn from(text: &'static str) -> Self {
        RespBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }
}

impl RespBody {
    /// No body.
    pub fn empty() -> Self {
        RespBody::Local(None)
    }
}

/// Told about an upstream body failing mid-stream (endpoint, error).
pub type BodyErrorHook = Rc<dyn Fn(SocketAddr, &dyn std::fmt::Display)>;

/// What a response body holds of its upstream connection until it ends.
#[derive(Debug)]
pub enum Lease {
    /// Nothing (an upgrade, a connection that closes anyway).
    None,
    /// An HTTP/1.1 connection that goes back to the pool if the body is
    /// read to its end.
    Pooled(Rc<Reuse>),
    /// A stream on an HTTP/2 connection, counted until the body ends.
    Stream(StreamLease),
}

/// Streams an upstream body (see [`UpstreamBody::new`]).
pub struct UpstreamBody {
    inner: Inbound,
    endpoint: SocketAddr,
    lease: Lease,
    on_error: BodyErrorHook,
}

impl UpstreamBody {
    /// Wraps `inner` from `endpoint`. `lease` is released when the body
    /// ends (a pooled connection learns whether it was read to its end);
    /// `on_error` is told about a failure mid-body (for logs and metrics).
    pub fn new(
        inner: Inbound,
        endpoint: SocketAddr,
        lease: Lease,
        on_error: BodyErrorHook,
    ) -> Self {
        Self {
            inner,
            endpoint,
            lease,
            on_error,
        }
    }

    /// Releases the lease: a pooled connection is reusable only if the
    /// whole body was read.
    fn settle(&mut self, failed: bool) {
        if let Lease::Pooled(reuse) = std::mem::replace(&mut self.lease, Lease::None) {
            if self.inner.is_end_stream() && !failed {
                reuse.body_done();
            } else {
                reuse.refuse();
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.settle(false);
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RespBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(u) => {
                let frame = ready!(Pin::new(&mut u.inner).poll_frame(cx));
                match &frame {
                    None => u.settle(false),
                    Some(Ok(_)) if u.inner.is_end_stream() => u.settle(false),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        u.settle(true);
                        (u.on_error)(u.endpoint, &**e);
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Local(b) => b.is_none(),
            RespBody::Upstream(u) => u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Local(None) => SizeHint::with_exact(0),
            RespBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}

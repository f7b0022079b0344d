//! Body types: request bodies forwarded upstream (with an optional size
//! limit) and response bodies sent to clients (streamed from upstream, with
//! the upstream connection returned to the pool once the body has ended).

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Checkin;

/// Error raised when a streamed request body exceeds the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A request body on its way upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// The client's body, streamed as it arrives.
    Stream(Incoming),
    /// The client's body with a byte limit (chunked bodies under `--max-body-bytes`).
    Limited {
        /// The client's body.
        inner: Incoming,
        /// Bytes still allowed.
        remaining: u64,
        /// The configured limit.
        limit: u64,
        /// Set when the limit was hit, so the handler can answer 413.
        exceeded: Arc<AtomicBool>,
    },
    /// No body (a replayed bodyless request).
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Stream(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ReqBody::Limited {
                inner,
                remaining,
                limit,
                exceeded,
            } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    let n = data.len() as u64;
                    if n > *remaining {
                        exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                    }
                    *remaining -= n;
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b) | ReqBody::Limited { inner: b, .. } => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(b) | ReqBody::Limited { inner: b, .. } => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
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

impl RespBody {
    /// A short local body.
    pub fn local(text: &'static str) -> Self {
        RespBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    /// No body.
    pub fn empty() -> Self {
        RespBody::Local(None)
    }
}

/// Streams an upstream body and hands the upstream connection back to the
/// pool as soon as the body has ended. A body that does not end (client went
/// away, upstream reset) drops the connection instead.
/// Told about an upstream body failing mid-stream (endpoint, error).
pub type BodyErrorHook = Rc<dyn Fn(SocketAddr, &hyper::Error)>;

/// Streams an upstream body (see [`UpstreamBody::new`]).
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    endpoint: SocketAddr,
    on_error: BodyErrorHook,
}

impl UpstreamBody {
    /// Wraps `inner` from `endpoint`; `checkin` returns the connection,
    /// `on_error` is told about a failure mid-body (for logs and metrics).
    pub fn new(
        inner: Incoming,
        checkin: Option<Checkin>,
        endpoint: SocketAddr,
        on_error: BodyErrorHook,
    ) -> Self {
        Self {
            inner,
            checkin,
            endpoint,
            on_error,
        }
    }

    fn finish(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.checkin();
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RespBody::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream(u) => {
                let frame = ready!(Pin::new(&mut u.inner).poll_frame(cx));
                match &frame {
                    None => u.finish(),
                    Some(Ok(_)) if u.inner.is_end_stream() => u.finish(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        u.checkin = None;
                        (u.on_error)(u.endpoint, e);
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

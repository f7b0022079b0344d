//! The HTTP/1.1 fast path.
//!
//! Plain bodiless HTTP/1.1 requests (the bulk of load-balanced traffic:
//! `GET /host`) are proxied here without hyper: the request head is parsed
//! once with `httparse` and rewritten into a reused buffer
//! ([`head::parse_request`]), written to a raw pooled TCP connection driven
//! inside the client's own task (no channel, no second task, no per-request
//! allocation or timer registration), and the response head is parsed and
//! rewritten the same way while its body is passed through unchanged
//! (`Content-Length`, chunked — scanned for its end, not re-encoded — or
//! until close).
//!
//! Anything else — a request with a body, an upgrade, HTTP/1.0, a head the
//! parser is not sure about — is handed, with the bytes already read, to the
//! general hyper path ([`super::forward`]) for the rest of the connection,
//! so both paths answer odd input identically. Selection, retries,
//! ejection, timeouts, metrics and log lines are the same as on the general
//! path.

mod buffers;
mod chunked;
pub mod head;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::buffers::{ClientBufs, ClientLoan};
pub use self::chunked::{ChunkedScanner, InvalidChunk};
use self::head::{Framing, Limits, Request, Response, ResponseHead};
use super::forward::{AfterFailure, FailureKind, MAX_TRIES, max_attempts, may_retry};
use super::headers::ClientIp;
use super::pool::Reusable;
use super::{Worker, connect_upstream};
use crate::selection::{Policy, Upstream};

/// Initial and per-read capacity of the client read buffer.
const CLIENT_BUF: usize = 8 * 1024;
/// Per-read capacity of an upstream connection's buffer.
const UPSTREAM_BUF: usize = 16 * 1024;
/// Body bytes already read with the head are sent in the same write as the
/// head up to this size.
const COALESCE: usize = 16 * 1024;

/// A raw HTTP/1.1 connection to an endpoint, with its read buffer (given
/// back to the worker's free list when the connection is dropped).
#[derive(Debug)]
pub struct UpConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl UpConn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: buffers::upstream_buf(),
        }
    }
}

impl Drop for UpConn {
    fn drop(&mut self) {
        buffers::recycle_upstream_buf(std::mem::take(&mut self.buf));
    }
}

impl Reusable for UpConn {
    /// Always false: whether the peer closed it is probed (without a
    /// syscall unless the socket is readable) when it is checked out.
    fn is_closed(&self) -> bool {
        false
    }
}

/// Reads into the spare capacity of `buf` (at least `reserve` bytes). A
/// read that does not fill it has emptied the socket's receive queue, so the
/// socket's readiness is cleared: the next read then waits for the next
/// readiness event instead of first making a `recv` that returns `EAGAIN`
/// (one syscall less per read; new data always brings a new event).
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
) -> io::Result<usize> {
    buf.reserve(reserve);
    let spare = buf.capacity() - buf.len();
    let n = stream.read_buf(buf).await?;
    if n > 0 && n < spare {
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    Ok(n)
}

/// How the fast path left a client connection.
pub(crate) enum Outcome {
    /// Finished (closed by either side, timed out, drained or failed).
    Closed,
    /// To be served by the general path, starting with these bytes.
    Fallback(TcpStream, BytesMut),
}

/// A timer armed once per connection and only moved when it fires: waiting
/// for "`due` or later" costs no timer-wheel operation per request.
struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
}

impl LazyTimer {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
        }
    }

    /// Completes at `due` (not earlier).
    async fn until(&mut self, due: Instant) {
        loop {
            if self.sleep.deadline() > due {
                self.sleep.as_mut().reset(due);
            }
            self.sleep.as_mut().await;
            if Instant::now() >= due {
                return;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

/// Why an attempt failed, for the retry decision and the log line.
struct Failure {
    kind: FailureKind,
    error: Option<String>,
}

impl Failure {
    fn new(kind: FailureKind, error: impl ToString) -> Self {
        Self {
            kind,
            error: Some(error.to_string()),
        }
    }
}

/// How relaying a response body ended.
enum Relay {
    /// The whole body reached the client.
    Done,
    /// The client went away.
    ClientGone,
    /// The upstream failed mid-body; the client connection must be cut.
    Upstream(String),
}

impl Worker {
    /// Serves a client connection on the fast path until it closes or a
    /// request needs the general path.
    pub(crate) async fn serve_fast(
        &self,
        mut stream: TcpStream,
        client: &ClientIp,
        drain: &CancellationToken,
    ) -> Outcome {
        let config = &self.shared.config;
        let limits = Limits {
            max_header_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
        };
        let host_override = self.shared.host_override.as_ref().map(|h| h.as_bytes());
        let mut bufs = ClientLoan::take();
        let ClientBufs { inb, up_head, out } = &mut *bufs;
        let mut header_timer = LazyTimer::new();
        let mut response_timer = LazyTimer::new();
        let cancelled = drain.cancelled();
        tokio::pin!(cancelled);
        loop {
            let due = Instant::now() + config.header_read_timeout;
            let req = loop {
                if !inb.is_empty() {
                    match head::parse_request(
                        inb,
                        limits,
                        client.as_bytes(),
                        host_override,
                        up_head,
                    ) {
                        Request::Ready(req) => break req,
                        Request::Fallback => {
                            // The general path takes the bytes read so far.
                            return Outcome::Fallback(stream, std::mem::take(inb));
                        }
                        Request::Partial => {}
                    }
                }
                tokio::select! {
                    biased;
                    r = read_some(&mut stream, inb, CLIENT_BUF) => match r {
                        Ok(0) | Err(_) => return Outcome::Closed,
                        Ok(_) => {}
                    },
                    () = header_timer.until(due) => {
                        debug!(client = %client.ip, "no complete request head within the header-read timeout; closing");
                        return Outcome::Closed;
                    }
                    () = &mut cancelled, if inb.is_empty() => return Outcome::Closed,
                }
            };
            let close = req.close || drain.is_cancelled();
            let table = self.table();
            let upstream = table.routes.find(Some(req.host(inb)), req.path(inb));
            if upstream.is_none() {
                debug!(path = req.path(inb), "no upstream matches");
            }
            inb.advance(req.len);
            let keep = match upstream {
                None => {
                    self.local_fast(
                        &mut stream,
                        out,
                        StatusCode::NOT_FOUND,
                        "no upstream matches this request\n",
                        "no_route",
                        close,
                    )
                    .await
                }
                Some(upstream) => {
                    self.forward_fast(
                        &mut stream,
                        upstream,
                        up_head,
                        req.idempotent,
                        req.head,
                        close,
                        out,
                        &mut response_timer,
                    )
                    .await
                }
            };
            if !keep {
                let _ = stream.shutdown().await;
                return Outcome::Closed;
            }
        }
    }

    /// Writes a response of the LB's own; returns whether the connection
    /// stays open.
    async fn local_fast(
        &self,
        stream: &mut TcpStream,
        out: &mut Vec<u8>,
        status: StatusCode,
        body: &'static str,
        reason: &'static str,
        close: bool,
    ) -> bool {
        self.shared.metrics.local(reason);
        head::local_response(out, status, body, close);
        stream.write_all(out).await.is_ok() && !close
    }

    /// Forwards one request (its rewritten head is `up_head`) with the
    /// general path's selection, retry and error rules; returns whether
    /// the client connection stays open.
    #[allow(clippy::too_many_arguments)]
    async fn forward_fast(
        &self,
        stream: &mut TcpStream,
        upstream: &Upstream,
        up_head: &[u8],
        idempotent: bool,
        head_request: bool,
        close: bool,
        out: &mut Vec<u8>,
        timer: &mut LazyTimer,
    ) -> bool {
        let shared = &self.shared;
        let Some(mut idx) = upstream.pick() else {
            warn!(upstream = %upstream.name, "no endpoints available; answering 503");
            return self
                .local_fast(
                    stream,
                    out,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no endpoints available\n",
                    "no_endpoints",
                    close,
                )
                .await;
        };
        let policy = &upstream.policy;
        let max_attempts = max_attempts(upstream);
        let mut tried = [usize::MAX; MAX_TRIES];
        let mut attempts = 0;
        let start = std::time::Instant::now();
        let (mut conn, resp) = loop {
            tried[attempts] = idx;
            attempts += 1;
            let endpoint = &upstream.endpoints[idx];
            let failure = match self
                .exchange(
                    endpoint.addr,
                    up_head,
                    head_request,
                    close,
                    policy,
                    timer,
                    out,
                )
                .await
            {
                Ok(r) => break r,
                Err(f) => f,
            };
            // Nothing was sent when connecting failed; otherwise the request
            // (bodiless) can be replayed if it is idempotent.
            let retry = may_retry(failure.kind, failure.kind.is_connect(), idempotent);
            match self.after_failure(
                upstream,
                &tried[..attempts],
                max_attempts,
                failure.kind,
                failure.error.as_deref(),
                retry,
            ) {
                AfterFailure::Retry(next) => idx = next,
                AfterFailure::GiveUp(status, body, reason) => {
                    return self
                        .local_fast(stream, out, status, body, reason, close)
                        .await;
                }
            }
        };
        let endpoint = &upstream.endpoints[idx];
        endpoint.record_response(resp.status);
        shared.metrics.duration.observe(self.id, start.elapsed());
        match relay(stream, &mut conn, resp, out).await {
            Relay::Done => {
                if resp.reusable && conn.buf.is_empty() {
                    self.fast_pool.checkin(endpoint.addr, conn);
                }
                !resp.close
            }
            Relay::ClientGone => false,
            Relay::Upstream(error) => {
                shared.metrics.upstream_error("body");
                warn!(endpoint = %endpoint.addr, error, "upstream response body failed mid-stream; aborting the client response");
                false
            }
        }
    }

    /// A pooled connection to `addr` whose peer has not closed it.
    fn checkout_fast(&self, addr: SocketAddr) -> Option<UpConn> {
        while let Some(conn) = self.fast_pool.checkout(addr) {
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
                // Closed (0), unexpected bytes or an error: not reusable.
                _ => {
                    debug!(endpoint = %addr, "pooled connection closed by the endpoint; discarding")
                }
            }
        }
        None
    }

    /// One attempt: sends `up_head` to `addr` and reads the response head
    /// (skipping interim 1xx responses), rewriting it into `out`.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        addr: SocketAddr,
        up_head: &[u8],
        head_request: bool,
        client_close: bool,
        policy: &Policy,
        timer: &mut LazyTimer,
        out: &mut Vec<u8>,
    ) -> Result<(UpConn, ResponseHead), Failure> {
        loop {
            let (mut conn, reused) = match self.checkout_fast(addr) {
                Some(conn) => (conn, true),
                None => match connect_upstream(addr, policy.connect_timeout).await {
                    Ok(stream) => (UpConn::new(stream), false),
                    Err((kind, e)) => {
                        return Err(Failure {
                            kind,
                            error: e.map(|e| e.to_string()),
                        });
                    }
                },
            };
            if let Err(e) = conn.stream.write_all(up_head).await {
                if reused {
                    // The keep-alive race, caught before anything was read:
                    // try another (or a new) connection to the same endpoint.
                    continue;
                }
                return Err(Failure::new(FailureKind::Send, e));
            }
            let lost = if reused {
                FailureKind::Reused
            } else {
                FailureKind::Send
            };
            let due = Instant::now() + policy.response_header_timeout;
            loop {
                let read = tokio::select! {
                    biased;
                    r = read_some(&mut conn.stream, &mut conn.buf, UPSTREAM_BUF) => r,
                    () = timer.until(due) => {
                        return Err(Failure { kind: FailureKind::ResponseTimeout, error: None });
                    }
                };
                match read {
                    Ok(0) => {
                        return Err(Failure::new(
                            lost,
                            "connection closed before a complete response head",
                        ));
                    }
                    Err(e) => return Err(Failure::new(lost, e)),
                    Ok(_) => {}
                }
                loop {
                    match head::parse_response(&conn.buf, head_request, client_close, out) {
                        Ok(Response::Partial) => break,
                        Ok(Response::Interim { len }) => conn.buf.advance(len),
                        Ok(Response::Ready(resp)) => return Ok((conn, resp)),
                        Err(bad) => return Err(Failure::new(lost, bad)),
                    }
                    if conn.buf.is_empty() {
                        break;
                    }
                }
            }
        }
    }
}

/// Sends the rewritten head in `out` and the body from `conn` to the client.
async fn relay(
    client: &mut TcpStream,
    conn: &mut UpConn,
    resp: ResponseHead,
    out: &mut Vec<u8>,
) -> Relay {
    conn.buf.advance(resp.len);
    let mut scanner = ChunkedScanner::new();
    // The body bytes that came with the head: sent with it when small.
    let first = match resp.framing {
        Framing::Empty => 0,
        Framing::Length(n) => n.min(conn.buf.len() as u64) as usize,
        Framing::UntilClose => conn.buf.len(),
        Framing::Chunked => match scanner.scan(&conn.buf) {
            Ok(n) => n,
            Err(e) => return Relay::Upstream(e.to_string()),
        },
    };
    if send_first(client, conn, out, first).await.is_err() {
        return Relay::ClientGone;
    }
    match resp.framing {
        Framing::Empty => Relay::Done,
        Framing::Chunked if scanner.is_done() => Relay::Done,
        Framing::Chunked => relay_chunked(client, conn, scanner).await,
        Framing::Length(n) => {
            let mut remaining = n - first as u64;
            while remaining > 0 {
                if let Err(e) = refill(conn).await {
                    return Relay::Upstream(e);
                }
                let take = (conn.buf.len() as u64).min(remaining) as usize;
                if client.write_all(&conn.buf[..take]).await.is_err() {
                    return Relay::ClientGone;
                }
                conn.buf.advance(take);
                remaining -= take as u64;
            }
            Relay::Done
        }
        Framing::UntilClose => loop {
            conn.buf.clear();
            match read_some(&mut conn.stream, &mut conn.buf, UPSTREAM_BUF).await {
                Ok(0) => return Relay::Done,
                Ok(_) => {}
                Err(e) => return Relay::Upstream(e.to_string()),
            }
            if client.write_all(&conn.buf).await.is_err() {
                return Relay::ClientGone;
            }
        },
    }
}

/// Writes the head in `out` and the first `n` body bytes of `conn.buf`.
async fn send_first(
    client: &mut TcpStream,
    conn: &mut UpConn,
    out: &mut Vec<u8>,
    n: usize,
) -> io::Result<()> {
    let sent = if n <= COALESCE {
        out.extend_from_slice(&conn.buf[..n]);
        client.write_all(out).await
    } else {
        match client.write_all(out).await {
            Ok(()) => client.write_all(&conn.buf[..n]).await,
            Err(e) => Err(e),
        }
    };
    conn.buf.advance(n);
    sent
}

/// Passes the rest of a chunked body through until its end.
async fn relay_chunked(
    client: &mut TcpStream,
    conn: &mut UpConn,
    mut scanner: ChunkedScanner,
) -> Relay {
    loop {
        if let Err(e) = refill(conn).await {
            return Relay::Upstream(e);
        }
        let n = match scanner.scan(&conn.buf) {
            Ok(n) => n,
            Err(e) => return Relay::Upstream(e.to_string()),
        };
        if client.write_all(&conn.buf[..n]).await.is_err() {
            return Relay::ClientGone;
        }
        conn.buf.advance(n);
        if scanner.is_done() {
            return Relay::Done;
        }
    }
}

/// Reads more body bytes into the (consumed) buffer; end of stream is an
/// error because the body is not complete.
async fn refill(conn: &mut UpConn) -> Result<(), String> {
    conn.buf.clear();
    match read_some(&mut conn.stream, &mut conn.buf, UPSTREAM_BUF).await {
        Ok(0) => Err("connection closed mid-body".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

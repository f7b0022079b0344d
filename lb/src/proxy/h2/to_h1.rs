//! HTTP/2 streams to HTTP/1.1 endpoints: the request head written as bytes
//! ([`head::write_request`]) on a raw connection from the worker's one pool
//! (the fast path's connections), the request body streamed after it as
//! the client sends it, the response head parsed once
//! ([`head::parse_response`]) and its body passed to the client's stream as
//! its flow-control window allows.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::Method;
use http::request::Parts;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::body::{BodyError, send_all};
use super::call::{Call, Done, Forwarding, declared_length};
use super::head::{self, BodyFraming, Head, Parsed};
use crate::discovery::route::HeaderEdits;
use crate::proxy::access_log::Forwarded;
use crate::proxy::attempt::{
    Failure, FailureKind, SendFailure, Transport, body_failed, is_idempotent,
};
use crate::proxy::buffers::UPSTREAM_BUF;
use crate::proxy::fast::ChunkedScanner;
use crate::proxy::fast::head::{Framing, RequestEdits};
use crate::proxy::local::{BadRequest, Local};
use crate::proxy::stream::ClientStream;
use crate::proxy::upstream::{Pool, UpConn};
use crate::selection::Policy;

/// Forwards a stream's request to an HTTP/1.1 Upstream and relays the
/// response; the client resetting the stream abandons the exchange (and
/// the upstream connection).
pub(super) async fn forward(
    call: &Call<'_>,
    fwd: &Forwarding<'_>,
    parts: &Parts,
    mut body: RecvStream,
    respond: &mut SendResponse<Bytes>,
) -> Done {
    let w = call.w;
    let filters = fwd.filters();
    let framing = if body.is_end_stream() {
        BodyFraming::None
    } else {
        declared_length(parts).map_or(BodyFraming::Chunked, BodyFraming::Length)
    };
    let mut up_head = Vec::with_capacity(512);
    head::write_request(
        parts,
        &head::Forwarding {
            client: call.client,
            host_override: w.shared.host_override.as_ref().map(|h| h.as_bytes()),
            request_id: call.request_id,
            edits: filters.map(|filters| RequestEdits {
                filters,
                matched: fwd.target.hit.path,
            }),
            host_override_value: None,
        },
        framing,
        &mut up_head,
    );
    let bodiless = framing == BodyFraming::None;
    let mut transport = ToH1 {
        pool: &w.pool,
        head: &up_head,
        body: (!bodiless).then(|| RequestBody::new(&mut body, framing, fwd.max_body)),
        idempotent: bodiless && is_idempotent(&parts.method),
        head_request: parts.method == Method::HEAD,
        response_edits: filters
            .map(|f| &f.response_headers)
            .filter(|e| !e.is_empty()),
        call,
        fault: None,
    };
    let (answered, forwarded) = {
        let forward = w.forward(fwd.target, &mut transport, ());
        tokio::select! {
            biased;
            r = forward => r,
            reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                debug!(client = %call.client.ip, reset = ?reset.ok(), "stream reset by the client while forwarded");
                return Done { status: 0, bytes: 0, forwarded: Forwarded::default() };
            }
        }
    };
    let body_done = transport.body.as_ref().is_none_or(|b| b.done);
    drop(transport);
    let (idx, at, (mut conn, head)) = match answered {
        Ok(a) => (a.idx, a.at, a.response),
        Err(local) => {
            return Done {
                forwarded,
                ..call.local(respond, local)
            };
        }
    };
    let endpoint = fwd.target.upstream.endpoints[idx].addr;
    let Head {
        len,
        first,
        framing,
        reusable,
        mut response,
    } = head;
    fwd.response_filters(response.headers_mut(), idx);
    conn.buf.advance(len);
    let status = response.status().as_u16();
    let empty = matches!(framing, Framing::Empty | Framing::Length(0));
    let mut tx = match respond.send_response(response, empty) {
        Ok(tx) => tx,
        Err(e) => {
            debug!(client = %call.client.ip, error = %e, "cannot answer the stream");
            return Done {
                status,
                bytes: 0,
                forwarded,
            };
        }
    };
    let (relayed, bytes) = if empty {
        (Ok(()), 0)
    } else {
        relay(&mut conn, framing, first, &mut tx).await
    };
    match relayed {
        Ok(()) => {
            if reusable && body_done && conn.buf.is_empty() {
                w.pool.checkin(endpoint, conn, at);
            }
        }
        Err(Relay::ClientGone) => {}
        Err(Relay::Upstream(error)) => {
            body_failed(&w.shared.metrics, endpoint, &error);
            tx.send_reset(Reason::INTERNAL_ERROR);
        }
    }
    Done {
        status,
        bytes,
        forwarded,
    }
}

/// The transport for one stream's request: its head written on a raw
/// pooled connection, then its body (if any), while the response head is
/// read.
struct ToH1<'a, 'c> {
    /// The worker's connection pool.
    pool: &'a Pool,
    /// The request head, as HTTP/1.1 bytes.
    head: &'a [u8],
    /// The request body, still to be sent (or being sent).
    body: Option<RequestBody<'a>>,
    /// An idempotent bodiless request can be replayed after it was sent.
    idempotent: bool,
    /// `HEAD`: the response has no body.
    head_request: bool,
    /// The route rule's response header edits, when it has any.
    response_edits: Option<&'a HeaderEdits>,
    call: &'a Call<'c>,
    /// What the client's body did wrong, when that ended the attempt.
    fault: Option<Local>,
}

impl<'a> Transport for ToH1<'a, '_> {
    type Connector = &'a Pool;
    /// The request is `head` (and `body`); an attempt needs nothing else.
    type Request = ();
    type Response = (UpConn, Head);

    fn connector(&mut self) -> &mut &'a Pool {
        &mut self.pool
    }

    async fn send(
        &mut self,
        _addr: SocketAddr,
        mut conn: UpConn,
        (): (),
        policy: &Policy,
    ) -> Result<(UpConn, Head), SendFailure<()>> {
        if let Err(e) = conn.stream.write_all(self.head).await {
            // Nothing the endpoint could act on: the head is only acted on
            // when complete, and no body byte was taken from the client.
            return Err(SendFailure::unsent(
                Failure::because(FailureKind::Send, e),
                (),
            ));
        }
        let due = Instant::now() + self.call.timeout(policy);
        let (head_request, edits) = (self.head_request, self.response_edits);
        let (body, fault) = (&mut self.body, &mut self.fault);
        let head = poll_fn(|cx| {
            if let Some(head) = ready_head(cx, &mut conn, head_request, edits)? {
                return Poll::Ready(Ok(head));
            }
            if let Some(body) = body.as_mut()
                && !body.done
                && let Poll::Ready(Err(e)) = body.poll_send(cx, &mut conn.stream)
            {
                return Poll::Ready(Err(match e {
                    BodyFault::Client(local) => {
                        *fault = Some(local);
                        Failure::new(FailureKind::Send)
                    }
                    BodyFault::Upstream(e) => Failure::because(FailureKind::Send, e),
                }));
            }
            if conn.timer.poll_until(cx, due).is_ready() {
                return Poll::Ready(Err(Failure::new(FailureKind::ResponseTimeout)));
            }
            Poll::Pending
        })
        .await;
        match head {
            Ok(head) => Ok((conn, head)),
            Err(failure) => Err(SendFailure::sent(failure)),
        }
    }

    fn status((_, head): &(UpConn, Head)) -> u16 {
        head.response.status().as_u16()
    }

    fn can_replay(&self) -> bool {
        self.idempotent
    }

    fn replay(&mut self) -> Option<()> {
        self.idempotent.then_some(())
    }

    fn client_fault(&self) -> Option<Local> {
        self.fault
    }
}

/// Reads from `conn` until a final response head is complete (interim 1xx
/// heads are skipped): `Some` when it is, `None` when more must come.
fn ready_head(
    cx: &mut Context<'_>,
    conn: &mut UpConn,
    head_request: bool,
    edits: Option<&HeaderEdits>,
) -> Result<Option<Head>, Failure> {
    loop {
        while !conn.buf.is_empty() {
            match head::parse_response(&conn.buf, head_request, edits) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Interim(len)) => conn.buf.advance(len),
                Ok(Parsed::Ready(head)) => return Ok(Some(head)),
                Err(bad) => return Err(Failure::because(FailureKind::Send, bad)),
            }
        }
        match poll_fill(cx, &mut conn.stream, &mut conn.buf) {
            Poll::Pending => return Ok(None),
            Poll::Ready(Ok(0)) => {
                return Err(Failure::because(
                    FailureKind::Send,
                    "connection closed before a complete response head",
                ));
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Err(Failure::because(FailureKind::Send, e)),
        }
    }
}

/// Reads what the socket has into `buf` (at least [`UPSTREAM_BUF`] bytes of
/// room); a read that does not fill the room emptied the receive queue, so
/// the socket's readiness is cleared (the next read waits for the next
/// event instead of first failing with `EAGAIN`).
fn poll_fill(
    cx: &mut Context<'_>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    buf.reserve(UPSTREAM_BUF);
    loop {
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < room {
                    stream.drained();
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_read_ready(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Why sending a request body failed.
enum BodyFault {
    /// The client's fault: its body is over the limit, or it broke.
    Client(Local),
    /// The endpoint's connection failed.
    Upstream(io::Error),
}

/// A request body on its way from the client's stream to an HTTP/1.1
/// endpoint: each DATA frame written as it comes (chunked when the client
/// declared no length), and its flow-control window given back once
/// written, so the client sends only as fast as the endpoint takes it.
struct RequestBody<'a> {
    rx: &'a mut RecvStream,
    chunked: bool,
    /// Bytes being written.
    out: Bytes,
    /// Window to give back once `out` is written.
    release: usize,
    /// The client's body has ended (its end is in `out`).
    ended: bool,
    /// All of it was written.
    done: bool,
    /// Bytes still allowed (`u64::MAX`: no limit).
    remaining: u64,
}

impl<'a> RequestBody<'a> {
    fn new(rx: &'a mut RecvStream, framing: BodyFraming, limit: Option<u64>) -> Self {
        Self {
            rx,
            chunked: framing == BodyFraming::Chunked,
            out: Bytes::new(),
            release: 0,
            ended: false,
            done: false,
            remaining: limit.unwrap_or(u64::MAX),
        }
    }

    /// Writes what the client has sent so far; ready when all was written
    /// (or failed).
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        up: &mut TcpStream,
    ) -> Poll<Result<(), BodyFault>> {
        loop {
            if !self.out.is_empty() {
                let n = ready!(Pin::new(&mut *up).poll_write(cx, &self.out))
                    .map_err(BodyFault::Upstream)?;
                if n == 0 {
                    return Poll::Ready(Err(BodyFault::Upstream(io::ErrorKind::WriteZero.into())));
                }
                self.out.advance(n);
                if self.out.is_empty() && self.release > 0 {
                    let _ = self.rx.flow_control().release_capacity(self.release);
                    self.release = 0;
                }
                continue;
            }
            if self.ended {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_data(cx)) {
                Some(Ok(data)) => {
                    let n = data.len();
                    if n as u64 > self.remaining {
                        debug!("streamed request body over the limit; answering 413");
                        return Poll::Ready(Err(BodyFault::Client(Local::BodyTooLarge)));
                    }
                    self.remaining -= n as u64;
                    self.release = n;
                    if n == 0 {
                        continue;
                    }
                    self.out = if self.chunked {
                        let mut c = BytesMut::with_capacity(n + 20);
                        c.put_slice(format!("{n:x}\r\n").as_bytes());
                        c.put_slice(&data);
                        c.put_slice(b"\r\n");
                        c.freeze()
                    } else {
                        data
                    };
                }
                Some(Err(e)) => {
                    debug!(error = %e, "request body aborted by the client; answering 400");
                    return Poll::Ready(Err(BodyFault::Client(Local::BadRequest(
                        BadRequest::MalformedBody,
                    ))));
                }
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.out = Bytes::from_static(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}

/// How relaying a response body ended badly.
enum Relay {
    /// The client's stream went away (reset, or its connection).
    ClientGone,
    /// The upstream failed mid-body.
    Upstream(String),
}

/// Passes the response body (`first`, the bytes that came with the head,
/// then the rest from `conn`, as `framing` delimits it) to the client's
/// stream; also returns the body bytes sent.
async fn relay(
    conn: &mut UpConn,
    framing: Framing,
    first: Bytes,
    tx: &mut SendStream<Bytes>,
) -> (Result<(), Relay>, u64) {
    let mut sent = 0;
    let result = match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => relay_length(conn, n, first, tx, &mut sent).await,
        Framing::Chunked => relay_chunked(conn, tx, &mut sent).await,
        Framing::UntilClose => relay_until_close(conn, first, tx, &mut sent).await,
    };
    (result, sent)
}

/// Sends `data` (the end of the body when `end`) as the client's window
/// allows.
async fn send(
    tx: &mut SendStream<Bytes>,
    data: Bytes,
    end: bool,
    sent: &mut u64,
) -> Result<(), Relay> {
    let n = data.len() as u64;
    match send_all(tx, data, end).await {
        Ok(()) => {
            *sent += n;
            Ok(())
        }
        Err(BodyError::Send(_) | BodyError::Recv(_) | BodyError::TooLarge) => {
            Err(Relay::ClientGone)
        }
    }
}

/// Sends the body bytes that came with the head without waiting for the
/// client's window: they are already in memory (at most one read, the
/// bound the window would give anyway), and most responses are that
/// small, so this saves the window's bookkeeping. Anything after them
/// waits for the window ([`send`]).
fn send_first(
    tx: &mut SendStream<Bytes>,
    data: Bytes,
    end: bool,
    sent: &mut u64,
) -> Result<(), Relay> {
    let n = data.len() as u64;
    if n == 0 && !end {
        return Ok(());
    }
    tx.send_data(data, end).map_err(|_| Relay::ClientGone)?;
    *sent += n;
    Ok(())
}

/// Reads more of the body from the endpoint, or notices that the client
/// reset its stream meanwhile.
async fn refill(conn: &mut UpConn, tx: &mut SendStream<Bytes>) -> Result<(), Relay> {
    conn.buf.clear();
    let read = tokio::select! {
        r = conn.stream.read_buf(&mut *conn.buf) => r,
        _ = poll_fn(|cx| tx.poll_reset(cx)) => return Err(Relay::ClientGone),
    };
    match read {
        Ok(0) => Err(Relay::Upstream("connection closed mid-body".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(Relay::Upstream(e.to_string())),
    }
}

async fn relay_length(
    conn: &mut UpConn,
    n: u64,
    first: Bytes,
    tx: &mut SendStream<Bytes>,
    sent: &mut u64,
) -> Result<(), Relay> {
    let mut remaining = n - first.len() as u64;
    send_first(tx, first, remaining == 0, sent)?;
    while remaining > 0 {
        refill(conn, tx).await?;
        let take = (conn.buf.len() as u64).min(remaining) as usize;
        remaining -= take as u64;
        let data = Bytes::copy_from_slice(&conn.buf[..take]);
        conn.buf.advance(take);
        send(tx, data, remaining == 0, sent).await?;
    }
    Ok(())
}

/// Decodes the chunked body and sends what each read brought as one DATA
/// frame, whatever its chunk sizes: a backend writing many tiny chunks
/// must not become a flood of tiny frames (which HTTP/2 clients count
/// against the connection).
async fn relay_chunked(
    conn: &mut UpConn,
    tx: &mut SendStream<Bytes>,
    sent: &mut u64,
) -> Result<(), Relay> {
    let mut scanner = ChunkedScanner::new();
    let mut data = BytesMut::new();
    loop {
        let mut at = 0;
        while at < conn.buf.len() && !scanner.is_done() {
            let (n, run) = scanner
                .scan_data(&conn.buf[at..])
                .map_err(|e| Relay::Upstream(e.to_string()))?;
            data.extend_from_slice(&conn.buf[at..][run]);
            at += n;
        }
        conn.buf.advance(at);
        let done = scanner.is_done();
        if !data.is_empty() || done {
            send(tx, data.split().freeze(), done, sent).await?;
        }
        if done {
            return Ok(());
        }
        refill(conn, tx).await?;
    }
}

async fn relay_until_close(
    conn: &mut UpConn,
    first: Bytes,
    tx: &mut SendStream<Bytes>,
    sent: &mut u64,
) -> Result<(), Relay> {
    send_first(tx, first, false, sent)?;
    loop {
        conn.buf.clear();
        let read = tokio::select! {
            r = conn.stream.read_buf(&mut *conn.buf) => r,
            _ = poll_fn(|cx| tx.poll_reset(cx)) => return Err(Relay::ClientGone),
        };
        match read {
            Ok(0) => return super::body::finish(tx).map_err(|_| Relay::ClientGone),
            Ok(_) => {}
            Err(e) => return Err(Relay::Upstream(e.to_string())),
        }
        let data = Bytes::copy_from_slice(&conn.buf);
        send(tx, data, false, sent).await?;
    }
}

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
//! general hyper path (`general.rs`) for the rest of the connection, so both
//! paths answer odd input identically. Routing, selection, retries,
//! ejection, timeouts, local responses, metrics and log lines are the
//! attempt core's (`attempt.rs`); this module is only a transport
//! (`RawH1`).

mod chunked;
pub mod head;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

pub use self::chunked::{ChunkedScanner, InvalidChunk};
use self::head::{Fields, Framing, Limits, Parse, Parsed, RequestEdits, Response, ResponseHead};
use super::Worker;
use super::access_log::{Forwarded, Record};
use super::attempt::{Decision, Failure, FailureKind, SendFailure, Target, Transport, body_failed};
use super::buffers::{CLIENT_BUF, COALESCE, ClientBufs, ClientLoan, UPSTREAM_BUF, pooled};
use super::drain::Drain;
use super::headers::ClientIp;
use super::local::{Local, Reply};
use super::park::Parked;
use super::stream::{ClientStream, h2_preface};
use super::timer::LazyTimer;
use super::upstream::{Pool, UpConn};
use crate::discovery::route::HeaderEdits;
use crate::selection::{Policy, RequestView, RoutingTable, RuleAction};

/// Reads into the spare capacity of `buf` (at least `reserve` bytes). A
/// read that does not fill it has emptied the socket's receive queue
/// ([`ClientStream::drained`]).
async fn read_some<S: ClientStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    reserve: usize,
) -> io::Result<usize> {
    buf.reserve(reserve);
    let spare = buf.capacity() - buf.len();
    let n = stream.read_buf(buf).await?;
    if n > 0 && n < spare {
        stream.drained();
    }
    Ok(n)
}

/// How the fast path left a client connection.
pub(crate) enum Outcome<S> {
    /// Finished (closed by either side, timed out, drained or failed).
    Closed,
    /// To be served by the general path, starting with these bytes.
    Fallback(S, BytesMut, Rc<ClientIp>),
    /// The connection opened with the HTTP/2 preface (h2c with prior
    /// knowledge): to be served by the HTTP/2 server, starting with these
    /// bytes.
    Http2(S, BytesMut, Rc<ClientIp>),
    /// Idle for `--idle-park-after`: it waits in the worker's table of
    /// parked connections (`park`), still open and counted.
    Parked,
}

/// How a connection starts on the fast path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    /// Nothing was read on it yet: it may open with the HTTP/2 preface.
    pub(crate) h2c: bool,
    /// A plain socket from the plain listener, which may be parked when
    /// idle. (One taken out of the table is due from now again, as a new
    /// one is: the idle wait and the wait for a request head are timed
    /// separately, as in nginx.)
    pub(crate) parkable: bool,
}

/// What woke a connection waiting for its next request.
#[derive(PartialEq, Eq)]
enum Woke {
    /// Bytes or a close (`false`: an error).
    Readable(bool),
    /// Idle for `--idle-park-after`.
    Park,
    /// The header-read timeout, or the worker is draining.
    Done,
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

/// The fast path's upstream transport: the rewritten request head (the
/// request is bodiless) written on a raw pooled connection, the response
/// head parsed and rewritten into `out`.
struct RawH1<'a> {
    /// The worker's connection pool.
    pool: &'a Pool,
    /// The rewritten request head.
    head: &'a [u8],
    /// An idempotent request can be replayed after it was sent.
    idempotent: bool,
    /// `HEAD`: the response has no body.
    head_request: bool,
    /// The client asked to close after this response.
    client_close: bool,
    /// The route's response header edits, if it has any.
    response_edits: Option<&'a HeaderEdits>,
    out: &'a mut Vec<u8>,
}

impl<'a> Transport for RawH1<'a> {
    type Connector = &'a Pool;
    /// The request is `head`; an attempt needs nothing else.
    type Request = ();
    type Response = (UpConn, ResponseHead);

    fn connector(&mut self) -> &mut &'a Pool {
        &mut self.pool
    }

    /// Writes the head and reads the response head, skipping interim 1xx
    /// responses.
    async fn send(
        &mut self,
        _addr: SocketAddr,
        mut conn: UpConn,
        (): (),
        policy: &Policy,
    ) -> Result<(UpConn, ResponseHead), SendFailure<()>> {
        if let Err(e) = conn.stream.write_all(self.head).await {
            // Nothing reached the endpoint that it could act on: a bodiless
            // head is only acted on when complete.
            return Err(SendFailure::unsent(
                Failure::because(FailureKind::Send, e),
                (),
            ));
        }
        let due = Instant::now() + policy.response_header_timeout;
        loop {
            let read = tokio::select! {
                biased;
                r = read_some(&mut conn.stream, &mut conn.buf, UPSTREAM_BUF) => r,
                () = conn.timer.until(due) => {
                    return Err(SendFailure::sent(Failure::new(FailureKind::ResponseTimeout)));
                }
            };
            match read {
                Ok(0) => {
                    return Err(SendFailure::sent(Failure::because(
                        FailureKind::Send,
                        "connection closed before a complete response head",
                    )));
                }
                Err(e) => return Err(SendFailure::sent(Failure::because(FailureKind::Send, e))),
                Ok(_) => {}
            }
            loop {
                match head::parse_response(
                    &conn.buf,
                    self.head_request,
                    self.client_close,
                    self.response_edits,
                    self.out,
                ) {
                    Ok(Response::Partial) => break,
                    Ok(Response::Interim { len }) => conn.buf.advance(len),
                    Ok(Response::Ready(resp)) => return Ok((conn, resp)),
                    Err(bad) => {
                        return Err(SendFailure::sent(Failure::because(FailureKind::Send, bad)));
                    }
                }
                if conn.buf.is_empty() {
                    break;
                }
            }
        }
    }

    fn status((_, resp): &(UpConn, ResponseHead)) -> u16 {
        resp.status
    }

    fn can_replay(&self) -> bool {
        self.idempotent
    }

    fn replay(&mut self) -> Option<()> {
        self.idempotent.then_some(())
    }
}

/// A fast-path client connection between requests: what its task holds
/// while the connection is idle. The buffers and the much larger state of
/// serving a request are not in it: they are on loan ([`ClientLoan`]) and
/// in a pooled box ([`pooled`]) only while requests are read or served.
struct Conn<S> {
    stream: S,
    client: Rc<ClientIp>,
    drain: Drain,
    /// The connection may still open with the HTTP/2 preface.
    h2c: bool,
    /// It is parked after `--idle-park-after` without a byte.
    park: bool,
    header_timer: LazyTimer,
    /// Method, target and request id of the current request, kept for its
    /// access log line (only when the log is on; reused by the next one).
    meta: Option<Box<LogMeta>>,
}

/// How a burst of requests ended: back to the idle wait, or done with the
/// fast path.
type Burst<S> = Result<Conn<S>, Outcome<S>>;

/// What serving one request left to do.
enum Step {
    /// More bytes (a pipelined request) are already buffered.
    Next,
    /// The buffer is empty: wait for the client again.
    Idle,
    /// The connection is finished.
    Closed,
    /// To the general path, with these bytes.
    Fallback(BytesMut),
    /// To the HTTP/2 server, with these bytes.
    Http2(BytesMut),
}

/// Serves the requests of a connection that became readable until its
/// buffer is empty again or it leaves the fast path. It owns what it uses
/// so that it can run in a pooled box instead of inline in the connection's
/// task, whose size is then what an idle connection costs.
async fn burst<S: ClientStream>(w: Rc<Worker>, mut conn: Conn<S>, mut due: Instant) -> Burst<S> {
    // On loan until the buffer is empty again.
    let mut bufs = ClientLoan::take();
    if conn.park {
        // tokio takes a new connection to be readable before it has seen
        // it so (saving a wait when the request is there already), and a
        // woken one's readiness may be a close: read once without waiting,
        // and go back to the idle wait (which parks) if nothing is there.
        match read_some(&mut conn.stream, &mut bufs.inb, CLIENT_BUF).now_or_never() {
            None => return Ok(conn),
            Some(Ok(0) | Err(_)) => return Err(Outcome::Closed),
            Some(Ok(_)) => {}
        }
    }
    loop {
        match serve_one(&w, &mut conn, &mut bufs, due).await {
            Step::Next => due = Instant::now() + w.shared.config.header_read_timeout,
            Step::Idle => return Ok(conn),
            Step::Closed => return Err(Outcome::Closed),
            Step::Fallback(inb) => return Err(Outcome::Fallback(conn.stream, inb, conn.client)),
            Step::Http2(inb) => return Err(Outcome::Http2(conn.stream, inb, conn.client)),
        }
    }
}

/// Reads one request head (complete by `due`) and serves it.
async fn serve_one<S: ClientStream>(
    w: &Worker,
    conn: &mut Conn<S>,
    bufs: &mut ClientBufs,
    due: Instant,
) -> Step {
    let config = &w.shared.config;
    let limits = Limits {
        max_header_bytes: config.max_header_bytes,
        max_headers: config.max_headers,
    };
    let host_override = w.shared.host_override.as_ref().map(|h| h.as_bytes());
    let Conn {
        stream,
        client,
        drain,
        h2c,
        header_timer,
        meta,
        ..
    } = conn;
    let ClientBufs { inb, up_head, out } = bufs;
    let cancelled = drain.cancelled();
    tokio::pin!(cancelled);
    let table = w.table();
    let (req, decision) = loop {
        if *h2c && !inb.is_empty() {
            match h2_preface(inb) {
                Some(true) => return Step::Http2(std::mem::take(inb)),
                Some(false) => *h2c = false,
                None => {}
            }
        }
        if !*h2c && !inb.is_empty() {
            // Parsed, routed and rewritten in one go, with nothing held
            // across an await.
            let routed = {
                let mut fields = Fields::new();
                match head::parse(inb, limits, &mut fields) {
                    Parse::Ready(parsed) => match w.decide_fast(&table, client, &parsed) {
                        Some(decision) => {
                            let edits = match &decision {
                                Decision::Forward(t) => {
                                    t.hit.rule.filters.as_deref().map(|filters| RequestEdits {
                                        filters,
                                        matched: t.hit.path,
                                    })
                                }
                                Decision::Reply(..) => None,
                            };
                            Some(Some((
                                parsed.write(client, host_override, edits, up_head),
                                decision,
                            )))
                        }
                        None => Some(None),
                    },
                    Parse::Fallback => Some(None),
                    Parse::Partial => None,
                }
            };
            match routed {
                Some(Some(ready)) => break ready,
                // The general path takes the bytes read so far (and parses
                // them again).
                Some(None) => return Step::Fallback(std::mem::take(inb)),
                None => {}
            }
        }
        tokio::select! {
            biased;
            r = read_some(stream, inb, CLIENT_BUF) => match r {
                Ok(0) | Err(_) => return Step::Closed,
                Ok(_) => {}
            },
            () = header_timer.until(due) => {
                debug!(client = %client.ip, "no complete request head within the header-read timeout; closing");
                return Step::Closed;
            }
            () = &mut cancelled, if inb.is_empty() => return Step::Closed,
        }
    };
    // Timed only for the access log (the duration metric is the attempt
    // core's).
    let meta = if w.log.is_on() {
        let start = std::time::Instant::now();
        let meta = meta.get_or_insert_default();
        meta.fill(w, &inb[..req.len], up_head);
        Some((&**meta, start))
    } else {
        None
    };
    let close = req.close || drain.is_cancelled();
    inb.advance(req.len);
    let label = decision.label();
    let served = match decision {
        Decision::Reply(_, reply) => {
            Served::reply(&reply, w.reply_fast(stream, out, &reply, close).await)
        }
        Decision::Forward(target) => {
            let response_edits = target
                .hit
                .rule
                .filters
                .as_deref()
                .map(|f| &f.response_headers)
                .filter(|e| !e.is_empty());
            let transport = RawH1 {
                pool: &w.pool,
                head: up_head,
                idempotent: req.idempotent,
                head_request: req.head,
                client_close: close,
                response_edits,
                out,
            };
            w.forward_fast(stream, &target, transport, close).await
        }
    };
    if let Some((meta, start)) = meta {
        w.log.record(&Record {
            start,
            client: client.addr(),
            method: &meta.method,
            path: &meta.target,
            protocol: "HTTP/1.1",
            status: served.status,
            bytes: served.bytes,
            route: label,
            request_id: &meta.request_id,
            forwarded: served.forwarded,
        });
    }
    if !served.keep {
        let _ = stream.shutdown().await;
        return Step::Closed;
    }
    if inb.is_empty() {
        Step::Idle
    } else {
        Step::Next
    }
}

impl Worker {
    /// Serves a client connection on the fast path until it closes, a
    /// request needs the general path, or it is parked. With `start.h2c`,
    /// a connection that opens with the HTTP/2 preface is handed to the
    /// HTTP/2 server.
    ///
    /// Between requests the connection waits here for readability holding
    /// no buffer and no request state; each time the client sends, its
    /// requests are served in a box from the worker's free list
    /// ([`pooled`]), which goes back to the list when the buffer is empty
    /// again. No allocation per request once the list is warm. A parkable
    /// connection idle for `--idle-park-after` leaves its task for the
    /// worker's table ([`Outcome::Parked`]).
    pub(crate) fn serve_fast<S: ClientStream>(
        self: &Rc<Self>,
        stream: S,
        client: Rc<ClientIp>,
        drain: Drain,
        start: Start,
    ) -> impl Future<Output = Outcome<S>> + use<S> {
        let w = self.clone();
        let token = drain.clone();
        let config = &self.shared.config;
        let park = start.parkable
            && self.parking.is_some()
            && !config.idle_park_after.is_zero()
            && config.idle_park_after < config.header_read_timeout;
        let mut conn = Conn {
            stream,
            client,
            drain,
            h2c: start.h2c,
            park,
            header_timer: LazyTimer::new(),
            meta: None,
        };
        // The deadline of the next request head, from when the connection
        // became idle.
        let mut due = Instant::now() + config.header_read_timeout;
        // Only what is captured here is in the task while it is idle; a
        // captured future that were pinned (moved) inside would be there
        // twice.
        async move {
            let cancelled = token.cancelled();
            tokio::pin!(cancelled);
            loop {
                // Polled by hand rather than with `select!`: less state in
                // the task of every idle connection. In this order: bytes
                // (or a close) first, then the timer (parking, or the
                // timeout), then draining.
                // A `move` closure over references: one capture each, not
                // one per field used (the closure is in every idle task).
                let (c, idle_due, config) = (&mut conn, &due, &w.shared.config);
                let mut cancel = cancelled.as_mut();
                let woke = std::future::poll_fn(move |cx| {
                    if let Poll::Ready(r) = c.stream.poll_readable(cx) {
                        return Poll::Ready(Woke::Readable(r.is_ok()));
                    }
                    let park_at = if c.park {
                        // idle since `due - timeout`
                        (*idle_due - config.header_read_timeout + config.idle_park_after).min(*idle_due)
                    } else {
                        *idle_due
                    };
                    if c.header_timer.poll_until(cx, park_at).is_ready() {
                        if park_at < *idle_due {
                            return Poll::Ready(Woke::Park);
                        }
                        debug!(client = %c.client.ip, "no request within the header-read timeout; closing the idle connection");
                        return Poll::Ready(Woke::Done);
                    }
                    cancel.as_mut().poll(cx).map(|()| Woke::Done)
                })
                .await;
                match woke {
                    Woke::Readable(true) => {}
                    Woke::Park => {
                        let Conn {
                            stream,
                            client,
                            drain,
                            h2c,
                            header_timer,
                            meta,
                            park: _,
                        } = conn;
                        match stream.into_parkable() {
                            Ok(stream) => return w.park_idle(stream, &client, due, h2c),
                            Err(stream) => {
                                // Not a plain socket after all: it waits here.
                                conn = Conn {
                                    stream,
                                    client,
                                    drain,
                                    h2c,
                                    park: false,
                                    header_timer,
                                    meta,
                                };
                                continue;
                            }
                        }
                    }
                    Woke::Readable(false) | Woke::Done => return Outcome::Closed,
                }
                // Built outside any await, so the burst's state is never
                // part of this (the connection task's) future.
                let next = pooled(burst(w.clone(), conn, due));
                conn = match next.await {
                    Ok(conn) => conn,
                    Err(outcome) => return outcome,
                };
                due = Instant::now() + w.shared.config.header_read_timeout;
            }
        }
    }

    /// Puts an idle connection's socket in the worker's table.
    fn park_idle<S>(
        &self,
        stream: io::Result<std::net::TcpStream>,
        client: &ClientIp,
        due: Instant,
        h2c: bool,
    ) -> Outcome<S> {
        let parked = stream.and_then(|stream| {
            let parking = self
                .parking
                .as_ref()
                .ok_or_else(|| io::Error::other("parking is off"))?;
            parking.park(Parked {
                stream,
                peer: client.addr(),
                due,
                h2c,
            })
        });
        match parked {
            Ok(()) => Outcome::Parked,
            Err(e) => {
                debug!(client = %client.ip, error = %e, "cannot park the idle connection; closing it");
                Outcome::Closed
            }
        }
    }

    /// Writes a response of the LB's own; returns whether the connection
    /// stays open.
    async fn reply_fast<S: ClientStream>(
        &self,
        stream: &mut S,
        out: &mut Vec<u8>,
        reply: &Reply<'_>,
        close: bool,
    ) -> bool {
        reply.count(&self.shared.metrics);
        reply.write_h1(out, close);
        stream.write_all(out).await.is_ok() && !close && !reply.local.closes()
    }

    /// [`Worker::decide`] for a head the fast path parsed; `None` when the
    /// request is for the general path instead: its rule forwards to an
    /// HTTP/2 backend, or has filters only the general path applies (CORS
    /// response headers, cookie affinity). Decided before the pick, so the
    /// general path picks once.
    fn decide_fast<'t>(
        &self,
        table: &'t RoutingTable,
        client: &ClientIp,
        parsed: &Parsed<'_, '_>,
    ) -> Option<Decision<'t>> {
        // `Host` as text (a UTF-8 check) only where it is read: by a table
        // with routes filed by host, and by a rule that answers itself (a
        // redirect keeps it). A forwarding rule on a table without
        // hostnames, the common case, never looks at it.
        let host = table.routes.by_host().then(|| parsed.host());
        let Some(hit) = table.routes.find(client.listener, host, parsed) else {
            debug!(path = parsed.path(), "no route matches");
            return Some(Decision::Reply(None, Reply::new(Local::NoRoute)));
        };
        let rule = hit.rule;
        if let RuleAction::Forward(f) = &rule.action
            && !f.all_http1
        {
            return None;
        }
        if let Some(f) = &rule.filters
            && (f.cors.is_some() || f.affinity.is_some())
        {
            return None;
        }
        let host = match (&rule.action, host) {
            (RuleAction::Forward(_), host) => host,
            (_, Some(host)) => Some(host),
            (_, None) => Some(parsed.host()),
        };
        Some(self.decide_hit(hit, client, host, parsed))
    }

    /// Forwards one request through the attempt core and relays the
    /// response.
    async fn forward_fast<S: ClientStream>(
        &self,
        stream: &mut S,
        target: &Target<'_>,
        mut transport: RawH1<'_>,
        close: bool,
    ) -> Served {
        let upstream = target.upstream;
        let (answered, forwarded) = self.forward(target, &mut transport, ()).await;
        let out = transport.out;
        let (idx, at, (mut conn, resp)) = match answered {
            Ok(a) => (a.idx, a.at, a.response),
            Err(local) => {
                let reply = Reply::new(local);
                let keep = self.reply_fast(stream, out, &reply, close).await;
                return Served {
                    forwarded,
                    ..Served::reply(&reply, keep)
                };
            }
        };
        let endpoint = upstream.endpoints[idx].addr;
        let (relayed, bytes) = relay(stream, &mut conn, resp, out).await;
        let keep = match relayed {
            Relay::Done => {
                if resp.reusable && conn.buf.is_empty() {
                    self.pool.checkin(endpoint, conn, at);
                }
                !resp.close
            }
            Relay::ClientGone => false,
            Relay::Upstream(error) => {
                body_failed(&self.shared.metrics, endpoint, &error);
                false
            }
        };
        Served {
            keep,
            status: resp.status,
            bytes,
            forwarded,
        }
    }
}

/// How one request on the fast path was answered.
struct Served {
    /// Whether the client connection stays open.
    keep: bool,
    /// Status sent to the client.
    status: u16,
    /// Response body bytes sent (as framed on the wire).
    bytes: u64,
    /// The upstream side, for the access log.
    forwarded: Forwarded,
}

impl Served {
    /// A local response.
    fn reply(reply: &Reply<'_>, keep: bool) -> Self {
        Self {
            keep,
            status: reply.local.status().as_u16(),
            bytes: reply.body().len() as u64,
            forwarded: Forwarded::default(),
        }
    }
}

/// The access log's view of the current request on a connection: owned
/// copies, since the client buffer moves on before the line is written.
#[derive(Default)]
struct LogMeta {
    method: String,
    target: String,
    request_id: String,
}

impl LogMeta {
    /// Reads method, target and `X-Request-Id` from the raw head, settles
    /// the request id (the client's when valid, else a new one) and puts
    /// it in the head sent upstream.
    fn fill(&mut self, worker: &Worker, head: &[u8], up_head: &mut Vec<u8>) {
        let (method, target) = head::request_line(head);
        self.method.clear();
        self.method.push_str(method);
        self.target.clear();
        self.target.push_str(target);
        worker.log.request_id(
            head::header_values(head, b"x-request-id"),
            &mut self.request_id,
        );
        head::set_header(up_head, b"x-request-id", self.request_id.as_bytes());
    }
}

/// Sends the rewritten head in `out` and the body from `conn` to the client;
/// also returns the body bytes sent (as framed: chunked bodies with their
/// chunk framing).
async fn relay<S: ClientStream>(
    client: &mut S,
    conn: &mut UpConn,
    resp: ResponseHead,
    out: &mut Vec<u8>,
) -> (Relay, u64) {
    let mut sent = 0;
    let relayed = relay_body(client, conn, resp, out, &mut sent).await;
    (relayed, sent)
}

async fn relay_body<S: ClientStream>(
    client: &mut S,
    conn: &mut UpConn,
    resp: ResponseHead,
    out: &mut Vec<u8>,
    sent: &mut u64,
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
    *sent = first as u64;
    match resp.framing {
        Framing::Empty => Relay::Done,
        Framing::Chunked if scanner.is_done() => Relay::Done,
        Framing::Chunked => relay_chunked(client, conn, scanner, sent).await,
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
                *sent += take as u64;
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
            *sent += conn.buf.len() as u64;
        },
    }
}

/// Writes the head in `out` and the first `n` body bytes of `conn.buf`.
async fn send_first<S: ClientStream>(
    client: &mut S,
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
async fn relay_chunked<S: ClientStream>(
    client: &mut S,
    conn: &mut UpConn,
    mut scanner: ChunkedScanner,
    sent: &mut u64,
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
        *sent += n as u64;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_hanging_endpoint_times_out_at_the_response_header_timeout() {
        use std::sync::Arc;

        use crate::discovery::{EndpointSpec, RoutingConfig, UpstreamConfig};
        use crate::metrics::Metrics;
        use crate::selection::Balancer;

        // An endpoint that accepts and reads but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let policy = Policy {
            response_header_timeout: Duration::from_secs(30),
            ..Policy::default()
        };
        let b = Arc::new(Balancer::new(policy.clone(), Arc::new(Metrics::new(1))));
        b.apply(&RoutingConfig {
            upstreams: vec![UpstreamConfig::catch_all(
                "u",
                vec![EndpointSpec::new(addr)],
            )],
            routes: Vec::new(),
        });
        let worker = crate::proxy::tests::worker(b, crate::proxy::ProxyConfig::default());
        // Connected for real first; then time only moves when nothing else
        // can happen (the paused clock jumps to the next timer).
        let conn = crate::proxy::upstream::connect(addr, Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::pause();
        let mut out = Vec::new();
        let mut transport = RawH1 {
            pool: &worker.pool,
            head: b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
            idempotent: true,
            head_request: false,
            client_close: false,
            response_edits: None,
            out: &mut out,
        };
        let start = Instant::now();
        let failure = match transport.send(addr, conn, (), &policy).await {
            Err(SendFailure { failure, unsent }) => {
                assert!(unsent.is_none(), "the head was written");
                failure
            }
            Ok(_) => panic!("an answer from a silent endpoint"),
        };
        assert_eq!(failure.kind, FailureKind::ResponseTimeout);
        // tokio's timer wheel rounds a deadline up to its next millisecond.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(30) && took <= Duration::from_millis(30_001),
            "{took:?}"
        );
        hold.abort();
    }
}

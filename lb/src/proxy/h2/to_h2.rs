//! HTTP/2 streams to `h2c` endpoints (gRPC): each call is a stream on one
//! of the worker's multiplexed connections ([`super::upstream`]), chosen
//! per call through the attempt core, so calls on one client connection
//! are balanced exactly. Request and response bodies (and trailers) are
//! pumped stream to stream with flow control on both sides, at the same
//! time, so streaming calls work both ways.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Version};
use tracing::debug;

use super::body::{BodyError, Pump};
use super::call::{Call, Done, Forwarding};
use super::upstream::{self, H2Pool, H2Stream, for_h2};
use crate::proxy::attempt::{
    Failure, FailureKind, Forwarded, SendFailure, Transport, body_failed, is_idempotent,
};
use crate::proxy::filters;
use crate::proxy::headers::{apply_edits, forward_request_headers, forward_response_headers};
use crate::proxy::local::{BadRequest, Local};
use crate::proxy::upstream::StreamLease;
use crate::selection::Policy;

/// Forwards a stream's call to an `h2c` Upstream and relays the response,
/// pumping the rest of the request body meanwhile.
pub(super) async fn forward(
    call: &Call<'_>,
    fwd: &Forwarding<'_>,
    parts: Parts,
    mut body: RecvStream,
    respond: &mut SendResponse<Bytes>,
) -> Done {
    let w = call.w;
    let end = body.is_end_stream();
    let request = upstream_request(call, fwd, parts);
    let saved = (end && is_idempotent(request.method())).then(|| {
        let mut r = Request::new(());
        *r.method_mut() = request.method().clone();
        *r.uri_mut() = request.uri().clone();
        *r.version_mut() = Version::HTTP_2;
        *r.headers_mut() = request.headers().clone();
        r
    });
    let mut transport = ToH2 {
        pool: &w.h2_pool,
        saved,
        end,
        call,
        body: &mut body,
        pump: if end {
            Pump::finished()
        } else {
            Pump::new(fwd.max_body)
        },
        fault: None,
    };
    let answered = {
        let forward = w.forward(fwd.target, &mut transport, request);
        tokio::select! {
            biased;
            r = forward => r,
            reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                debug!(client = %call.client.ip, reset = ?reset.ok(), "stream reset by the client while forwarded");
                return Done { status: 0, bytes: 0, forwarded: Forwarded::default() };
            }
        }
    };
    let forwarded = if w.log.is_some() {
        w.take_forward()
    } else {
        Forwarded::default()
    };
    let ToH2 { mut pump, .. } = transport;
    let (
        endpoint,
        Exchange {
            response,
            mut up_tx,
            lease: _lease,
        },
    ) = match answered {
        Ok(a) => (fwd.target.upstream.endpoints[a.idx].addr, a.response),
        Err(local) => {
            return Done {
                forwarded,
                ..call.local(respond, local)
            };
        }
    };
    let (mut head, mut up_rx) = response.into_parts();
    forward_response_headers(&mut head.headers, Version::HTTP_2, false);
    if let Some(f) = fwd.filters() {
        apply_edits(&mut head.headers, &f.response_headers);
    }
    fwd.cors(&mut head.headers);
    let status = head.status.as_u16();
    let end = up_rx.is_end_stream();
    let mut tx = match respond.send_response(Response::from_parts(head, ()), end) {
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
    let mut down = if end {
        Pump::finished()
    } else {
        Pump::new(None)
    };
    // Both directions at once, until the response has ended (the request
    // may go on: a client-streaming call's server may answer early).
    let result = poll_fn(|cx| {
        if !pump.is_done()
            && let Poll::Ready(Err(e)) = pump.poll(cx, &mut body, &mut up_tx)
        {
            return Poll::Ready(Err(("request", e)));
        }
        down.poll(cx, &mut up_rx, &mut tx)
            .map_err(|e| ("response", e))
    })
    .await;
    if let Err((side, e)) = result {
        debug!(client = %call.client.ip, side, error = %e, "HTTP/2 call ended early");
        match e {
            BodyError::Recv(_) if side == "response" => {
                body_failed(&w.shared.metrics, endpoint, &e);
                tx.send_reset(Reason::INTERNAL_ERROR);
            }
            BodyError::Send(_) if side == "request" => {}
            _ => {
                up_tx.send_reset(Reason::CANCEL);
            }
        }
    }
    Done {
        status,
        bytes: down.sent,
        forwarded,
    }
}

/// The request head for an `h2c` endpoint: the forwarding headers by the
/// rule table, `:authority` kept (or `--host-header`), `te: trailers` kept
/// when the client sent it (gRPC needs it), then the route rule's header
/// edits and rewrites (in the hyper path's order).
fn upstream_request(call: &Call<'_>, fwd: &Forwarding<'_>, parts: Parts) -> Request<()> {
    let Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if let Some(a) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, a);
    }
    if let Some(id) = call
        .request_id
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert("x-request-id", id);
    }
    forward_request_headers(
        &mut headers,
        Version::HTTP_2,
        call.client,
        false,
        call.w.shared.host_override.as_ref(),
    );
    let mut uri = uri;
    if let Some(f) = fwd.filters() {
        apply_edits(&mut headers, &f.request_headers);
        if let Some(rewrite) = &f.rewrite {
            if let Some(host) = &rewrite.hostname {
                headers.insert(header::HOST, host.clone());
            }
            if let Some(path) = &rewrite.path {
                let mut target = String::with_capacity(64);
                filters::rewrite_path(path, fwd.target.hit.path, uri.path(), &mut target);
                if let Some(q) = uri.query() {
                    target.push('?');
                    target.push_str(q);
                }
                match target.parse::<http::uri::PathAndQuery>() {
                    Ok(pq) => {
                        let mut p = uri.into_parts();
                        p.path_and_query = Some(pq);
                        uri = http::Uri::from_parts(p).unwrap_or_default();
                    }
                    Err(e) => {
                        debug!(path = %target, error = %e, "rewritten path is not a valid URI; forwarding the original");
                    }
                }
            }
        }
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    for_h2(&mut parts, te_trailers);
    Request::from_parts(parts, ())
}

/// A call to an `h2c` endpoint while it is being attempted.
struct ToH2<'a, 'c> {
    pool: &'a H2Pool,
    /// The head of an idempotent bodiless request, for a replay.
    saved: Option<Request<()>>,
    /// The request has no body.
    end: bool,
    call: &'a Call<'c>,
    /// The client's request body.
    body: &'a mut RecvStream,
    /// Its progress towards the endpoint (kept across attempts: once a
    /// byte has gone, the request cannot be replayed).
    pump: Pump,
    /// What the client's body did wrong, when that ended the attempt.
    fault: Option<Local>,
}

/// An answered call: the response head (and body to come), the request
/// body's sender, and the stream's lease on its connection.
struct Exchange {
    response: Response<RecvStream>,
    up_tx: SendStream<Bytes>,
    lease: StreamLease,
}

impl<'a> Transport for ToH2<'a, '_> {
    type Connector = &'a H2Pool;
    type Request = Request<()>;
    type Response = Exchange;

    fn connector(&mut self) -> &mut &'a H2Pool {
        &mut self.pool
    }

    async fn send(
        &mut self,
        _addr: SocketAddr,
        stream: H2Stream,
        request: Request<()>,
        policy: &Policy,
    ) -> Result<Exchange, SendFailure<Request<()>>> {
        let opened = upstream::open(stream, request, self.end).await?;
        let upstream::Opened {
            response,
            body: mut up_tx,
            lease,
            gone,
        } = opened;
        let timeout = self.call.timeout(policy);
        let (pump, body, fault) = (&mut self.pump, &mut *self.body, &mut self.fault);
        let mut response = std::pin::pin!(upstream::response(response, &gone, timeout));
        let head = poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(SendFailure::sent));
            }
            if !pump.is_done()
                && let Poll::Ready(Err(e)) = pump.poll(cx, body, &mut up_tx)
            {
                let failure = Failure::because(FailureKind::Send, &e);
                *fault = client_fault(&e);
                return Poll::Ready(Err(SendFailure::sent(failure)));
            }
            Poll::Pending
        })
        .await;
        head.map(|response| Exchange {
            response,
            up_tx,
            lease,
        })
    }

    fn status(exchange: &Exchange) -> u16 {
        exchange.response.status().as_u16()
    }

    fn can_replay(&self) -> bool {
        self.saved.is_some()
    }

    fn replay(&mut self) -> Option<Request<()>> {
        let saved = self.saved.as_ref()?;
        let mut r = Request::new(());
        *r.method_mut() = saved.method().clone();
        *r.uri_mut() = saved.uri().clone();
        *r.version_mut() = Version::HTTP_2;
        *r.headers_mut() = saved.headers().clone();
        Some(r)
    }

    fn client_fault(&self) -> Option<Local> {
        self.fault
    }
}

/// The local answer for a request body that failed on the client's side.
fn client_fault(e: &BodyError) -> Option<Local> {
    match e {
        BodyError::TooLarge => Some(Local::BodyTooLarge),
        BodyError::Recv(_) => Some(Local::BadRequest(BadRequest::MalformedBody)),
        BodyError::Send(_) => None,
    }
}

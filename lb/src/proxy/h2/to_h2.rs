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
use super::head;
use super::upstream::{self, H2Pool, H2Stream};
use crate::proxy::access_log::Forwarded;
use crate::proxy::attempt::{
    Failure, FailureKind, SendFailure, Transport, body_failed, is_idempotent,
};
use crate::proxy::fast::head::RequestEdits;
use crate::proxy::headers::apply_edits;
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
    let request = head::h2_request(
        parts,
        &head::Forwarding {
            client: call.client,
            host_override: None,
            request_id: call.request_id,
            edits: fwd.filters().map(|filters| RequestEdits {
                filters,
                matched: fwd.target.hit.path,
            }),
            host_override_value: w.shared.host_override.as_ref(),
        },
    );
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
    let (answered, forwarded) = {
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
    let ToH2 { mut pump, .. } = transport;
    let (
        idx,
        Exchange {
            response,
            mut up_tx,
            lease: _lease,
        },
    ) = match answered {
        Ok(a) => (a.idx, a.response),
        Err(local) => {
            return Done {
                forwarded,
                ..call.local(respond, local)
            };
        }
    };
    let (mut head, mut up_rx) = response.into_parts();
    // An HTTP/2 response has no connection-specific fields (the h2 crate
    // refuses them), so forwarding it adds only `Via`, as the rule table's
    // writers do.
    head.headers
        .append(header::VIA, HeaderValue::from_static("2 roundhouse"));
    if let Some(f) = fwd.filters() {
        apply_edits(&mut head.headers, &f.response_headers);
    }
    fwd.response_filters(&mut head.headers, idx);
    let endpoint = fwd.target.upstream.endpoints[idx].addr;
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

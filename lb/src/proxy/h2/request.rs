//! One HTTP/2 stream: the request's checks, its route, the LB's own
//! answers, and the access log line; forwarding is [`super::to_h1`]'s or
//! [`super::to_h2`]'s, by the Upstream's protocol.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request};
use tracing::{debug, warn};

use super::call::{Call, Done, Forwarding, declared_length, send_whole};
use super::{to_h1, to_h2};
use crate::discovery::Protocol;
use crate::proxy::Worker;
use crate::proxy::access_log::Record;
use crate::proxy::attempt::Decision;
use crate::proxy::filters;
use crate::proxy::grpc::{grpc_timeout, is_grpc};
use crate::proxy::headers::ClientIp;
use crate::proxy::local::{self, BadRequest, Local};
use crate::selection::RequestView;

static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Serves one stream of a client connection: one request through the
/// attempt core. With the access log on, settles the request id (sent
/// upstream) and writes the line once the response has been sent (`bytes`
/// are the body bytes sent, `duration` runs to the last of them); a stream
/// the client reset before it was answered gets no line.
pub(super) async fn serve(
    w: Rc<Worker>,
    client: Rc<ClientIp>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> Served {
    let (w, client) = (&*w, &*client);
    let (parts, body) = req.into_parts();
    if !w.log.is_on() {
        answer(w, client, parts, body, &mut respond, None).await;
        return Served;
    }
    let start = Instant::now();
    let method = parts.method.clone();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let mut request_id = String::new();
    w.log.request_id(
        parts
            .headers
            .get_all(&X_REQUEST_ID)
            .iter()
            .map(HeaderValue::as_bytes),
        &mut request_id,
    );
    let (done, route) = answer(w, client, parts, body, &mut respond, Some(&request_id)).await;
    if done.status == 0 {
        // Reset by the client before it could be answered: no line, as
        // for a client that went away before its request head was read.
        return Served;
    }
    w.log.record(&Record {
        start,
        client: client.addr(),
        method: method.as_str(),
        path: &target,
        protocol: "HTTP/2",
        status: done.status,
        bytes: done.bytes,
        route: route.as_deref(),
        request_id: &request_id,
        forwarded: done.forwarded,
    });
    Served
}

/// What a stream's future gives when it is done: nothing, under a name of
/// its own (the worker's free list of boxes is per output type).
pub(super) struct Served;

/// The checks, the route, and the transport for the route's Upstream; also
/// returns the route's name.
async fn answer(
    w: &Worker,
    client: &ClientIp,
    parts: Parts,
    body: RecvStream,
    respond: &mut SendResponse<Bytes>,
    request_id: Option<&str>,
) -> (Done, Option<Arc<str>>) {
    let shared = &w.shared;
    let grpc = is_grpc(&parts.headers);
    let call = Call {
        w,
        client,
        grpc,
        deadline: grpc.then(|| grpc_timeout(&parts.headers)).flatten(),
        request_id,
    };
    if let Some(port) = shared.config.https_redirect
        && client.proto == "http"
    {
        let host = parts.uri.host().or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        shared.metrics.local("https_redirect");
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        return match local::https_redirect::<Bytes>(host, target, port) {
            Some(resp) => (send_whole(respond, resp), None),
            None => (
                call.local(respond, Local::BadRequest(BadRequest::MissingHost)),
                None,
            ),
        };
    }
    if parts.method == Method::CONNECT {
        debug!(client = %client.ip, "CONNECT refused");
        return (call.local(respond, Local::ConnectRefused), None);
    }
    if let Err(why) = check_host(&parts) {
        debug!(client = %client.ip, why = Local::BadRequest(why).body().trim_end(), "malformed request head; answering 400");
        return (call.local(respond, Local::BadRequest(why)), None);
    }
    let table = w.table();
    // The authority the client addressed, with its port (a redirect keeps
    // it): `:authority` (without userinfo), else `Host`.
    let authority = parts
        .uri
        .authority()
        .and_then(|a| a.as_str().rsplit('@').next())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
    let decision = w.decide(&table, client, authority, &PartsView(&parts));
    let route = w
        .log
        .is_on()
        .then(|| decision.hit().map(|h| h.rule.label.clone()))
        .flatten();
    let target = match decision {
        Decision::Forward(target) => target,
        Decision::Reply(_, reply) => return (call.reply(respond, &reply), route),
    };
    let filters = target.hit.rule.filters.as_deref();
    // The LB's body limit, or the rule's if lower.
    let max_body = match (
        shared.config.max_body_bytes,
        filters.and_then(|f| f.max_body_bytes),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(max) = max_body
        && declared_length(&parts).is_some_and(|n| n > max)
    {
        warn!(limit = max, "request body over the limit; answering 413");
        return (call.local(respond, Local::BodyTooLarge), route);
    }
    let origin = filters
        .filter(|f| f.cors.is_some())
        .and_then(|_| filters::origin(&PartsView(&parts)));
    let forwarding = Forwarding {
        target: &target,
        max_body,
        origin: origin.as_deref(),
    };
    let done = if target.upstream.protocol == Protocol::H2c {
        // Boxed: its state is larger than the HTTP/1.1 path's, and would
        // otherwise make every stream's future as large.
        Box::pin(to_h2::forward(&call, &forwarding, parts, body, respond)).await
    } else {
        to_h1::forward(&call, &forwarding, &parts, body, respond).await
    };
    (done, route)
}

/// An HTTP/2 request's head, as routing reads it.
struct PartsView<'a>(&'a Parts);

impl RequestView for PartsView<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }

    fn any_header(&self, name: &header::HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0.headers.get_all(name).iter().any(|v| f(v.as_bytes()))
    }
}

/// RFC 9110 §7.2 as the hyper path applies it: at most one `Host`, and a
/// valid one (HTTP/2 requests name their authority in `:authority`, so
/// `Host` may be absent).
fn check_host(parts: &Parts) -> Result<(), BadRequest> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(BadRequest::MultipleHosts),
        (Some(h), None) if http::uri::Authority::try_from(h.as_bytes()).is_err() => {
            Err(BadRequest::InvalidHost)
        }
        _ => Ok(()),
    }
}

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

use super::call::{Call, Done, declared_length, send_whole};
use super::{to_h1, to_h2};
use crate::discovery::Protocol;
use crate::proxy::Worker;
use crate::proxy::attempt::Finished;
use crate::proxy::grpc::{grpc_timeout, is_grpc};
use crate::proxy::headers::ClientIp;
use crate::proxy::local::{self, BadRequest, Local};

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
    if w.log.is_none() {
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
    w.request_id(
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
    w.log_request(
        &Finished {
            start,
            client: client.addr(),
            method: method.as_str(),
            path: &target,
            protocol: "HTTP/2",
            status: done.status,
            bytes: done.bytes,
            route: route.as_deref(),
            request_id: &request_id,
        },
        done.forwarded,
    );
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
    let host = parts.uri.host().or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(port) = shared.config.https_redirect
        && client.proto == "http"
    {
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
    let upstream = match w.route(&table, host, parts.uri.path()) {
        Ok(u) => u,
        Err(local) => return (call.local(respond, local), None),
    };
    let route = w.log.is_some().then(|| upstream.name.clone());
    if let Some(max) = shared.config.max_body_bytes
        && declared_length(&parts).is_some_and(|n| n > max)
    {
        warn!(limit = max, "request body over the limit; answering 413");
        return (call.local(respond, Local::BodyTooLarge), route);
    }
    let done = if upstream.protocol == Protocol::H2c {
        // Boxed: its state is larger than the HTTP/1.1 path's, and would
        // otherwise make every stream's future as large.
        Box::pin(to_h2::forward(&call, upstream, parts, body, respond)).await
    } else {
        to_h1::forward(&call, upstream, &parts, body, respond).await
    };
    (done, route)
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

//! What the transports of one stream share: the call being forwarded, how
//! it was answered, and the LB's own answers on a stream.

use bytes::Bytes;
use h2::server::SendResponse;
use http::Response;
use http::header;
use http::request::Parts;
use tracing::debug;

use crate::proxy::Worker;
use crate::proxy::access_log::Forwarded;
use crate::proxy::attempt::Target;
use crate::proxy::filters;
use crate::proxy::headers::ClientIp;
use crate::proxy::local::{Local, Reply};
use crate::selection::RuleFilters;

/// How a stream was answered, for its access log line.
pub(super) struct Done {
    /// Status sent to the client (0 when none could be).
    pub(super) status: u16,
    /// Response body bytes sent.
    pub(super) bytes: u64,
    /// The upstream side.
    pub(super) forwarded: Forwarded,
}

/// What a forwarding transport needs to know about the stream's request.
pub(super) struct Call<'a> {
    pub(super) w: &'a Worker,
    pub(super) client: &'a ClientIp,
    /// A gRPC call (its errors are gRPC statuses).
    pub(super) grpc: bool,
    /// Its `grpc-timeout`, if shorter than the policy's.
    pub(super) deadline: Option<std::time::Duration>,
    /// The request id, when the access log is on.
    pub(super) request_id: Option<&'a str>,
}

/// Where the attempt core decided a request goes, and what its rule asks
/// of the forwarding.
pub(super) struct Forwarding<'a> {
    /// The rule, the backend and the first endpoint.
    pub(super) target: &'a Target<'a>,
    /// The body limit (the LB's, or the rule's if lower).
    pub(super) max_body: Option<u64>,
    /// The request's `Origin`, when the rule answers CORS.
    pub(super) origin: Option<&'a str>,
}

impl Forwarding<'_> {
    /// The rule's filters, when it has any.
    pub(super) fn filters(&self) -> Option<&RuleFilters> {
        self.target.hit.rule.filters.as_deref()
    }

    /// Adds what the rule's filters add to a response from endpoint `idx`:
    /// the affinity cookie (unless the client's cookie already named that
    /// endpoint) and the CORS headers (for the request's `Origin`).
    pub(super) fn response_filters(&self, headers: &mut http::HeaderMap, idx: usize) {
        let Some(f) = self.filters() else {
            return;
        };
        if let Some(affinity) = &f.affinity {
            let key = self.target.upstream.endpoints[idx].affinity_key;
            if self.target.sticky != Some(key)
                && let Some(cookie) = filters::affinity_set_cookie(affinity, key)
            {
                headers.append(header::SET_COOKIE, cookie);
            }
        }
        if let (Some(cors), Some(origin)) = (&f.cors, self.origin) {
            for (name, value) in filters::response_cors_headers(cors, origin) {
                headers.append(name, value);
            }
        }
    }
}

impl Call<'_> {
    /// The response-header timeout of an attempt under `policy`.
    pub(super) fn timeout(&self, policy: &crate::selection::Policy) -> std::time::Duration {
        match self.deadline {
            Some(d) => d.min(policy.response_header_timeout),
            None => policy.response_header_timeout,
        }
    }

    /// Answers the stream with one of the LB's own responses (counted).
    pub(super) fn local(&self, respond: &mut SendResponse<Bytes>, local: Local) -> Done {
        self.reply(respond, &Reply::new(local))
    }

    /// Answers the stream with a reply of the LB's own (counted); a gRPC
    /// call gets it as a gRPC status unless it is an HTTP answer (a
    /// redirect, a fixed response).
    pub(super) fn reply(&self, respond: &mut SendResponse<Bytes>, reply: &Reply<'_>) -> Done {
        reply.count(&self.w.shared.metrics);
        let resp: Response<Bytes> = if self.grpc && !reply.local.is_http_answer() {
            reply.local.grpc_response()
        } else {
            reply.response()
        };
        send_whole(respond, resp)
    }
}

/// Sends a response whose body is in memory (small: the LB's own).
pub(super) fn send_whole(respond: &mut SendResponse<Bytes>, resp: Response<Bytes>) -> Done {
    let (mut parts, body) = resp.into_parts();
    // HTTP/2 has no connection-specific fields.
    parts.headers.remove(header::CONNECTION);
    let status = parts.status.as_u16();
    let bytes = body.len() as u64;
    let end = body.is_empty();
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(mut tx) if !end => {
            let _ = tx.send_data(body, true);
        }
        Ok(_) => {}
        Err(e) => debug!(error = %e, "cannot answer the stream"),
    }
    Done {
        status,
        bytes,
        forwarded: Forwarded::default(),
    }
}

/// The request's `Content-Length`, when it declares one.
pub(super) fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

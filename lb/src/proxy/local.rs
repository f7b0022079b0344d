//! Every response the LB gives itself, in one list: status, body, the
//! `roundhouse_local_responses_total{reason}` label, and whether the client
//! connection closes after it. Both client transports render from here
//! (the fast path as bytes, the hyper path as an `http::Response`).

use std::io::Write as _;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::discovery::route::RedirectStatus;
use crate::metrics::Metrics;

/// A response produced by the LB itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// No Upstream matches the request's host and path.
    NoRoute,
    /// The matching Upstream has no endpoints.
    NoEndpoints,
    /// Every attempt failed.
    UpstreamFailed,
    /// The endpoint did not answer within the response-header timeout.
    UpstreamTimeout,
    /// The endpoint switched protocols without being asked to.
    UnexpectedUpgrade,
    /// A `CONNECT` request: this is not a forward proxy.
    ConnectRefused,
    /// A malformed request.
    BadRequest(BadRequest),
    /// A transfer coding other than `chunked`.
    UnsupportedCoding,
    /// The request body is over `--max-body-bytes`.
    BodyTooLarge,
    /// `--max-connections` reached; the connection is refused.
    TooManyConnections,
    /// A route's rule forwards to no backend, or only with weight 0.
    NoBackends,
    /// This request's share of a rule goes to a backend reference that
    /// could not be resolved.
    InvalidBackend,
    /// The client's address is not allowed by the rule.
    Forbidden,
    /// A rule's redirect (the `Location` is per request: [`Reply`]).
    Redirect(RedirectStatus),
    /// A rule's fixed response (its body is the rule's: [`Reply`]).
    Fixed(StatusCode),
    /// The answer to a CORS preflight (its headers: [`Reply`]).
    Preflight,
}

/// Why a request is malformed (the 400 body says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// More than one `Host`.
    MultipleHosts,
    /// A `Host` that is not an authority.
    InvalidHost,
    /// A body whose framing is broken, or that ended early.
    MalformedBody,
}

impl Local {
    /// The status code.
    pub fn status(self) -> StatusCode {
        match self {
            Local::NoRoute => StatusCode::NOT_FOUND,
            Local::NoEndpoints | Local::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Local::UpstreamFailed | Local::UnexpectedUpgrade => StatusCode::BAD_GATEWAY,
            Local::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Local::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            Local::BadRequest(_) => StatusCode::BAD_REQUEST,
            Local::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            Local::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Local::NoBackends | Local::InvalidBackend => StatusCode::INTERNAL_SERVER_ERROR,
            Local::Forbidden => StatusCode::FORBIDDEN,
            Local::Redirect(r) => r.code(),
            Local::Fixed(status) => status,
            Local::Preflight => StatusCode::NO_CONTENT,
        }
    }

    /// The plain-text body.
    pub fn body(self) -> &'static str {
        match self {
            Local::NoRoute => "no upstream matches this request\n",
            Local::NoEndpoints => "no endpoints available\n",
            Local::UpstreamFailed => "bad gateway: upstream failed\n",
            Local::UpstreamTimeout => "upstream timed out\n",
            Local::UnexpectedUpgrade => "bad gateway: unexpected upgrade\n",
            Local::ConnectRefused => "CONNECT is not supported\n",
            Local::BadRequest(BadRequest::MissingHost) => "bad request: missing Host header\n",
            Local::BadRequest(BadRequest::MultipleHosts) => "bad request: multiple Host headers\n",
            Local::BadRequest(BadRequest::InvalidHost) => "bad request: invalid Host header\n",
            Local::BadRequest(BadRequest::MalformedBody) => "bad request: malformed request body\n",
            Local::UnsupportedCoding => "transfer coding not supported\n",
            Local::BodyTooLarge => "request body too large\n",
            Local::TooManyConnections => "too many connections\n",
            Local::NoBackends => "no backend is configured for this route\n",
            Local::InvalidBackend => "this route's backend reference is invalid\n",
            Local::Forbidden => "forbidden\n",
            Local::Redirect(_) | Local::Fixed(_) | Local::Preflight => "",
        }
    }

    /// The `reason` label of `roundhouse_local_responses_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Local::NoRoute => "no_route",
            Local::NoEndpoints => "no_endpoints",
            Local::UpstreamFailed | Local::UnexpectedUpgrade => "upstream_failed",
            Local::UpstreamTimeout => "upstream_timeout",
            Local::ConnectRefused => "connect_refused",
            Local::BadRequest(_) | Local::UnsupportedCoding => "bad_request",
            Local::BodyTooLarge => "body_too_large",
            Local::TooManyConnections => "too_many_connections",
            Local::NoBackends => "no_backends",
            Local::InvalidBackend => "invalid_backend",
            Local::Forbidden => "forbidden",
            Local::Redirect(_) => "redirect",
            Local::Fixed(_) => "fixed_response",
            Local::Preflight => "cors_preflight",
        }
    }

    /// Whether the client connection closes after this response: after a
    /// malformed request or an unread body nothing that follows can be
    /// trusted to be framed right.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Local::BadRequest(_)
                | Local::UnsupportedCoding
                | Local::BodyTooLarge
                | Local::TooManyConnections
        )
    }

    /// Counts it (`roundhouse_local_responses_total`; a refused connection
    /// is counted in `roundhouse_refused_connections_total` instead).
    pub fn count(self, metrics: &Metrics) {
        if self == Local::TooManyConnections {
            metrics.refused_connections.inc();
        } else {
            metrics.local(self.reason());
        }
    }

    /// Writes it as an HTTP/1.1 response into `out` (replacing its
    /// contents); `close` adds `Connection: close` (it is added anyway when
    /// [`Local::closes`]).
    pub fn write_h1(self, out: &mut Vec<u8>, close: bool) {
        Reply::new(self).write_h1(out, close);
    }

    /// Whether a gRPC client gets it as an HTTP response rather than a
    /// gRPC status (a redirect or a rule's own response is the rule's
    /// answer, whatever the protocol).
    pub fn is_http_answer(self) -> bool {
        matches!(
            self,
            Local::Redirect(_) | Local::Fixed(_) | Local::Preflight
        )
    }

    /// The gRPC status for a gRPC call (gRPC's HTTP-to-status mapping,
    /// with deadlines as `DEADLINE_EXCEEDED`).
    pub fn grpc_status(self) -> u8 {
        match self {
            Local::UpstreamTimeout => 4, // DEADLINE_EXCEEDED
            Local::NoRoute | Local::ConnectRefused | Local::UnsupportedCoding => 12, // UNIMPLEMENTED
            Local::BodyTooLarge => 8, // RESOURCE_EXHAUSTED
            Local::BadRequest(_) | Local::NoBackends | Local::InvalidBackend => 13, // INTERNAL
            Local::Forbidden => 7,    // PERMISSION_DENIED
            Local::Redirect(_) | Local::Fixed(_) | Local::Preflight => 2, // UNKNOWN
            Local::NoEndpoints
            | Local::UpstreamFailed
            | Local::UnexpectedUpgrade
            | Local::TooManyConnections => 14, // UNAVAILABLE
        }
    }

    /// It as a gRPC response: HTTP 200 with `grpc-status` and
    /// `grpc-message` in the headers and no body (a "trailers-only"
    /// response), as gRPC clients expect.
    pub fn grpc_response<B: From<&'static str>>(self) -> Response<B> {
        let mut resp = Response::new(B::from(""));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        h.insert(
            "grpc-message",
            HeaderValue::from_static(self.body().trim_end()),
        );
        resp
    }

    /// It as an `http::Response` for hyper to write.
    pub fn response<B: From<&'static str> + From<String>>(self) -> Response<B> {
        Reply::new(self).response()
    }
}

/// A local response with what varies per request: header fields of its own
/// (a redirect's `Location`, CORS headers) and a body other than
/// [`Local::body`] (a rule's fixed response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The response.
    pub local: Local,
    /// Extra header fields.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body, when not the default one.
    pub body: Option<&'a str>,
}

impl<'a> Reply<'a> {
    /// `local` as it is.
    pub fn new(local: Local) -> Self {
        Reply {
            local,
            headers: Vec::new(),
            body: None,
        }
    }

    /// The body sent.
    pub fn body(&self) -> &str {
        self.body.unwrap_or(self.local.body())
    }

    /// Counts it (see [`Local::count`]).
    pub fn count(&self, metrics: &Metrics) {
        self.local.count(metrics);
    }

    /// Writes it as an HTTP/1.1 response into `out` (replacing its
    /// contents); `close` adds `Connection: close` (it is added anyway when
    /// [`Local::closes`]). A head-only response (`204`) has no body and no
    /// length.
    pub fn write_h1(&self, out: &mut Vec<u8>, close: bool) {
        let status = self.local.status();
        let body = self.body();
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        if status != StatusCode::NO_CONTENT {
            out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\ncontent-length: ");
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{}\r\n", body.len());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close || self.local.closes() {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
    }

    /// It as an `http::Response` for hyper to write.
    pub fn response<B: From<&'static str> + From<String>>(&self) -> Response<B> {
        let body = match self.body {
            Some(b) => B::from(b.to_owned()),
            None => B::from(self.local.body()),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.local.status();
        let h = resp.headers_mut();
        if self.local.status() != StatusCode::NO_CONTENT {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        if self.local.closes() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// `308 Permanent Redirect` to the same host and target on HTTPS (on
/// `port`, left out when it is 443); `None` when `host` is not an
/// authority. The plain listener answers with it under `--https-redirect`,
/// over HTTP/1.1 and HTTP/2 alike.
pub fn https_redirect<B: From<&'static str>>(
    host: Option<&str>,
    target: &str,
    port: u16,
) -> Option<Response<B>> {
    let host = http::uri::Authority::try_from(host?).ok()?;
    let name = host.host();
    let location = if port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{port}{target}")
    };
    let mut resp = Response::new(B::from("redirecting to HTTPS\n"));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Local; 19] = [
        Local::NoRoute,
        Local::NoEndpoints,
        Local::UpstreamFailed,
        Local::UpstreamTimeout,
        Local::UnexpectedUpgrade,
        Local::ConnectRefused,
        Local::BadRequest(BadRequest::MissingHost),
        Local::BadRequest(BadRequest::MultipleHosts),
        Local::BadRequest(BadRequest::InvalidHost),
        Local::BadRequest(BadRequest::MalformedBody),
        Local::UnsupportedCoding,
        Local::BodyTooLarge,
        Local::TooManyConnections,
        Local::NoBackends,
        Local::InvalidBackend,
        Local::Forbidden,
        Local::Redirect(RedirectStatus::PERMANENT_REDIRECT),
        Local::Fixed(StatusCode::IM_A_TEAPOT),
        Local::Preflight,
    ];

    #[test]
    fn grpc_statuses() {
        let resp = Local::NoEndpoints.grpc_response::<String>();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "no endpoints available");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(Local::UpstreamTimeout.grpc_status(), 4);
        for local in ALL {
            // Every message is a valid header value.
            let _ = local.grpc_response::<String>();
        }
    }

    #[test]
    fn h1_bytes() {
        let mut out = Vec::new();
        Local::NoEndpoints.write_h1(&mut out, false);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: 23\r\n\r\nno endpoints available\n"
        );
        Local::BodyTooLarge.write_h1(&mut out, false);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("connection: close\r\n"),
            "a response that closes says so"
        );
    }

    #[test]
    fn both_renderings_agree() {
        for local in ALL {
            let mut out = Vec::new();
            local.write_h1(&mut out, false);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut parsed = httparse::Response::new(&mut headers);
            let len = match parsed.parse(&out).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("{local:?}: partial"),
            };
            let resp = local.response::<String>();
            assert_eq!(parsed.code, Some(resp.status().as_u16()), "{local:?}");
            assert_eq!(&out[len..], local.body().as_bytes(), "{local:?}");
            let close = parsed
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value == b"close");
            assert_eq!(
                close,
                resp.headers().get("connection").is_some(),
                "{local:?}"
            );
            assert_eq!(close, local.closes(), "{local:?}");
            let length = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                });
            let want = (local.status() != StatusCode::NO_CONTENT).then_some(local.body().len());
            assert_eq!(length, want, "{local:?}");
        }
    }

    #[test]
    fn replies_carry_their_headers_and_body() {
        let reply = Reply {
            local: Local::Redirect(RedirectStatus::MOVED_PERMANENTLY),
            headers: vec![(
                header::LOCATION,
                HeaderValue::from_static("https://example.org/x"),
            )],
            body: Some("moved\n"),
        };
        let mut out = Vec::new();
        reply.write_h1(&mut out, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 301 Moved Permanently\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: 6\r\nlocation: https://example.org/x\r\nconnection: close\r\n\r\nmoved\n"
        );
        let resp = reply.response::<String>();
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(resp.headers()["location"], "https://example.org/x");
        assert_eq!(resp.body(), "moved\n");
        let mut out = Vec::new();
        Reply::new(Local::Preflight).write_h1(&mut out, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\n\r\n",
            "no length, no body"
        );
    }
}

//! Heads between an HTTP/2 client stream and an HTTP/1.1 endpoint, by the
//! one table of header rules (`proxy::headers`): the request head is
//! written as HTTP/1.1 bytes into a reused buffer (as the fast path writes
//! its own, `fast/head.rs`), and the endpoint's response head is parsed
//! once with `httparse` into the `http::Response` the HTTP/2 encoder takes.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};

use crate::discovery::route::HeaderEdits;
use crate::proxy::fast::head::{
    BadResponse, Fields, Framing, HeadRead, RequestEdits, header, origin_form_target, read_response,
};
use crate::proxy::filters::rewrite_target;
use crate::proxy::headers::{
    ClientIp, Rule, VIA_NAME, added_fields, connection_tokens, edited_away, is_hop_by_hop, rule,
};

/// How a request's body goes to an HTTP/1.1 endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: the stream ended with its head.
    None,
    /// `Content-Length` bytes (the client declared the length).
    Length(u64),
    /// Chunked (HTTP/2 needs no length; HTTP/1.1 needs one or chunking).
    Chunked,
}

/// What the LB adds to a request on its way upstream.
pub(crate) struct Forwarding<'a> {
    /// The client connection.
    pub(crate) client: &'a ClientIp,
    /// `--host-header`.
    pub(crate) host_override: Option<&'a [u8]>,
    /// The request id, when the access log is on (it replaces the client's
    /// `X-Request-Id`).
    pub(crate) request_id: Option<&'a str>,
    /// The route rule's filters (header edits, rewrites), when it has any.
    pub(crate) edits: Option<RequestEdits<'a>>,
    /// `--host-header` as a header value (for an `h2c` endpoint's
    /// `:authority`).
    pub(crate) host_override_value: Option<&'a HeaderValue>,
}

/// The host a request names: `:authority`, else its `Host` header.
pub(crate) fn host(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}

/// Writes the HTTP/1.1 head for the HTTP/2 request `parts` into `out`:
/// hop-by-hop fields removed, `Host` from `:authority` (or
/// `--host-header`), `X-Forwarded-For` appended to, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` replaced, `Via: 2 roundhouse` appended (as the hyper
/// path does for HTTP/2 clients), `Cookie` fields joined into one (RFC 9113
/// §8.2.3), the route rule's header edits and rewrites applied (as the fast
/// path's writer applies them), and the body framed as `body` says.
pub(crate) fn write_request(
    parts: &Parts,
    fwd: &Forwarding<'_>,
    body: BodyFraming,
    out: &mut Vec<u8>,
) {
    let host = host(parts).map(str::as_bytes);
    let header_edits = fwd.edits.map(|e| &e.filters.request_headers);
    let rewrite = fwd
        .edits
        .and_then(|e| e.filters.rewrite.as_ref().map(|r| (r, e.matched)));
    let host_override = rewrite
        .and_then(|(r, _)| r.hostname.as_ref())
        .map(|h| h.as_bytes())
        .or(fwd.host_override);
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match rewrite.and_then(|(r, m)| r.path.as_ref().map(|p| (p, m))) {
        Some((path_rewrite, matched)) => {
            let mut target = String::with_capacity(64);
            rewrite_target(
                path_rewrite,
                matched,
                parts.uri.path(),
                parts.uri.query(),
                &mut target,
            );
            if origin_form_target(target.as_bytes()) {
                out.extend_from_slice(target.as_bytes());
            } else {
                // As the fast path does with a target it cannot write.
                tracing::warn!(path = %target, "rewritten path is not a valid request target; forwarding the original");
                let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                out.extend_from_slice(original.as_bytes());
            }
        }
        None => {
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            out.extend_from_slice(if target.is_empty() {
                b"/"
            } else {
                target.as_bytes()
            });
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header(out, b"host", host_override.or(host).unwrap_or_default());
    let mut xff = false;
    let mut cookies = 0;
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        match rule(n) {
            Rule::Keep if header_edits.is_some_and(|e| edited_away(e, n)) => {}
            Rule::Keep | Rule::Expect => {
                if name == header::COOKIE {
                    cookies += 1;
                } else if !(fwd.request_id.is_some() && n == b"x-request-id") {
                    header(out, n, value.as_bytes());
                }
            }
            Rule::ForwardedFor => xff = true,
            // The length is the framing's (below); the rest is
            // connection-specific or replaced.
            _ => {}
        }
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, v) in parts.headers.get_all(header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = header_edits {
        for (name, value) in added_fields(e) {
            header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff {
        for v in parts.headers.get_all("x-forwarded-for") {
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.client.as_bytes());
    out.extend_from_slice(b"\r\n");
    header(out, b"x-forwarded-proto", fwd.client.proto.as_bytes());
    if let Some(host) = host {
        header(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"via: 2 ");
    out.extend_from_slice(VIA_NAME.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(id) = fwd.request_id {
        header(out, b"x-request-id", id.as_bytes());
    }
    match body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            let mut n = n;
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            out.extend_from_slice(&digits[i..]);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The head for an `h2c` endpoint of the HTTP/2 request `parts`, built in
/// one pass over its fields by the rule table: `X-Forwarded-For` appended
/// to, `X-Forwarded-Proto` and `X-Forwarded-Host` replaced, `Via: 2
/// roundhouse` appended, `te: trailers` kept (gRPC needs it; RFC 9113
/// §8.2.2 allows no other `TE`), `:authority` kept (or `--host-header`,
/// or the rule's hostname rewrite), the rule's header edits and path
/// rewrite applied (in the hyper path's order: edits after the forwarding
/// fields). An HTTP/2 message carries no other connection-specific field
/// (the `h2` crate refuses one as malformed), so there is nothing else to
/// strip.
pub(crate) fn h2_request(parts: Parts, fwd: &Forwarding<'_>) -> Request<()> {
    let Parts {
        method,
        uri,
        headers: theirs,
        ..
    } = parts;
    let header_edits = fwd.edits.map(|e| &e.filters.request_headers);
    let rewrite = fwd
        .edits
        .and_then(|e| e.filters.rewrite.as_ref().map(|r| (r, e.matched)));
    let forwarded_host = match uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => theirs.get(header::HOST).cloned(),
    };
    let mut headers = HeaderMap::with_capacity(theirs.len() + 5);
    let mut xff: Option<Vec<u8>> = None;
    let mut last = None;
    for (name, value) in theirs {
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            // Another value of the previous field.
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        let n = name.as_str().as_bytes();
        match rule(n) {
            Rule::Keep if header_edits.is_some_and(|e| edited_away(e, n)) => {}
            Rule::Keep if fwd.request_id.is_some() && name == X_REQUEST_ID => {}
            Rule::Keep | Rule::Expect | Rule::ContentLength => {
                headers.append(name, value);
            }
            Rule::HopByHop
                if name == header::TE && value.as_bytes().eq_ignore_ascii_case(b"trailers") =>
            {
                headers.append(name, value);
            }
            Rule::ForwardedFor => {
                let joined = xff.get_or_insert_with(|| Vec::with_capacity(64));
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            // Replaced below, or connection-specific.
            _ => {}
        }
    }
    let xff = match xff {
        Some(mut joined) => {
            joined.extend_from_slice(fwd.client.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| fwd.client.header_value().clone())
        }
        None => fwd.client.header_value().clone(),
    };
    headers.append(X_FORWARDED_FOR.clone(), xff);
    headers.append(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(fwd.client.proto),
    );
    if let Some(h) = forwarded_host {
        headers.append(X_FORWARDED_HOST.clone(), h);
    }
    headers.append(header::VIA, HeaderValue::from_static("2 roundhouse"));
    if let Some(id) = fwd.request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.append(X_REQUEST_ID.clone(), id);
    }
    if let Some(e) = header_edits {
        for (name, value) in added_fields(e) {
            headers.append(name.clone(), value.clone());
        }
    }
    // :authority: the rule's hostname, --host-header, or the client's.
    let override_authority = rewrite
        .and_then(|(r, _)| r.hostname.as_ref())
        .or(fwd.host_override_value)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    let mut p = uri.into_parts();
    p.scheme = Some(http::uri::Scheme::HTTP);
    if let Some(a) = override_authority {
        p.authority = Some(a);
    } else if p.authority.is_none() {
        p.authority = Some(http::uri::Authority::from_static("upstream"));
    }
    if let Some((path_rewrite, matched)) =
        rewrite.and_then(|(r, m)| r.path.as_ref().map(|p| (p, m)))
    {
        let (path, query) = match &p.path_and_query {
            Some(pq) => (pq.path(), pq.query()),
            None => ("/", None),
        };
        let mut target = String::with_capacity(64);
        rewrite_target(path_rewrite, matched, path, query, &mut target);
        if origin_form_target(target.as_bytes())
            && let Ok(pq) = target.parse()
        {
            p.path_and_query = Some(pq);
        }
    }
    if p.path_and_query.is_none() {
        p.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from_parts(p).unwrap_or_default();
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    request
}

/// What the bytes at the front of an upstream connection are.
pub(crate) enum Parsed {
    /// Not a complete head yet.
    Partial,
    /// A 1xx interim response of this many bytes, to be skipped.
    Interim(usize),
    /// A final response head.
    Ready(Head),
}

/// A final response head from an HTTP/1.1 endpoint, ready for HTTP/2.
pub(crate) struct Head {
    /// Bytes of the upstream buffer taken: the head, and the body bytes
    /// that came with it (`first`).
    pub(crate) len: usize,
    /// The body bytes that came with the head (a `Content-Length` or
    /// close-delimited body's; a chunked body is decoded later).
    pub(crate) first: Bytes,
    /// How its body is delimited.
    pub(crate) framing: Framing,
    /// Whether the upstream connection can be reused afterwards.
    pub(crate) reusable: bool,
    /// The response for the client (headers rewritten, no body).
    pub(crate) response: Response<()>,
}

/// Parses the response head at the front of `buf` into a response for an
/// HTTP/2 client: hop-by-hop fields and those named in `Connection` removed
/// (HTTP/2 has no such fields), `Transfer-Encoding` dropped (the body is
/// passed on decoded), the route rule's response header `edits` applied,
/// `Via: 2 roundhouse` appended. The framing rules are the fast path's
/// (RFC 9112 §6.3). The head and the body bytes that came with it are
/// copied once; header values and `first` are slices of that.
pub(crate) fn parse_response(
    buf: &[u8],
    head_request: bool,
    edits: Option<&HeaderEdits>,
) -> Result<Parsed, BadResponse> {
    let mut fields = Fields::new();
    let resp = match read_response(buf, head_request, &mut fields)? {
        HeadRead::Partial => return Ok(Parsed::Partial),
        HeadRead::Interim(len) => return Ok(Parsed::Interim(len)),
        HeadRead::Final(resp) => resp,
    };
    let status = StatusCode::from_u16(resp.status).map_err(|_| BadResponse("invalid status"))?;

    let (len, framing) = (resp.len, resp.framing);
    let first = match framing {
        Framing::Length(n) => (buf.len() - len).min(usize::try_from(n).unwrap_or(usize::MAX)),
        Framing::UntilClose => buf.len() - len,
        Framing::Empty | Framing::Chunked => 0,
    };
    // One copy of the head and the first body bytes; every value is a
    // slice of it.
    let head = Bytes::copy_from_slice(&buf[..len + first]);
    let mut map = HeaderMap::with_capacity(resp.headers.len() + 1);
    let mut length_written = false;
    for (h, &r) in resp.headers.iter().zip(resp.rules) {
        let name = h.name.as_bytes();
        match r {
            Rule::ContentLength => {
                if resp.chunked || length_written {
                    continue;
                }
                length_written = true;
            }
            r if is_hop_by_hop(r, false) => continue,
            _ if resp.connection_options && named_in_connection(name, resp.headers) => continue,
            Rule::Keep if edits.is_some_and(|e| edited_away(e, name)) => continue,
            _ => {}
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            return Err(BadResponse("invalid header name"));
        };
        let value = h.value.trim_ascii();
        let value = if value.is_empty() {
            HeaderValue::from_static("")
        } else {
            let start = value.as_ptr() as usize - buf.as_ptr() as usize;
            HeaderValue::from_maybe_shared(head.slice(start..start + value.len()))
                .map_err(|_| BadResponse("invalid header value"))?
        };
        map.append(name, value);
    }
    if let Some(e) = edits {
        for (name, value) in added_fields(e) {
            map.append(name.clone(), value.clone());
        }
    }
    map.append(header::VIA, HeaderValue::from_static("2 roundhouse"));
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = map;
    Ok(Parsed::Ready(Head {
        len: len + first,
        first: head.slice(len..),
        framing,
        reusable: resp.reusable,
        response,
    }))
}

fn named_in_connection(name: &[u8], headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| rule(h.name.as_bytes()) == Rule::Connection)
        .flat_map(|h| connection_tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn write(parts: &Parts, fwd: &Forwarding<'_>, body: BodyFraming) -> String {
        let mut out = Vec::new();
        write_request(parts, fwd, body, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_h2_request_becomes_an_http11_head() {
        let client = ClientIp::new("10.1.2.3".parse().unwrap());
        let req = Request::get("http://app.example:8443/a/b?x=1")
            .header("accept", "*/*")
            .header("te", "trailers")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("content-length", "5")
            .header("via", "1.0 other")
            .body(())
            .unwrap();
        let fwd = Forwarding {
            client: &client,
            host_override: None,
            request_id: None,
            edits: None,
            host_override_value: None,
        };
        assert_eq!(
            write(&parts(req), &fwd, BodyFraming::Length(5)),
            "GET /a/b?x=1 HTTP/1.1\r\nhost: app.example:8443\r\naccept: */*\r\nvia: 1.0 other\r\n\
             cookie: a=1; b=2\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app.example:8443\r\n\
             via: 2 roundhouse\r\ncontent-length: 5\r\n\r\n"
        );
    }

    #[test]
    fn host_override_request_id_and_chunking() {
        let client = ClientIp::tls("::1".parse().unwrap());
        let req = Request::post("https://a/up")
            .header("x-request-id", "theirs")
            .body(())
            .unwrap();
        let fwd = Forwarding {
            client: &client,
            host_override: Some(b"b"),
            request_id: Some("ours-1"),
            edits: None,
            host_override_value: None,
        };
        assert_eq!(
            write(&parts(req), &fwd, BodyFraming::Chunked),
            "POST /up HTTP/1.1\r\nhost: b\r\nx-forwarded-for: ::1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: a\r\nvia: 2 roundhouse\r\nx-request-id: ours-1\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn an_h2_request_for_an_h2c_endpoint() {
        let client = ClientIp::new("10.1.2.3".parse().unwrap());
        let req = Request::post("http://api.example:8080/pkg.Svc/Call?x=1")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed")
            .header("x-request-id", "theirs")
            .header("grpc-timeout", "5S")
            .body(())
            .unwrap();
        let fwd = Forwarding {
            client: &client,
            host_override: None,
            request_id: Some("ours"),
            edits: None,
            host_override_value: None,
        };
        let up = h2_request(parts(req.clone()), &fwd);
        assert_eq!(up.uri(), "http://api.example:8080/pkg.Svc/Call?x=1");
        assert_eq!(up.version(), http::Version::HTTP_2);
        let fields: Vec<(&str, &str)> = up
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", "5S"),
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.1.2.3"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "api.example:8080"),
                ("via", "2 roundhouse"),
                ("x-request-id", "ours"),
            ]
        );
        // --host-header becomes :authority; the forwarded host stays the
        // client's.
        let over = HeaderValue::from_static("internal:9000");
        let fwd = Forwarding {
            host_override_value: Some(&over),
            request_id: None,
            ..fwd
        };
        let up = h2_request(parts(req), &fwd);
        assert_eq!(up.uri(), "http://internal:9000/pkg.Svc/Call?x=1");
        assert_eq!(up.headers()["x-forwarded-host"], "api.example:8080");
        assert_eq!(up.headers()["x-request-id"], "theirs");
    }

    fn ready(raw: &str, head: bool) -> Head {
        match parse_response(raw.as_bytes(), head, None) {
            Ok(Parsed::Ready(h)) => h,
            Ok(_) => panic!("not ready: {raw:?}"),
            Err(e) => panic!("{e}: {raw:?}"),
        }
    }

    #[test]
    fn a_response_head_is_rewritten_for_http2() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
                   Keep-Alive: timeout=5\r\nX-Kept:  yes \r\nEmpty:\r\n\r\nhello";
        let h = ready(raw, false);
        assert_eq!(h.len, raw.len(), "the head and its body");
        assert_eq!(h.first, "hello");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.reusable);
        let r = &h.response;
        assert_eq!(r.status(), 200);
        let names: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length", "x-kept", "empty", "via"]);
        assert_eq!(r.headers()["x-kept"], "yes");
        assert_eq!(r.headers()["via"], "2 roundhouse");

        let chunked = ready(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(chunked.framing, Framing::Chunked);
        assert!(!chunked.reusable, "both framings: not trusted again");
        assert!(chunked.response.headers().get("content-length").is_none());
        assert!(
            chunked
                .response
                .headers()
                .get("transfer-encoding")
                .is_none()
        );

        let until_close = ready("HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!(
            (until_close.framing, until_close.reusable),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            ready("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).framing,
            Framing::Empty
        );
        assert_eq!(
            ready("HTTP/1.1 304 Not Modified\r\n\r\n", false).framing,
            Framing::Empty
        );
    }

    #[test]
    fn interim_partial_and_bad_responses() {
        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false, None),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false, None),
            Ok(Parsed::Partial)
        ));
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
        ] {
            assert!(
                parse_response(raw.as_bytes(), false, None).is_err(),
                "{raw:?}"
            );
        }
    }
}

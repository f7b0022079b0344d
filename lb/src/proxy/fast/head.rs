//! Request and response heads on the fast path: parsed once with `httparse`
//! and rewritten straight into a reused buffer, with the same header rules
//! as the general path (`proxy::headers`).
//!
//! The request side is deliberately narrow. Anything it is not sure about
//! (a body, an upgrade, `Expect`, absolute-form or unusual targets,
//! HTTP/1.0, `Connection` options other than `close`/`keep-alive`, a
//! missing, repeated or odd `Host`, a head at or over the limits, anything
//! httparse rejects) is [`Request::Fallback`]: the connection goes to the
//! general path, which answers it exactly as before (400, 431, 501, …).

use std::mem::MaybeUninit;
use std::ops::Range;

use http::{HeaderName, Method};

use crate::discovery::route::{HeaderEdits, PathMatch};
use crate::proxy::attempt::is_idempotent;
use crate::proxy::filters::rewrite_target;
use crate::proxy::headers::{
    ClientIp, Rule, VIA_NAME, added_fields, connection_tokens, edited_away, is_hop_by_hop, rule,
};
use crate::selection::{RequestView, RuleFilters};

/// Most headers the fast path parses in one head (more → fallback for
/// requests, 502 for responses).
pub const MAX_HEADERS: usize = 100;
/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-header-bytes`.
    pub max_header_bytes: usize,
    /// `--max-headers`.
    pub max_headers: usize,
}

/// What the bytes at the front of a client connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not a complete head yet.
    Partial,
    /// Not for the fast path: hand the connection to the general path.
    Fallback,
    /// A bodiless request, rewritten for upstream.
    Ready(RequestHead),
}

/// A parsed request head. It holds offsets, not borrows, so the client
/// buffer stays free to use.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head in the client buffer.
    pub len: usize,
    /// Where the `Host` value is in the buffer.
    host: Range<usize>,
    /// Where the path (the target without its query) is in the buffer.
    path: Range<usize>,
    /// RFC 9110 §9.2.2 idempotent method.
    pub idempotent: bool,
    /// `HEAD`: the response has no body whatever it says.
    pub head: bool,
    /// The client sent `Connection: close`.
    pub close: bool,
}

impl RequestHead {
    /// The `Host` header, for routing (`buf` is the parsed buffer).
    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b str {
        std::str::from_utf8(&buf[self.host.clone()]).unwrap_or_default()
    }

    /// The path, for routing (`buf` is the parsed buffer).
    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        std::str::from_utf8(&buf[self.path.clone()]).unwrap_or("/")
    }
}

/// Where `part` (a sub-slice of `buf`) lies in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

/// RFC 3986 unreserved characters and sub-delims.
const fn unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// RFC 3986 characters allowed in an origin-form target (pchar, `/`, `?`).
const fn target_byte(b: u8) -> bool {
    unreserved_or_sub_delim(b) || matches!(b, b':' | b'@' | b'/' | b'?' | b'%')
}

/// Characters of `uri-host [":" port]` without userinfo.
const fn host_byte(b: u8) -> bool {
    unreserved_or_sub_delim(b) || matches!(b, b':' | b'[' | b']' | b'%')
}

/// The bytes a target (`host: false`) or a `Host` value (`true`) may hold,
/// as a table: one load per byte instead of a chain of comparisons.
const fn byte_table(host: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = if host {
            host_byte(b as u8)
        } else {
            target_byte(b as u8)
        };
        b += 1;
    }
    table
}

static TARGET_BYTES: [bool; 256] = byte_table(false);
static HOST_BYTES: [bool; 256] = byte_table(true);

/// Whether every byte of `s` is in `table`.
fn all_in(table: &[bool; 256], s: &[u8]) -> bool {
    s.iter().all(|b| table[usize::from(*b)])
}

/// Whether `target` holds only the bytes of an origin-form request target
/// (checked before a rewritten target is written into a request head).
pub(crate) fn origin_form_target(target: &[u8]) -> bool {
    all_in(&TARGET_BYTES, target)
}

/// Writes the field line `name: value` and its CRLF.
pub(crate) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// This proxy's `Via` line (the general path appends the same value).
fn via(out: &mut Vec<u8>) {
    out.extend_from_slice(b"via: 1.1 ");
    out.extend_from_slice(VIA_NAME.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What the bytes at the front of a client connection are, parsed but not
/// yet rewritten ([`parse`]).
#[derive(Debug)]
pub enum Parse<'b, 'h> {
    /// Not a complete head yet.
    Partial,
    /// Not for the fast path: hand the connection to the general path.
    Fallback,
    /// A bodiless request, to be routed and then rewritten
    /// ([`Parsed::write`]).
    Ready(Parsed<'b, 'h>),
}

/// A parsed request head: what routing reads (its [`RequestView`],
/// [`Parsed::host`]) and what [`Parsed::write`] rewrites for upstream.
#[derive(Debug)]
pub struct Parsed<'b, 'h> {
    buf: &'b [u8],
    len: usize,
    method: &'b str,
    target: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    host: &'b [u8],
    headers: &'h [httparse::Header<'b>],
    /// Each field's rule (`rules[i]` is `headers[i]`'s), looked up once
    /// for the checks in [`parse`] and the rewrite in [`Parsed::write`].
    rules: &'h [Rule],
    close: bool,
}

/// Room for the fields of one request head and their rules, filled by
/// [`parse`] (on the caller's stack: a [`Parsed`] borrows it).
#[derive(Debug)]
pub struct Fields<'b> {
    /// Left uninitialised: httparse writes the ones it parses (filling
    /// 100 empty fields first cost every request a 3.2 KB write).
    headers: [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
    rules: [Rule; MAX_HEADERS],
}

impl Fields<'_> {
    /// Empty room.
    pub fn new() -> Self {
        Self {
            headers: [const { MaybeUninit::uninit() }; MAX_HEADERS],
            rules: [Rule::Keep; MAX_HEADERS],
        }
    }
}

impl Default for Fields<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// How a rule's filters change the head sent upstream.
#[derive(Debug, Clone, Copy)]
pub struct RequestEdits<'r> {
    /// The rule's filters.
    pub filters: &'r RuleFilters,
    /// The path condition that took the request (for a prefix rewrite).
    pub matched: &'r PathMatch,
}

/// Parses the request head at the front of `buf` into `fields` (up to
/// `limits.max_headers` of them). Anything the fast path does not take is
/// [`Parse::Fallback`] (see the module's documentation).
pub fn parse<'b, 'h>(buf: &'b [u8], limits: Limits, fields: &'h mut Fields<'b>) -> Parse<'b, 'h> {
    let n = limits.max_headers.clamp(1, MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields.headers[..n]) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_header_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_header_bytes => {
            return Parse::Partial;
        }
        _ => return Parse::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::Fallback;
    };
    if method == "CONNECT" || !target.starts_with('/') || !all_in(&TARGET_BYTES, target.as_bytes())
    {
        return Parse::Fallback;
    }
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut host: Option<&[u8]> = None;
    let mut content_length = false;
    let mut close = false;
    let rules = &mut fields.rules[..headers.len()];
    for (h, r) in headers.iter().zip(rules.iter_mut()) {
        *r = rule(h.name.as_bytes());
        match *r {
            Rule::Host if host.replace(h.value).is_some() => return Parse::Fallback,
            Rule::ContentLength if content_length || h.value.trim_ascii() != b"0" => {
                return Parse::Fallback;
            }
            Rule::ContentLength => content_length = true,
            Rule::TransferEncoding | Rule::Upgrade | Rule::Expect => return Parse::Fallback,
            Rule::Connection => {
                for token in connection_tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Parse::Fallback;
                    }
                }
            }
            _ => {}
        }
    }
    let Some(host) = host.filter(|h| !h.is_empty() && all_in(&HOST_BYTES, h)) else {
        return Parse::Fallback;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Parse::Ready(Parsed {
        buf,
        len,
        method,
        target,
        path,
        query,
        host,
        headers,
        rules,
        close,
    })
}

impl RequestView for Parsed<'_, '_> {
    fn method(&self) -> &str {
        self.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn query(&self) -> Option<&str> {
        self.query
    }

    fn any_header(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let name = name.as_str().as_bytes();
        self.headers
            .iter()
            .filter(|h| h.name.len() == name.len() && h.name.as_bytes().eq_ignore_ascii_case(name))
            .any(|h| f(h.value))
    }
}

impl Parsed<'_, '_> {
    /// The `Host` value (only host characters: valid UTF-8).
    pub fn host(&self) -> &str {
        std::str::from_utf8(self.host).unwrap_or_default()
    }

    /// Bytes of the head.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the head is empty (never, for a parsed head).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the head to send upstream into `out`: hop-by-hop headers
    /// removed, `X-Forwarded-For` appended to, `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` replaced, `Via` appended, `Host` kept unless
    /// `host_override` (or the rule's host rewrite); with `edits`, the
    /// rule's header edits and path rewrite applied by the same header rule
    /// table.
    pub fn write(
        &self,
        client: &ClientIp,
        host_override: Option<&[u8]>,
        edits: Option<RequestEdits<'_>>,
        out: &mut Vec<u8>,
    ) -> RequestHead {
        let header_edits = edits.map(|e| &e.filters.request_headers);
        let rewrite = edits.and_then(|e| e.filters.rewrite.as_ref().map(|r| (r, e.matched)));
        let host_override = rewrite
            .and_then(|(r, _)| r.hostname.as_ref())
            .map(|h| h.as_bytes())
            .or(host_override);
        out.clear();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        match rewrite.and_then(|(r, m)| r.path.as_ref().map(|p| (p, m))) {
            Some((path_rewrite, matched)) => {
                let mut target = String::with_capacity(self.target.len() + 16);
                rewrite_target(path_rewrite, matched, self.path, self.query, &mut target);
                if origin_form_target(target.as_bytes()) {
                    out.extend_from_slice(target.as_bytes());
                } else {
                    // As the hyper path does with a target it cannot parse.
                    tracing::warn!(path = %target, "rewritten path is not a valid request target; forwarding the original");
                    out.extend_from_slice(self.target.as_bytes());
                }
            }
            None => out.extend_from_slice(self.target.as_bytes()),
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut xff = false;
        for (h, r) in self.headers.iter().zip(self.rules) {
            let name = h.name.as_bytes();
            match *r {
                Rule::Keep if header_edits.is_some_and(|e| edited_away(e, name)) => {}
                Rule::Keep | Rule::ContentLength => header(out, name, h.value),
                Rule::Host => header(out, b"host", host_override.unwrap_or(h.value)),
                Rule::ForwardedFor => xff = true,
                _ => {}
            }
        }
        if let Some(e) = header_edits {
            for (name, value) in added_fields(e) {
                header(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if xff {
            for (h, r) in self.headers.iter().zip(self.rules) {
                if *r == Rule::ForwardedFor {
                    out.extend_from_slice(h.value);
                    out.extend_from_slice(b", ");
                }
            }
        }
        out.extend_from_slice(client.as_bytes());
        out.extend_from_slice(b"\r\n");
        header(out, b"x-forwarded-proto", client.proto.as_bytes());
        header(out, b"x-forwarded-host", self.host);
        via(out);
        out.extend_from_slice(b"\r\n");
        RequestHead {
            len: self.len,
            host: range_in(self.buf, self.host),
            path: range_in(self.buf, self.path.as_bytes()),
            idempotent: Method::from_bytes(self.method.as_bytes()).is_ok_and(|m| is_idempotent(&m)),
            head: self.method == "HEAD",
            close: self.close,
        }
    }
}

/// Parses the request head at the front of `buf` and, when it is for the
/// fast path, writes the head to send upstream into `out` with no route
/// filters ([`parse`], then [`Parsed::write`]).
pub fn parse_request(
    buf: &[u8],
    limits: Limits,
    client: &ClientIp,
    host_override: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Request {
    let mut fields = Fields::new();
    match parse(buf, limits, &mut fields) {
        Parse::Partial => Request::Partial,
        Parse::Fallback => Request::Fallback,
        Parse::Ready(parsed) => Request::Ready(parsed.write(client, host_override, None, out)),
    }
}

/// The method and target of a complete request head (for the access log).
pub fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    (
        std::str::from_utf8(method).unwrap_or("-"),
        std::str::from_utf8(target).unwrap_or("-"),
    )
}

/// The values of the header fields called `name` in a complete request
/// head (trimmed).
pub fn header_values<'h>(head: &'h [u8], name: &'h [u8]) -> impl Iterator<Item = &'h [u8]> + 'h {
    head.split(|b| *b == b'\n').skip(1).filter_map(move |line| {
        let colon = line.iter().position(|b| *b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Replaces every `name` field of a rewritten head (`out`, as
/// [`parse_request`] wrote it) with one `name: value` field.
pub fn set_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // In place: the lines before the final empty one are compacted, those
    // called `name` left out.
    let end = out.len() - usize::from(out.ends_with(b"\r\n")) * 2;
    let (mut read, mut write) = (0, 0);
    while read < end {
        let line_end = out[read..end]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(end, |p| read + p + 1);
        let line = &out[read..line_end];
        let named = line
            .iter()
            .position(|b| *b == b':')
            .is_some_and(|colon| line[..colon].eq_ignore_ascii_case(name));
        if !named {
            out.copy_within(read..line_end, write);
            write += line_end - read;
        }
        read = line_end;
    }
    out.truncate(write);
    header(out, name, value);
    out.extend_from_slice(b"\r\n");
}

/// How an upstream response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked, passed through as it is.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// What the bytes at the front of an upstream connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Not a complete head yet.
    Partial,
    /// A 1xx interim response of `len` bytes, to be skipped.
    Interim {
        /// Head length.
        len: usize,
    },
    /// A final response head, rewritten for the client.
    Ready(ResponseHead),
}

/// A parsed final response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head in the upstream buffer.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the upstream connection can be reused afterwards.
    pub reusable: bool,
    /// Whether the client connection must close after this response.
    pub close: bool,
}

/// Why an upstream response cannot be forwarded (the log line says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadResponse(pub &'static str);

/// A final response head as parsed: its fields, each field's rule, and
/// what the framing rules (RFC 9112 §6.3) make of it. Both transports that
/// read HTTP/1.1 responses (the fast path's and the HTTP/2 one's) start
/// from this, so they frame and reuse alike.
#[derive(Debug)]
pub(crate) struct FinalHead<'b, 'h> {
    /// Bytes of the head.
    pub(crate) len: usize,
    /// Status code (three digits, not 1xx).
    pub(crate) status: u16,
    /// Reason phrase.
    pub(crate) reason: &'b str,
    /// The fields, in order.
    pub(crate) headers: &'h [httparse::Header<'b>],
    /// `rules[i]` is `headers[i]`'s rule.
    pub(crate) rules: &'h [Rule],
    /// How the body is delimited.
    pub(crate) framing: Framing,
    /// Whether the connection can carry another request afterwards.
    pub(crate) reusable: bool,
    /// `Transfer-Encoding: chunked` was sent (any `Content-Length` is not
    /// forwarded).
    pub(crate) chunked: bool,
    /// `Connection` names other fields, which are not forwarded either.
    pub(crate) connection_options: bool,
}

/// What the bytes at the front of an upstream connection are ([`read_response`]).
#[derive(Debug)]
pub(crate) enum HeadRead<'b, 'h> {
    /// Not a complete head yet.
    Partial,
    /// A 1xx interim response of this many bytes, to be skipped.
    Interim(usize),
    /// A final response head.
    Final(FinalHead<'b, 'h>),
}

/// Parses the response head at the front of `buf` into `fields` and judges
/// its framing (`head_request`: the response to `HEAD` has no body): a
/// `Content-Length` that is not one number, a transfer coding other than
/// `chunked`, a protocol switch or a head over the limits is refused.
/// Inlined into its two callers, where the judged head stays in registers
/// (a call returning it cost the fast path ~100 instructions per request).
#[inline(always)]
pub(crate) fn read_response<'b, 'h>(
    buf: &'b [u8],
    head_request: bool,
    fields: &'h mut Fields<'b>,
) -> Result<HeadRead<'b, 'h>, BadResponse> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields.headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => {
            return Ok(HeadRead::Partial);
        }
        Ok(httparse::Status::Partial) => return Err(BadResponse("response head too large")),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse("malformed response head"));
    };
    if status == 101 {
        return Err(BadResponse("unexpected protocol switch"));
    }
    if (100..200).contains(&status) {
        return Ok(HeadRead::Interim(len));
    }
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut reusable = version == 1;
    let mut connection_options = false;
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    // Each field's rule, looked up once for the checks and the rewrite.
    let rules = &mut fields.rules[..headers.len()];
    for (h, r) in headers.iter().zip(rules.iter_mut()) {
        *r = rule(h.name.as_bytes());
        match *r {
            Rule::ContentLength => {
                let v = h.value.trim_ascii();
                let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
                    .ok_or(BadResponse("invalid Content-Length"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(BadResponse("conflicting Content-Length"));
                }
                content_length = Some(n);
            }
            Rule::TransferEncoding => {
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse("unsupported transfer coding"));
                }
                chunked = true;
            }
            Rule::Connection => {
                for token in connection_tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        reusable = false;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        connection_options = true;
                    }
                }
            }
            _ => {}
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        // Both: Transfer-Encoding wins, Content-Length is dropped, and the
        // connection is not trusted again (RFC 9112 §6.3).
        if content_length.is_some() {
            reusable = false;
        }
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    Ok(HeadRead::Final(FinalHead {
        len,
        status,
        reason: resp.reason.unwrap_or(""),
        headers,
        rules,
        framing,
        reusable,
        chunked,
        connection_options,
    }))
}

/// Parses the response head at the front of `buf` (`read_response`) and
/// writes the head for the client into `out`: hop-by-hop headers (and those
/// named in `Connection`) removed, `Via` appended, `Connection: close`
/// added when `client_close` or the body runs until the upstream closes;
/// with `edits`, a route's response header edits applied by the same
/// table.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    edits: Option<&HeaderEdits>,
    out: &mut Vec<u8>,
) -> Result<Response, BadResponse> {
    let mut fields = Fields::new();
    let head = match read_response(buf, head_request, &mut fields)? {
        HeadRead::Partial => return Ok(Response::Partial),
        HeadRead::Interim(len) => return Ok(Response::Interim { len }),
        HeadRead::Final(head) => head,
    };
    let close = client_close || head.framing == Framing::UntilClose;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (head.status / 100) as u8,
        b'0' + (head.status / 10 % 10) as u8,
        b'0' + (head.status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for (h, r) in head.headers.iter().zip(head.rules) {
        let name = h.name.as_bytes();
        match *r {
            Rule::ContentLength => {
                if !head.chunked && !length_written {
                    header(out, name, h.value.trim_ascii());
                    length_written = true;
                }
            }
            r if is_hop_by_hop(r, false) => {}
            _ if head.connection_options && named_in_connection(name, head.headers) => {}
            Rule::Keep if edits.is_some_and(|e| edited_away(e, name)) => {}
            _ => header(out, name, h.value),
        }
    }
    if let Some(e) = edits {
        for (name, value) in added_fields(e) {
            header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if head.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    via(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response::Ready(ResponseHead {
        len: head.len,
        status: head.status,
        framing: head.framing,
        reusable: head.reusable,
        close,
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
    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 16,
    };

    #[test]
    fn request_line_header_values_and_set_header() {
        let raw =
            b"GET /a:b?x=1 HTTP/1.1\r\nHost: h\r\nX-Request-Id:  one \r\nx-request-id: two\r\n\r\n";
        assert_eq!(request_line(raw), ("GET", "/a:b?x=1"));
        let ids: Vec<&[u8]> = header_values(raw, b"x-request-id").collect();
        assert_eq!(ids, vec![&b"one"[..], &b"two"[..]]);
        let mut out = b"GET /a:b HTTP/1.1\r\nhost: h\r\nX-Request-Id: one\r\nvia: 1.1 roundhouse\r\nx-request-id: two\r\n\r\n".to_vec();
        set_header(&mut out, b"x-request-id", b"new-1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a:b HTTP/1.1\r\nhost: h\r\nvia: 1.1 roundhouse\r\nx-request-id: new-1\r\n\r\n"
        );
    }

    fn req(raw: &str) -> (Request, String) {
        let mut out = Vec::new();
        let client = ClientIp::new("10.1.2.3".parse().unwrap());
        let r = parse_request(raw.as_bytes(), LIMITS, &client, None, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn rewrites_a_plain_get() {
        let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed\r\nVia: 1.0 other\r\n\r\nNEXT";
        let (r, out) = req(raw);
        let Request::Ready(head) = r else {
            panic!("{r:?}")
        };
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(head.host(raw.as_bytes()), "example.com:8080");
        assert_eq!(head.path(raw.as_bytes()), "/a/b");
        assert!(head.idempotent && !head.head && !head.close);
        assert_eq!(
            out,
            "GET /a/b?x=1 HTTP/1.1\r\nhost: example.com:8080\r\nAccept: */*\r\nVia: 1.0 other\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: example.com:8080\r\nvia: 1.1 roundhouse\r\n\r\n"
        );
    }

    #[test]
    fn host_override_and_close() {
        let raw = "HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n";
        let mut out = Vec::new();
        let client = ClientIp::new("::1".parse().unwrap());
        let r = parse_request(raw.as_bytes(), LIMITS, &client, Some(b"b"), &mut out);
        let Request::Ready(head) = r else {
            panic!("{r:?}")
        };
        assert!(head.close && head.head && head.idempotent);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HEAD / HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\nx-forwarded-for: ::1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a\r\nvia: 1.1 roundhouse\r\n\r\n"
        );
        let (r, _) = req("POST / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(
            r,
            Request::Ready(RequestHead {
                idempotent: false,
                ..
            })
        ));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n").0, Request::Partial);
        assert_eq!(req("GE").0, Request::Partial);
    }

    #[test]
    fn anything_unusual_falls_back() {
        let long = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nx: {}\r\n\r\n",
            "v".repeat(1100)
        );
        let many: String = (0..20).map(|i| format!("x{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let partial_at_limit = format!("GET / HTTP/1.1\r\nx: {}", "v".repeat(1100));
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET /\"x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &long,
            &many,
            &partial_at_limit,
        ] {
            assert_eq!(req(raw).0, Request::Fallback, "{raw:?}");
        }
    }

    fn resp(
        raw: &str,
        head_request: bool,
        client_close: bool,
    ) -> (Result<Response, BadResponse>, String) {
        let mut out = Vec::new();
        let r = parse_response(raw.as_bytes(), head_request, client_close, None, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn rewrites_a_plain_response() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nhello";
        let (r, out) = resp(raw, false, false);
        assert_eq!(
            r,
            Ok(Response::Ready(ResponseHead {
                len: raw.len() - 5,
                status: 200,
                framing: Framing::Length(5),
                reusable: true,
                close: false,
            }))
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: yes\r\nvia: 1.1 roundhouse\r\n\r\n"
        );
    }

    #[test]
    fn framing_rules() {
        let framing = |raw: &str, head: bool| match resp(raw, head, false).0 {
            Ok(Response::Ready(h)) => (h.framing, h.reusable, h.close),
            other => panic!("{raw:?}: {other:?}"),
        };
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(framing(chunked, false), (Framing::Chunked, true, false));
        assert_eq!(framing(chunked, true), (Framing::Empty, true, false));
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(framing(both, false), (Framing::Chunked, false, false));
        let (_, out) = resp(both, false, false);
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
        let none = "HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(framing(none, false), (Framing::UntilClose, false, true));
        assert!(resp(none, false, false).1.contains("connection: close\r\n"));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            (Framing::Empty, true, false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            (Framing::Empty, true, false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
                false
            ),
            (Framing::Length(2), false, false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false),
            (Framing::Length(2), false, false)
        );
        let same = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(framing(same, false), (Framing::Length(2), true, false));
        assert_eq!(
            resp(same, false, false).1.matches("Content-Length").count(),
            1
        );
        let (_, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
    }

    #[test]
    fn interim_and_bad_responses() {
        assert_eq!(
            resp("HTTP/1.1 100 Continue\r\n\r\n", false, false).0,
            Ok(Response::Interim { len: 25 })
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            Ok(Response::Partial)
        );
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            assert!(resp(raw, false, false).0.is_err(), "{raw:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_RESPONSE_HEAD));
        assert!(resp(&huge, false, false).0.is_err());
    }
}

//! `lb probe` and `lb check`: tiny HTTP clients so the scratch image needs
//! no shell or curl for health checks and the Helm test.
//!
//! `lb check --grpc` speaks just enough gRPC to call the backend's
//! `roundhouse.v1.Hosts/Get` over one HTTP/2 connection (h2c with prior
//! knowledge): the 5-byte gRPC frame and the one-field protobuf answer are
//! encoded and decoded here by hand, so the binary needs neither tonic nor
//! the backend crate.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The gRPC method `lb check --grpc` calls: `rpc Get(GetRequest) returns
/// (GetResponse)` of `service roundhouse.v1.Hosts` (backend/proto).
pub const GRPC_HOSTS_GET: &str = "/roundhouse.v1.Hosts/Get";

/// A probe or check failure, with a message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not an http:// URL.
    #[error("invalid URL `{0}`: expected http://HOST[:PORT]/PATH")]
    Url(String),
    /// A URL with a path where only the server may be named (`--grpc`).
    #[error(
        "invalid URL `{0}` for --grpc: name the server only (http://HOST[:PORT]); the method called is {GRPC_HOSTS_GET}"
    )]
    GrpcUrl(String),
    /// No answer in time.
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// Connection or protocol failure.
    #[error("{0}: {1}")]
    Request(String, String),
    /// A non-2xx answer (for gRPC: anything but HTTP 200).
    #[error("{0}: answered {1}")]
    Status(String, u16),
    /// A gRPC call that ended with a non-zero `grpc-status`.
    #[error("{url}: gRPC status {code} ({}){}", grpc_code_name(*.code), message_suffix(.message))]
    Grpc {
        /// The method's URL.
        url: String,
        /// `grpc-status`.
        code: u32,
        /// `grpc-message`, percent-decoded (may be empty).
        message: String,
    },
    /// The split is not exact.
    #[error("{0}")]
    Split(String),
}

/// The canonical name of a gRPC status code.
pub fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("unknown code")
}

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

fn parse(url: &str) -> Result<Uri, ClientError> {
    let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ClientError::Url(url.to_owned()));
    }
    Ok(uri)
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    c: &Client<HttpConnector, Empty<Bytes>>,
    uri: &Uri,
    timeout: Duration,
) -> Result<(u16, Bytes), ClientError> {
    let url = uri.to_string();
    let req = Request::get(uri.clone())
        .body(Empty::new())
        .map_err(|_| ClientError::Url(url.clone()))?;
    let fut = async {
        let resp = c
            .request(req)
            .await
            .map_err(|e| ClientError::Request(url.clone(), format!("{e:#}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Request(url.clone(), e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout(url.clone(), timeout))?
}

/// GETs `url`; Ok if it answers 2xx.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), ClientError> {
    let uri = parse(url)?;
    let (status, _) = get(&client(), &uri, timeout).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ClientError::Status(url.to_owned(), status))
    }
}

/// Per-backend answer counts, sorted by name.
pub type Counts = BTreeMap<String, usize>;

/// Why `requests` cannot split exactly over `expect_backends`, if it cannot.
fn impossible_split(requests: usize, expect_backends: usize) -> Option<ClientError> {
    (expect_backends == 0 || !requests.is_multiple_of(expect_backends)).then(|| {
        ClientError::Split(format!(
            "{requests} requests cannot split evenly over {expect_backends} backends"
        ))
    })
}

/// Ok when exactly `expect_backends` names each got `requests / expect_backends`.
fn exact_split(
    counts: &Counts,
    requests: usize,
    expect_backends: usize,
) -> Result<(), ClientError> {
    let share = requests / expect_backends;
    if counts.len() != expect_backends || counts.values().any(|n| *n != share) {
        return Err(ClientError::Split(format!(
            "expected {expect_backends} backends with {share} requests each, got {counts:?}"
        )));
    }
    Ok(())
}

/// Sends `requests` GETs to `url` over keep-alive connections and counts the
/// answers per body (the backend's host name). Ok when exactly
/// `expect_backends` names each got `requests / expect_backends`.
pub async fn check(
    url: &str,
    requests: usize,
    expect_backends: usize,
    timeout: Duration,
) -> Result<Counts, (ClientError, Counts)> {
    let mut counts = Counts::new();
    let fail = |e, c: &Counts| (e, c.clone());
    if let Some(e) = impossible_split(requests, expect_backends) {
        return Err(fail(e, &counts));
    }
    let uri = parse(url).map_err(|e| fail(e, &counts))?;
    let c = client();
    for _ in 0..requests {
        let (status, body) = get(&c, &uri, timeout).await.map_err(|e| fail(e, &counts))?;
        if !(200..300).contains(&status) {
            return Err(fail(ClientError::Status(url.to_owned(), status), &counts));
        }
        let name = String::from_utf8_lossy(&body).trim().to_owned();
        *counts.entry(name).or_insert(0) += 1;
    }
    exact_split(&counts, requests, expect_backends).map_err(|e| fail(e, &counts))?;
    Ok(counts)
}

/// Makes `calls` unary calls of [`GRPC_HOSTS_GET`] over ONE HTTP/2
/// connection (h2c with prior knowledge, like one gRPC channel) to `url`
/// (`http://HOST[:PORT]`) and counts the answers per host name. Ok when
/// exactly `expect_backends` names each got `calls / expect_backends`; a call
/// that ends with a non-zero `grpc-status` is an error ([`ClientError::Grpc`]).
/// `timeout` bounds the connection and each call (and is sent as
/// `grpc-timeout`).
pub async fn check_grpc(
    url: &str,
    calls: usize,
    expect_backends: usize,
    timeout: Duration,
) -> Result<Counts, (ClientError, Counts)> {
    let mut counts = Counts::new();
    let fail = |e, c: &Counts| (e, c.clone());
    if let Some(e) = impossible_split(calls, expect_backends) {
        return Err(fail(e, &counts));
    }
    let method = grpc_method_uri(url).map_err(|e| fail(e, &counts))?;
    let shown = method.to_string();
    let mut channel = tokio::time::timeout(timeout, GrpcChannel::connect(&method))
        .await
        .map_err(|_| fail(ClientError::Timeout(shown.clone(), timeout), &counts))?
        .map_err(|e| fail(e, &counts))?;
    for _ in 0..calls {
        let host = tokio::time::timeout(timeout, channel.hosts_get(&method, timeout))
            .await
            .map_err(|_| fail(ClientError::Timeout(shown.clone(), timeout), &counts))?
            .map_err(|e| fail(e, &counts))?;
        *counts.entry(host).or_insert(0) += 1;
    }
    exact_split(&counts, calls, expect_backends).map_err(|e| fail(e, &counts))?;
    Ok(counts)
}

/// `http://HOST[:PORT]` (an optional trailing `/`) → the absolute URI of
/// [`GRPC_HOSTS_GET`] on that server.
fn grpc_method_uri(url: &str) -> Result<Uri, ClientError> {
    let uri = parse(url)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ClientError::GrpcUrl(url.to_owned()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(GRPC_HOSTS_GET)
        .build()
        .map_err(|_| ClientError::Url(url.to_owned()))
}

/// One HTTP/2 connection: every call is a new stream on it.
struct GrpcChannel {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcChannel {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl GrpcChannel {
    async fn connect(method: &Uri) -> Result<Self, ClientError> {
        let shown = method.to_string();
        let host = method.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = method.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| ClientError::Request(shown.clone(), format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| {
                ClientError::Request(shown.clone(), format!("HTTP/2 (h2c) handshake failed: {e}"))
            })?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "gRPC check connection ended");
            }
        });
        Ok(Self { send, driver })
    }

    /// One unary `Hosts/Get` call: the empty request, the name answered.
    async fn hosts_get(&mut self, method: &Uri, timeout: Duration) -> Result<String, ClientError> {
        let shown = method.to_string();
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::Request(
                shown.clone(),
                format!("{what}: {e} (does it speak HTTP/2 with prior knowledge, h2c?)"),
            )
        };
        // The empty GetRequest: a gRPC frame header only (not compressed,
        // length 0).
        let req = Request::post(method.clone())
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)))
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .map_err(|e| failed("cannot build the request", &e))?;
        self.send
            .ready()
            .await
            .map_err(|e| failed("connection lost", &e))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| failed("call failed", &e))?;
        let (head, body) = resp.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(ClientError::Status(shown.clone(), head.status.as_u16()));
        }
        // A trailers-only answer (the usual form of an error) carries the
        // status in the headers.
        if let Some(status) = grpc_status(&shown, &head.headers)? {
            return Err(status);
        }
        let is_grpc = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !is_grpc {
            return Err(ClientError::Request(
                shown.clone(),
                format!(
                    "not a gRPC answer (content-type {:?})",
                    head.headers.get(header::CONTENT_TYPE)
                ),
            ));
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| failed("answer cut short", &e))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        match grpc_status(&shown, &trailers)? {
            Some(status) => return Err(status),
            None if !trailers.contains_key("grpc-status") => {
                return Err(ClientError::Request(
                    shown.clone(),
                    "the answer ended without grpc-status".into(),
                ));
            }
            None => {}
        }
        let message = single_message(collected.to_bytes())
            .map_err(|e| ClientError::Request(shown.clone(), e))?;
        let host =
            decode_get_response(&message).map_err(|e| ClientError::Request(shown.clone(), e))?;
        Ok(host)
    }
}

/// `Some(error)` for a non-zero `grpc-status` in `headers`, `None` for 0 or
/// none; an unparsable value is an error too.
fn grpc_status(url: &str, headers: &HeaderMap) -> Result<Option<ClientError>, ClientError> {
    let Some(value) = headers.get("grpc-status") else {
        return Ok(None);
    };
    let code: u32 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ClientError::Request(url.to_owned(), format!("bad grpc-status {value:?}"))
        })?;
    if code == 0 {
        return Ok(None);
    }
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Ok(Some(ClientError::Grpc {
        url: url.to_owned(),
        code,
        message,
    }))
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (raw[i], raw.get(i + 1).copied(), raw.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                // Two hex digits: at most 0xff.
                out.push(
                    u8::try_from(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)).unwrap_or(b'?'),
                );
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The one message of a unary answer: a 5-byte frame header (compressed
/// flag, big-endian length) and that many bytes, nothing after.
fn single_message(mut body: Bytes) -> Result<Bytes, String> {
    if body.len() < 5 {
        return Err(format!("answer of {} bytes has no gRPC frame", body.len()));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err("the answer is compressed, which was not asked for".into());
    }
    if body.len() != len {
        return Err(format!(
            "gRPC frame says {len} bytes, the answer has {} after the header",
            body.len()
        ));
    }
    Ok(body)
}

/// Reads a protobuf varint (at most 10 bytes).
fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Decodes `GetResponse { string host = 1; }`, skipping unknown fields as
/// protobuf requires; the last `host` wins. An empty name is an error.
fn decode_get_response(mut buf: &[u8]) -> Result<String, String> {
    let mut host = None;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        let skip = match wire {
            0 => {
                varint(&mut buf)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut buf)?).map_err(|_| "length too large")?,
            5 => 4,
            _ => return Err(format!("unsupported protobuf wire type {wire}")),
        };
        if skip > buf.len() {
            return Err("truncated protobuf field".into());
        }
        let (value, rest) = buf.split_at(skip);
        buf = rest;
        if field == 1 {
            if wire != 2 {
                return Err(format!("field 1 (host) has wire type {wire}, not 2"));
            }
            let name = std::str::from_utf8(value).map_err(|_| "host is not UTF-8")?;
            host = Some(name.to_owned());
        }
    }
    match host {
        Some(h) if !h.is_empty() => Ok(h),
        _ => Err("the answer names no host".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse("http://127.0.0.1:9090/readyz").is_ok());
        assert!(parse("https://x/").is_err());
        assert!(parse("not a url").is_err());
    }

    #[tokio::test]
    async fn probe_unreachable_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = probe(&format!("http://{addr}/"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Request(..)), "{e}");
    }

    // --- lb check --grpc -----------------------------------------------------

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Response;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    type Frames =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// The real backend (h2c + gRPC) named `name` on 127.0.0.1:0.
    async fn real_backend(name: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = backend::AppState::new(name);
        tokio::spawn(backend::run(
            listener,
            state,
            Duration::ZERO,
            std::future::pending(),
        ));
        format!("http://{addr}")
    }

    /// A `GetResponse { host }` message in a gRPC frame, encoded by hand.
    fn framed_host(host: &str) -> Bytes {
        let mut m = vec![0x0a, u8::try_from(host.len()).unwrap()];
        m.extend_from_slice(host.as_bytes());
        let mut f = vec![0];
        f.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
        f.extend_from_slice(&m);
        Bytes::from(f)
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// A gRPC answer: HTTP 200, `headers`, then `data` (if any) and `trailer`
    /// (if any) as frames.
    fn answer(
        headers: &[(&'static str, &'static str)],
        data: Option<Bytes>,
        trailer: Option<HeaderMap>,
    ) -> Response<Frames> {
        let mut frames = Vec::new();
        frames.extend(data.map(|d| Ok(Frame::data(d))));
        frames.extend(trailer.map(|t| Ok(Frame::trailers(t))));
        let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)));
        r.headers_mut().extend(trailers(headers));
        r
    }

    /// An h2c-only server answering the i-th call (from 0, over all
    /// connections) with `reply(i)`; also counts the connections accepted.
    async fn fake_grpc(reply: fn(usize) -> Response<Frames>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let calls = calls.clone();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let i = calls.fetch_add(1, Ordering::SeqCst);
                    let ok = req.uri().path() == GRPC_HOSTS_GET
                        && req.method() == http::Method::POST
                        && req.headers()[header::CONTENT_TYPE] == "application/grpc"
                        && req.headers()[header::TE] == "trailers";
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, Infallible>(if ok && body[..] == [0, 0, 0, 0, 0] {
                            reply(i)
                        } else {
                            answer(&[("grpc-status", "3")], None, None)
                        })
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (format!("http://{addr}"), conns)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn grpc_counts_every_call_of_one_connection() {
        // A per-call balancer behind one connection: a, b, a, b, …
        let (url, conns) = fake_grpc(|i| {
            let host = if i % 2 == 0 { "a" } else { "b" };
            answer(
                &[("content-type", "application/grpc")],
                Some(framed_host(host)),
                Some(trailers(&[("grpc-status", "0")])),
            )
        })
        .await;
        let counts = check_grpc(&url, 10, 2, T).await.unwrap();
        assert_eq!(counts, Counts::from([("a".into(), 5), ("b".into(), 5)]));
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one HTTP/2 connection");
    }

    #[tokio::test]
    async fn grpc_one_real_backend_is_not_a_split_over_two() {
        let url = real_backend("solo").await;
        let (e, counts) = check_grpc(&url, 10, 2, T).await.unwrap_err();
        assert!(matches!(e, ClientError::Split(_)), "{e}");
        assert!(e.to_string().contains("expected 2 backends"), "{e}");
        assert_eq!(counts, Counts::from([("solo".into(), 10)]));
        let counts = check_grpc(&format!("{url}/"), 10, 1, T).await.unwrap();
        assert_eq!(counts, Counts::from([("solo".into(), 10)]));
    }

    #[tokio::test]
    async fn grpc_trailers_only_error_is_reported_with_its_message() {
        let (url, _) = fake_grpc(|_| {
            answer(
                &[
                    ("content-type", "application/grpc"),
                    ("grpc-status", "14"),
                    ("grpc-message", "no%20endpoints%3A%20none%20ready"),
                ],
                None,
                None,
            )
        })
        .await;
        let (e, counts) = check_grpc(&url, 2, 1, T).await.unwrap_err();
        match &e {
            ClientError::Grpc { code, message, .. } => {
                assert_eq!((*code, message.as_str()), (14, "no endpoints: none ready"));
            }
            other => panic!("not a gRPC status error: {other}"),
        }
        assert!(e.to_string().contains("UNAVAILABLE"), "{e}");
        assert!(counts.is_empty());
    }

    #[tokio::test]
    async fn grpc_status_in_trailers_after_a_message_still_fails() {
        let (url, _) = fake_grpc(|_| {
            answer(
                &[("content-type", "application/grpc")],
                Some(framed_host("x")),
                Some(trailers(&[("grpc-status", "4")])),
            )
        })
        .await;
        let (e, _) = check_grpc(&url, 2, 1, T).await.unwrap_err();
        assert!(matches!(e, ClientError::Grpc { code: 4, .. }), "{e}");
        assert!(e.to_string().contains("DEADLINE_EXCEEDED"), "{e}");
    }

    #[tokio::test]
    async fn grpc_answer_without_status_or_with_bad_frame_fails() {
        let (url, _) = fake_grpc(|_| {
            answer(
                &[("content-type", "application/grpc")],
                Some(framed_host("x")),
                None,
            )
        })
        .await;
        let (e, _) = check_grpc(&url, 1, 1, T).await.unwrap_err();
        assert!(e.to_string().contains("without grpc-status"), "{e}");

        let (url, _) = fake_grpc(|_| {
            answer(
                &[("content-type", "application/grpc")],
                Some(Bytes::from_static(&[0, 0, 0, 0, 9, 0x0a])),
                Some(trailers(&[("grpc-status", "0")])),
            )
        })
        .await;
        let (e, _) = check_grpc(&url, 1, 1, T).await.unwrap_err();
        assert!(e.to_string().contains("frame says 9 bytes"), "{e}");
    }

    #[tokio::test]
    async fn grpc_against_an_http1_only_server_says_h2c() {
        // Answers HTTP/1.1 to anything, then closes, like a server without h2c.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let (e, _) = check_grpc(&format!("http://{addr}"), 2, 1, T)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Request(..)), "{e}");
        assert!(e.to_string().contains("h2c"), "{e}");
    }

    #[tokio::test]
    async fn grpc_unreachable_and_bad_urls_fail_before_any_call() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let (e, _) = check_grpc(&format!("http://{addr}"), 2, 2, T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
        let (e, _) = check_grpc("http://lb:8080/host", 2, 2, T)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::GrpcUrl(_)), "{e}");
        let (e, _) = check_grpc("https://lb:8443", 2, 2, T).await.unwrap_err();
        assert!(matches!(e, ClientError::Url(_)), "{e}");
        let (e, _) = check_grpc("http://lb:8080", 3, 2, T).await.unwrap_err();
        assert!(e.to_string().contains("evenly"), "{e}");
    }

    #[test]
    fn grpc_method_uri_names_the_server_and_method() {
        assert_eq!(
            grpc_method_uri("http://lb:8080/").unwrap().to_string(),
            "http://lb:8080/roundhouse.v1.Hosts/Get"
        );
        assert!(grpc_method_uri("http://lb:8080/?x=1").is_err());
    }

    #[test]
    fn get_response_decoding() {
        // Unknown fields of every wire type around the host are skipped.
        let msg = [
            0x10, 0x96, 0x01, // field 2, varint 150
            0x19, 1, 2, 3, 4, 5, 6, 7, 8, // field 3, fixed64
            0x0a, 3, b'p', b'o', b'd', // field 1, "pod"
            0x25, 1, 2, 3, 4, // field 4, fixed32
            0x2a, 1, b'z', // field 5, bytes
        ];
        assert_eq!(decode_get_response(&msg).unwrap(), "pod");
        assert!(decode_get_response(&[]).is_err(), "no host");
        assert!(decode_get_response(&[0x0a, 5, b'a']).is_err(), "truncated");
        assert!(decode_get_response(&[0x08, 1]).is_err(), "host as a varint");
        assert!(decode_get_response(&[0x0a, 1, 0xff]).is_err(), "not UTF-8");
        assert!(
            decode_get_response(&[0x10, 0x80]).is_err(),
            "truncated varint"
        );
        assert!(decode_get_response(&[0x0b]).is_err(), "group wire type");
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("caf%C3%A9".as_bytes()), "café");
        assert_eq!(grpc_code_name(14), "UNAVAILABLE");
        assert_eq!(grpc_code_name(99), "unknown code");
    }

    #[tokio::test]
    async fn uneven_split_is_rejected_up_front() {
        let e = check("http://127.0.0.1:1/", 99, 2, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.0.to_string().contains("evenly"));
    }
}

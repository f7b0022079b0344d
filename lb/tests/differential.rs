//! The fast path and the general path are one behaviour: the same corpus of
//! requests goes through an LB with `--fast-path true` and one with
//! `--fast-path false`, and the backend must receive the same requests and
//! the client the same responses, modulo these documented differences:
//!
//! - header *names* are compared case-insensitively (the fast path keeps a
//!   client's spelling, hyper writes lower case);
//! - header *order* is compared per name only (hyper's `HeaderMap` groups
//!   fields by name; the relative order of fields with the same name is
//!   kept by both and compared);
//! - bodies are compared decoded (hyper re-frames a chunked body in its own
//!   chunk sizes; the fast path passes chunked bytes through unchanged);
//! - the backend's `Date` header differs between runs and is not compared.
//!
//! A header rule changed on one path only (a hop-by-hop field kept, a
//! forwarding header spelled differently, a `Via` missing) makes this fail.
//!
//! Next to the catch-all `Upstream`, a route with filters takes the paths
//! under `/filtered`, `/redirect` and `/fixed` (request and response header
//! edits, a host and prefix rewrite, a redirect, a fixed response), so the
//! route model's filters are held to the same rule: both paths apply them
//! byte for byte alike.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use lb::discovery::route::{
    Action, BackendRef, FixedResponse, HeaderEdits, Order, PathRewrite, Redirect, RedirectStatus,
    Rewrite, Route, RouteKind, Rule, Scope, WeightedBackend,
};
use lb::discovery::{EndpointSpec, Match, Origin, RoutingConfig};
use lb::proxy::ProxyConfig;
use lb::selection::Policy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Every byte the backend reads from one connection.
#[derive(Clone, Default)]
struct Tape(Arc<Mutex<Vec<u8>>>);

impl Tape {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A socket that records what is read from it.
struct Recorded {
    inner: TcpStream,
    tape: Tape,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.tape.0.lock().unwrap().extend_from_slice(&new);
        r
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A hyper backend that records each request's raw bytes (head and framed
/// body, exactly as the LB sent them) and answers by path.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(path: &str) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let full = |s: &'static str| Full::new(Bytes::from_static(s.as_bytes())).boxed();
    let mut resp = match path {
        "/empty" => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        "/chunked" => {
            let chunks = ["chunk-one;", "chunk-two;", "three"]
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
            Response::new(StreamBody::new(futures::stream::iter(chunks)).boxed())
        }
        "/missing" => {
            let mut r = Response::new(full("not here\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        _ => Response::new(full("hello\n")),
    };
    let h = resp.headers_mut();
    h.insert("x-kept", "yes".parse().unwrap());
    h.insert("connection", "keep-alive, x-secret".parse().unwrap());
    h.insert("x-secret", "must not pass".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.append("set-cookie", "a=1".parse().unwrap());
    h.append("set-cookie", "b=2".parse().unwrap());
    resp
}

/// `/ws`: switches to an echo protocol that answers one message with
/// `pong:` and the message, then closes.
fn upgrade(
    mut req: Request<Incoming>,
) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut msg = [0u8; 4];
        if io.read_exact(&mut msg).await.is_ok() {
            let _ = io.write_all(b"pong:").await;
            let _ = io.write_all(&msg).await;
        }
        let _ = io.shutdown().await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert("upgrade", "echo".parse().unwrap());
    resp.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    resp.headers_mut().insert("x-kept", "yes".parse().unwrap());
    resp
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tape = Tape::default();
                let io = Recorded {
                    inner: stream,
                    tape: tape.clone(),
                };
                let seen = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let tape = tape.clone();
                        let seen = seen.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            if path == "/ws" {
                                seen.lock().unwrap().push(tape.take());
                                return Ok(upgrade(req));
                            }
                            // Read the whole body first: then the tape holds
                            // this request's head and body and nothing else
                            // (the LB never pipelines upstream).
                            let _ = req.into_body().collect().await;
                            seen.lock().unwrap().push(tape.take());
                            Ok::<_, Infallible>(answer(&path))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }
}

/// A message in comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    start_line: String,
    /// Lower-case name → values in order.
    headers: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
}

/// Parses one message (a request when `request`) from the front of `buf`;
/// returns it and its length. `head_request` for responses to HEAD.
fn parse(buf: &[u8], request: bool, head_request: bool) -> Option<(Message, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (start_line, fields, len) = if request {
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
            return None;
        };
        (
            format!("{} {} HTTP/1.{}", req.method?, req.path?, req.version?),
            req.headers.to_vec(),
            len,
        )
    } else {
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = resp.parse(buf).ok()? else {
            return None;
        };
        (
            format!("HTTP/1.{} {}", resp.version?, resp.code?),
            resp.headers.to_vec(),
            len,
        )
    };
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in &fields {
        map.entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(String::from_utf8_lossy(h.value).into_owned());
    }
    let status = start_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    let no_body = head_request || (!request && matches!(status, Some(101 | 204 | 304)));
    let rest = &buf[len..];
    let (body, body_len) = if no_body {
        (Vec::new(), 0)
    } else if map
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|v| v.eq_ignore_ascii_case("chunked")))
    {
        decode_chunked(rest)?
    } else if let Some(n) = map
        .get("content-length")
        .and_then(|v| v[0].parse::<usize>().ok())
    {
        if rest.len() < n {
            return None;
        }
        (rest[..n].to_vec(), n)
    } else if request {
        (Vec::new(), 0)
    } else {
        (rest.to_vec(), rest.len())
    };
    map.remove("date");
    Some((
        Message {
            start_line,
            headers: map,
            body,
        },
        len + body_len,
    ))
}

fn decode_chunked(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[pos..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // trailers up to the empty line
            loop {
                let end = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some((body, pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// The routing of both LBs: the catch-all `Upstream` and the filtered
/// route next to it.
fn routes(backend: SocketAddr) -> RoutingConfig {
    let mut cfg = routing(vec![EndpointSpec::new(backend)]);
    let upstream = cfg.upstreams[0].backend();
    let name = |n: &'static str| http::HeaderName::from_static(n);
    let value = |v: &'static str| http::HeaderValue::from_static(v);
    let mut filtered = Rule::forward(vec![Match::prefix("/filtered")], Arc::new(upstream));
    filtered.filters.request_headers = HeaderEdits {
        set: vec![
            (name("x-set"), value("route")),
            (name("x-forwarded-proto"), value("gopher")),
        ],
        add: vec![(name("x-add"), value("route"))],
        remove: vec![name("x-gone")],
    };
    filtered.filters.response_headers = HeaderEdits {
        set: vec![(name("x-resp-set"), value("route"))],
        add: vec![(name("x-kept"), value("again"))],
        remove: vec![name("set-cookie")],
    };
    filtered.filters.rewrite = Some(Rewrite {
        hostname: Some(value("inner.example")),
        path: Some(PathRewrite::ReplacePrefix("/inner".into())),
    });
    let answer = |m: Match, action: Action| Rule {
        name: None,
        matches: vec![m],
        filters: Default::default(),
        action,
        policy: Default::default(),
    };
    cfg.routes.push(Arc::new(Route {
        origin: Origin {
            kind: RouteKind::HttpRoute,
            namespace: "ns".into(),
            name: "filters".into(),
        },
        order: Order::default(),
        scopes: vec![Scope::default()],
        rules: vec![
            filtered,
            answer(
                Match::prefix("/redirect"),
                Action::Redirect(Redirect {
                    scheme: Some("https".into()),
                    path: Some(PathRewrite::ReplaceFull("/elsewhere".into())),
                    status: RedirectStatus::MOVED_PERMANENTLY,
                    ..Redirect::default()
                }),
            ),
            answer(
                Match::exact("/fixed"),
                Action::Respond(FixedResponse {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: "down for maintenance\n".into(),
                }),
            ),
            answer(
                Match::exact("/invalid"),
                Action::Forward(vec![WeightedBackend {
                    weight: 1,
                    target: BackendRef::Invalid("no such Service".into()),
                }]),
            ),
        ],
    }));
    cfg
}

/// One case of the corpus: raw bytes a client sends on one connection
/// (one or more requests; the last one closes), and whether each request is
/// a HEAD.
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    heads: Vec<bool>,
}

fn case(name: &'static str, requests: &[&str]) -> Case {
    let mut raw = Vec::new();
    let mut heads = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let mut r = r.replace('\n', "\r\n");
        if i + 1 == requests.len() {
            // close after the last one so the client can read to the end
            let at = r.find("\r\n").unwrap() + 2;
            r.insert_str(at, "Connection: close\r\n");
        }
        heads.push(r.starts_with("HEAD "));
        raw.extend_from_slice(r.as_bytes());
    }
    Case { name, raw, heads }
}

fn corpus() -> Vec<Case> {
    let mut chunked_post = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
    let mut closing = b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    chunked_post.append(&mut closing);
    let big = format!(
        "GET /big HTTP/1.1\nHost: t\nX-Big: {}\n\n",
        "v".repeat(4000)
    );
    vec![
        case(
            "plain GET",
            &["GET /a HTTP/1.1\nHost: t\nAccept: */*\nUser-Agent: diff/1\n\n"],
        ),
        case(
            "keep-alive requests in a row",
            &[
                "GET /one HTTP/1.1\nHost: t\n\n",
                "GET /two?x=1&y=%20 HTTP/1.1\nHost: t\n\n",
                "GET /three HTTP/1.1\nHost: t\n\n",
            ],
        ),
        case(
            "forwarding headers from the client",
            &[
                "GET /fwd HTTP/1.1\nHost: example.com:8080\nX-Forwarded-For: 1.1.1.1\nx-forwarded-for: 2.2.2.2\nX-Forwarded-Proto: https\nX-Forwarded-Host: spoofed\nVia: 1.0 other\nForwarded: for=3.3.3.3\n\n",
            ],
        ),
        case(
            "hop-by-hop headers",
            &[
                "GET /hop HTTP/1.1\nHost: t\nConnection: keep-alive\nKeep-Alive: timeout=5\nTE: trailers\nProxy-Connection: keep-alive\n\n",
            ],
        ),
        case(
            "a header named in Connection",
            &["GET /named HTTP/1.1\nHost: t\nConnection: x-secret\nX-Secret: 1\nX-Kept: 2\n\n"],
        ),
        case("HEAD", &["HEAD /a HTTP/1.1\nHost: t\n\n"]),
        case(
            "GET with Content-Length: 0",
            &["GET /cl0 HTTP/1.1\nHost: t\nContent-Length: 0\n\n"],
        ),
        case(
            "odd but valid heads",
            &[
                "GET /odd HTTP/1.1\nHOST: T.Example\nAccept: a\nAccept: b\nX-Empty:\nX-Spaces:   padded   \nx-MiXeD-CaSe: v\n\n",
            ],
        ),
        case("a long header", &[big.as_str()]),
        case(
            "204 and 404 from the backend",
            &[
                "GET /empty HTTP/1.1\nHost: t\n\n",
                "GET /missing HTTP/1.1\nHost: t\n\n",
            ],
        ),
        case(
            "a chunked response",
            &["GET /chunked HTTP/1.1\nHost: t\n\n"],
        ),
        case(
            "POST with a body",
            &[
                "POST /form HTTP/1.1\nHost: t\nContent-Type: text/plain\nContent-Length: 11\n\nhello world",
            ],
        ),
        Case {
            name: "chunked POST then GET",
            raw: chunked_post,
            heads: vec![false, false],
        },
        case(
            "GET, POST with a body, GET on one connection",
            &[
                "GET /g1 HTTP/1.1\nHost: t\n\n",
                "POST /p HTTP/1.1\nHost: t\nContent-Length: 3\n\nabc",
                "GET /g2 HTTP/1.1\nHost: t\n\n",
            ],
        ),
        case("HTTP/1.0", &["GET /old HTTP/1.0\nHost: t\n\n"]),
        case(
            "a filtered route",
            &[
                "GET /filtered/x?q=1 HTTP/1.1\nHost: t:8080\nX-Set: client\nX-Add: client\nX-Gone: 1\nX-Kept: client\n\n",
                "POST /filtered/y HTTP/1.1\nHost: t\nX-Gone: 1\nContent-Length: 3\n\nabc",
                "GET /plain HTTP/1.1\nHost: t\n\n",
            ],
        ),
        case(
            "local: a redirect, a fixed response, an invalid backend",
            &[
                "GET /redirect/a?b=c HTTP/1.1\nHost: t:8080\n\n",
                "GET /fixed HTTP/1.1\nHost: t\n\n",
                "GET /invalid HTTP/1.1\nHost: t\n\n",
            ],
        ),
    ]
}

/// Sends a case's bytes and reads until the LB closes.
async fn run_case(lb: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the LB closes after the last request")
        .unwrap();
    out
}

/// An upgrade handshake, one message through the tunnel, and the close.
async fn run_upgrade(lb: SocketAddr) -> (Message, Vec<u8>) {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\nSec-Extra: 1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let (head, len) = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("101 in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(parsed) = parse(&got, false, false) {
            break parsed;
        }
    };
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = got.split_off(len);
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes")
        .unwrap();
    (head, rest)
}

/// What one LB did with the corpus: per case, the requests the backend got
/// and the responses the client got.
type Outcome = Vec<(Vec<Message>, Vec<Message>)>;

async fn through(fast_path: bool) -> Outcome {
    let backend = Backend::start().await;
    let lb = TestLb::start_with(
        routes(backend.addr),
        ProxyConfig {
            fast_path,
            ..test_proxy_config()
        },
        Policy::default(),
    );
    let mut outcome = Vec::new();
    for case in corpus() {
        backend.seen.lock().unwrap().clear();
        let got = run_case(lb.addr, &case.raw).await;
        let mut responses = Vec::new();
        let mut at = 0;
        for head in &case.heads {
            let (m, len) = parse(&got[at..], false, *head).unwrap_or_else(|| {
                panic!(
                    "{}: no complete response in {:?}",
                    case.name,
                    String::from_utf8_lossy(&got)
                )
            });
            responses.push(m);
            at += len;
        }
        assert_eq!(
            at,
            got.len(),
            "{}: bytes after the last response",
            case.name
        );
        let requests = backend
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|raw| {
                let (m, len) = parse(raw, true, false).unwrap_or_else(|| {
                    panic!(
                        "{}: backend got {:?}",
                        case.name,
                        String::from_utf8_lossy(raw)
                    )
                });
                assert_eq!(len, raw.len(), "{}: one request per exchange", case.name);
                m
            })
            .collect();
        outcome.push((requests, responses));
    }
    backend.seen.lock().unwrap().clear();
    let (head, tunnelled) = run_upgrade(lb.addr).await;
    assert_eq!(
        tunnelled, b"pong:ping",
        "the tunnel carries both directions"
    );
    let requests = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|raw| parse(raw, true, false).unwrap().0)
        .collect();
    outcome.push((requests, vec![head]));
    lb.stop().unwrap();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_and_general_paths_forward_the_same_bytes() {
    let fast = through(true).await;
    let general = through(false).await;
    let names: Vec<&str> = corpus().iter().map(|c| c.name).chain(["upgrade"]).collect();
    assert_eq!(fast.len(), names.len());
    for ((name, f), g) in names.iter().zip(&fast).zip(&general) {
        assert_eq!(f.0, g.0, "{name}: what the backend received differs");
        assert_eq!(f.1, g.1, "{name}: what the client received differs");
        assert!(
            (!f.0.is_empty() || name.starts_with("local:")) && !f.1.is_empty(),
            "{name}: nothing compared"
        );
    }
    // What the filters did, checked once (both paths agree above).
    let at = names.iter().position(|n| *n == "a filtered route").unwrap();
    let (requests, responses) = &general[at];
    let get = &requests[0];
    assert_eq!(get.start_line, "GET /inner/x?q=1 HTTP/1.1");
    assert_eq!(get.headers["host"], ["inner.example"]);
    assert_eq!(get.headers["x-forwarded-host"], ["t:8080"]);
    assert_eq!(get.headers["x-set"], ["route"]);
    assert_eq!(get.headers["x-add"], ["client", "route"]);
    assert!(!get.headers.contains_key("x-gone"));
    assert_eq!(requests[1].start_line, "POST /inner/y HTTP/1.1");
    assert!(!requests[1].headers.contains_key("x-gone"));
    assert_eq!(requests[2].start_line, "GET /plain HTTP/1.1");
    assert!(!requests[2].headers.contains_key("x-set"), "another route");
    for r in &responses[..2] {
        assert_eq!(r.headers["x-resp-set"], ["route"]);
        assert_eq!(r.headers["x-kept"], ["yes", "again"]);
        assert!(!r.headers.contains_key("set-cookie"));
    }
    assert_eq!(responses[2].headers["set-cookie"], ["a=1", "b=2"]);
    let at = names.iter().position(|n| n.starts_with("local:")).unwrap();
    let (requests, responses) = &general[at];
    assert!(requests.is_empty(), "nothing reached the backend");
    assert_eq!(responses[0].start_line, "HTTP/1.1 301");
    assert_eq!(
        responses[0].headers["location"],
        ["https://t/elsewhere?b=c"]
    );
    assert_eq!(responses[1].start_line, "HTTP/1.1 503");
    assert_eq!(responses[1].body, b"down for maintenance\n");
    assert_eq!(responses[2].start_line, "HTTP/1.1 500");
    let upgrade = &general.last().unwrap().1[0];
    assert_eq!(upgrade.start_line, "HTTP/1.1 101");
    assert_eq!(upgrade.headers["upgrade"], ["echo"]);
    assert_eq!(upgrade.headers["connection"], ["upgrade"]);
    // And the rules themselves, once, on the general path's requests: no
    // hop-by-hop field reaches the backend, forwarding headers are ours.
    for (requests, responses) in &general {
        for r in requests {
            let upgrade = r.headers.contains_key("upgrade");
            for gone in [
                "connection",
                "keep-alive",
                "te",
                "proxy-connection",
                "x-secret",
            ] {
                if upgrade && gone == "connection" {
                    assert_eq!(
                        r.headers[gone],
                        ["upgrade"],
                        "an upgrade keeps its handshake"
                    );
                    continue;
                }
                assert!(
                    !r.headers.contains_key(gone),
                    "{gone} reached the backend: {r:?}"
                );
            }
            assert_eq!(
                r.headers["x-forwarded-proto"],
                ["http"],
                "{r:?}: not editable"
            );
            assert!(
                r.headers["via"].last().unwrap().ends_with(" roundhouse"),
                "{r:?}"
            );
            assert!(
                r.headers["x-forwarded-for"][0].ends_with("127.0.0.1"),
                "{r:?}"
            );
        }
        for r in responses {
            if !r.headers.contains_key("x-kept") {
                // The LB's own answers (the "local:" case).
                assert!(!r.headers.contains_key("via"), "{r:?}");
                continue;
            }
            assert!(!r.headers.contains_key("x-secret"), "{r:?}");
            assert!(!r.headers.contains_key("keep-alive"), "{r:?}");
            assert_eq!(r.headers["x-kept"][0], "yes", "{r:?}");
            assert!(
                r.headers["via"].iter().any(|v| v.ends_with("roundhouse")),
                "{r:?}"
            );
        }
    }
}

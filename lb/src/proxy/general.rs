//! The general (hyper) path: requests that hyper's servers parsed (HTTP/2,
//! and HTTP/1.1 with bodies, upgrades, HTTP/1.0, anything the fast path
//! does not take) go through the attempt core with [`Hyper`], a transport
//! that reaches an endpoint with one hyper HTTP/1.1 client exchange on a
//! connection from the worker's pool ([`H1`]), or with a stream on one of
//! its multiplexed HTTP/2 connections ([`H2`], for `h2c` Upstreams). gRPC
//! calls get the LB's own errors as gRPC statuses and have their
//! `grpc-timeout` honoured.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::Worker;
use super::access_log::{Forwarded, Record};
use super::attempt::{
    Connector, Decision, Failure, FailureKind, SendFailure, Transport, is_idempotent,
};
use super::body::{
    BodyErrorHook, BodyOutcome, BodyState, Inbound, Lease, ReqBody, RespBody, UpstreamBody,
};
use super::filters;
use super::grpc::{grpc_timeout, is_grpc};
use super::h2::upstream::{self as h2, H2Pool, H2Stream, for_h2};
use super::headers::{
    ClientIp, apply_edits, forward_request_headers, forward_response_headers, is_upgrade_request,
};
use super::local::{BadRequest, Local, Reply};
use super::upstream::{Pool, Reuse, UpConn};
use crate::discovery::Protocol;
use crate::metrics::Metrics;
use crate::selection::{Policy, RequestView};

/// The request id header (sent upstream when the access log is on).
static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one valid `Host`
/// (absolute-form requests carry it in the target instead).
pub fn check_request<B>(req: &Request<B>) -> Result<(), BadRequest> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(BadRequest::MultipleHosts),
        (None, None) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            Err(BadRequest::MissingHost)
        }
        (Some(h), None) if http::uri::Authority::try_from(h.as_bytes()).is_err() => {
            Err(BadRequest::InvalidHost)
        }
        _ => Ok(()),
    }
}

/// What one request through the hyper path carries from attempt to
/// attempt: its replayable head, the fate of its body and its deadline.
struct Attempts {
    /// The head of an idempotent bodiless request, for a replay.
    saved: Option<(Method, Uri, HeaderMap)>,
    /// What happened to the client's body, if it has one.
    body: Option<Arc<BodyState>>,
    /// A gRPC deadline (`grpc-timeout`) shorter than the policy's.
    deadline: Option<Duration>,
}

/// The two ways the hyper path reaches an endpoint.
trait HyperUpstream {
    /// Where connections come from.
    type Connector: Connector;

    /// The connector.
    fn connector(&mut self) -> &mut Self::Connector;

    /// One exchange on `conn`, the response head within `timeout`.
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        conn: <Self::Connector as Connector>::Conn,
        request: Request<ReqBody>,
        timeout: Duration,
    ) -> Result<HyperResponse, SendFailure<Request<ReqBody>>>;
}

/// The hyper path's transport: [`Attempts`] over one of the upstream
/// protocols.
struct Hyper<U> {
    upstream: U,
    attempts: Attempts,
}

/// The general path's per-worker client side: hyper's HTTP/1.1 client
/// settings and what a response body's failure is reported to.
pub(crate) struct Client {
    builder: hyper::client::conn::http1::Builder,
    body_error: BodyErrorHook,
}

impl Client {
    /// A worker's client side, reporting body failures to `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder.max_buf_size(1024 * 1024);
        Self {
            builder,
            body_error: Rc::new(move |addr, e| super::attempt::body_failed(&metrics, addr, e)),
        }
    }
}

/// HTTP/1.1: one hyper client exchange per request on a pooled connection,
/// which goes back to the pool when the exchange completed cleanly
/// ([`Reuse`]).
struct H1<'w> {
    worker: &'w Worker,
    /// The worker's connection pool.
    pool: &'w Pool,
    /// An upgrade handshake: the connection becomes a tunnel, never pooled.
    upgrade: bool,
}

/// HTTP/2 (h2c): a stream on one of the worker's multiplexed connections.
struct H2<'w> {
    pool: &'w H2Pool,
}

/// A response head and what its body holds of the connection.
struct HyperResponse {
    response: Response<Inbound>,
    lease: Lease,
    /// For a `101` to an upgrade request: the upgraded connection, to come.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl<'w> HyperUpstream for H1<'w> {
    type Connector = &'w Pool;

    fn connector(&mut self) -> &mut &'w Pool {
        &mut self.pool
    }

    async fn exchange(
        &mut self,
        addr: SocketAddr,
        conn: UpConn,
        request: Request<ReqBody>,
        timeout: Duration,
    ) -> Result<HyperResponse, SendFailure<Request<ReqBody>>> {
        let io = TokioIo::new(conn.into_stream());
        let (mut tx, connection) = match self.worker.client.builder.handshake(io).await {
            Ok(pair) => pair,
            Err(e) => {
                return Err(SendFailure::unsent(
                    Failure::because(FailureKind::Send, e),
                    request,
                ));
            }
        };
        let reuse = if self.upgrade {
            tokio::task::spawn_local(async move {
                if let Err(e) = connection.with_upgrades().await {
                    debug!(endpoint = %addr, error = %e, "upstream connection closed with an error");
                }
            });
            None
        } else {
            let reuse = Reuse::new(self.worker.pool.clone(), addr);
            let back = reuse.clone();
            tokio::task::spawn_local(async move {
                match connection.without_shutdown().await {
                    Ok(parts) if parts.read_buf.is_empty() => back.conn_done(parts.io.into_inner()),
                    Ok(_) => {
                        debug!(endpoint = %addr, "bytes after the response; not reusing the connection");
                        back.refuse();
                    }
                    Err(e) => {
                        debug!(endpoint = %addr, error = %e, "upstream connection closed with an error");
                        back.refuse();
                    }
                }
            });
            Some(reuse)
        };
        let sent = tx.try_send_request(request);
        match tokio::time::timeout(timeout, sent).await {
            Err(_) => Err(SendFailure::sent(Failure::new(
                FailureKind::ResponseTimeout,
            ))),
            Ok(Ok(mut response)) => {
                if let Some(reuse) = &reuse
                    && !keeps_alive(&response)
                {
                    reuse.refuse();
                }
                let upgrade = (self.upgrade
                    && response.status() == StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| hyper::upgrade::on(&mut response));
                Ok(HyperResponse {
                    response: response.map(Inbound::H1),
                    lease: reuse.map_or(Lease::None, Lease::Pooled),
                    upgrade,
                })
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let failure = Failure::because(FailureKind::Send, e.into_error());
                Err(SendFailure { failure, unsent })
            }
        }
    }
}

impl<'w> HyperUpstream for H2<'w> {
    type Connector = &'w H2Pool;

    fn connector(&mut self) -> &mut &'w H2Pool {
        &mut self.pool
    }

    async fn exchange(
        &mut self,
        _addr: SocketAddr,
        stream: H2Stream,
        request: Request<ReqBody>,
        timeout: Duration,
    ) -> Result<HyperResponse, SendFailure<Request<ReqBody>>> {
        let (parts, body) = request.into_parts();
        let end = body.is_end_stream();
        let opened = match h2::open(stream, Request::from_parts(parts, ()), end).await {
            Ok(opened) => opened,
            Err(SendFailure { failure, unsent }) => {
                let unsent = unsent.map(|head| head.map(|()| body));
                return Err(SendFailure { failure, unsent });
            }
        };
        if !end {
            tokio::task::spawn_local(h2::send_body(body, opened.body));
        }
        let response = h2::response(opened.response, &opened.gone, timeout)
            .await
            .map_err(SendFailure::sent)?;
        Ok(HyperResponse {
            response: response.map(Inbound::H2),
            lease: Lease::Stream(opened.lease),
            upgrade: None,
        })
    }
}

impl<U: HyperUpstream> Transport for Hyper<U> {
    type Connector = U::Connector;
    type Request = Request<ReqBody>;
    type Response = HyperResponse;

    fn connector(&mut self) -> &mut U::Connector {
        self.upstream.connector()
    }

    async fn send(
        &mut self,
        addr: SocketAddr,
        conn: <U::Connector as Connector>::Conn,
        request: Request<ReqBody>,
        policy: &Policy,
    ) -> Result<HyperResponse, SendFailure<Request<ReqBody>>> {
        let timeout = match self.attempts.deadline {
            Some(d) => d.min(policy.response_header_timeout),
            None => policy.response_header_timeout,
        };
        self.upstream.exchange(addr, conn, request, timeout).await
    }

    fn status(response: &HyperResponse) -> u16 {
        response.response.status().as_u16()
    }

    fn can_replay(&self) -> bool {
        self.attempts.saved.is_some()
    }

    fn replay(&mut self) -> Option<Request<ReqBody>> {
        let (method, uri, headers) = self.attempts.saved.as_ref()?;
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        if req.uri().scheme().is_some() {
            *req.version_mut() = Version::HTTP_2;
        }
        Some(req)
    }

    fn client_fault(&self) -> Option<Local> {
        match self.attempts.body.as_ref()?.get() {
            BodyOutcome::TooLarge => {
                warn!("streamed request body over the limit; answering 413");
                Some(Local::BodyTooLarge)
            }
            BodyOutcome::ClientError => {
                debug!("malformed or aborted request body; answering 400");
                Some(Local::BadRequest(BadRequest::MalformedBody))
            }
            BodyOutcome::Fine => None,
        }
    }
}

/// Whether an upstream response leaves its connection open (RFC 9112 §9.3).
fn keeps_alive<B>(response: &Response<B>) -> bool {
    let close = response
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| super::headers::connection_tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(b"close"));
    response.version() == Version::HTTP_11 && !close
}

/// A request hyper parsed, as routing reads it.
struct HyperView<'a, B>(&'a Request<B>);

impl<B> RequestView for HyperView<'_, B> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }

    fn path(&self) -> &str {
        self.0.uri().path()
    }

    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }

    fn any_header(&self, name: &header::HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0
            .headers()
            .get_all(name)
            .iter()
            .any(|v| f(v.as_bytes()))
    }
}

impl Worker {
    /// A local response, counted; a gRPC call gets it as a gRPC status.
    fn local(&self, local: Local, grpc: bool) -> Response<RespBody> {
        self.reply(&Reply::new(local), grpc)
    }

    /// A local response with its per-request parts, counted; a gRPC call
    /// gets it as a gRPC status unless it is a rule's own answer.
    fn reply(&self, reply: &Reply<'_>, grpc: bool) -> Response<RespBody> {
        reply.count(&self.shared.metrics);
        if grpc && !reply.local.is_http_answer() {
            reply.local.grpc_response()
        } else {
            reply.response()
        }
    }

    /// `308 Permanent Redirect` to the same host and target on HTTPS (on
    /// `port`, left out when it is 443).
    fn redirect<B>(&self, req: &Request<B>, port: u16) -> Response<RespBody> {
        self.shared.metrics.local("https_redirect");
        let host = req.uri().host().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        super::local::https_redirect(host, target, port)
            .unwrap_or_else(|| Local::BadRequest(BadRequest::MissingHost).response())
    }

    /// Handles one client request; with the access log on, settles its
    /// request id (sent upstream as `X-Request-Id`) and writes its line
    /// once the response head is ready (see docs/access-log.md for what
    /// `bytes` and `duration` mean here).
    pub(crate) async fn handle(
        self: Rc<Self>,
        client: Rc<ClientIp>,
        mut req: Request<Incoming>,
    ) -> Response<RespBody> {
        if !self.log.is_on() {
            return self
                .handle_request(client, req, &mut None, &mut Forwarded::default())
                .await;
        }
        let start = std::time::Instant::now();
        let method = req.method().clone();
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let protocol = match req.version() {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        let mut request_id = String::new();
        self.log.request_id(
            req.headers()
                .get_all(&X_REQUEST_ID)
                .iter()
                .map(HeaderValue::as_bytes),
            &mut request_id,
        );
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            req.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        let mut route = None;
        let mut forwarded = Forwarded::default();
        let client_addr = client.addr();
        let response = self
            .clone()
            .handle_request(client, req, &mut route, &mut forwarded)
            .await;
        self.log.record(&Record {
            start,
            client: client_addr,
            method: method.as_str(),
            path: &target,
            protocol,
            status: response.status().as_u16(),
            bytes: response.body().size_hint().exact().unwrap_or(0),
            route: route.as_deref(),
            request_id: &request_id,
            forwarded,
        });
        response
    }

    /// Handles one client request (the access log aside); with the access
    /// log on, `route` gets the name of the rule that took it, and
    /// `forwarded` the upstream side when it was forwarded.
    async fn handle_request(
        self: Rc<Self>,
        client: Rc<ClientIp>,
        mut req: Request<Incoming>,
        route: &mut Option<Arc<str>>,
        forwarded: &mut Forwarded,
    ) -> Response<RespBody> {
        let shared = &self.shared;
        let grpc = is_grpc(req.headers());
        if let Some(port) = shared.config.https_redirect
            && client.proto == "http"
        {
            return self.redirect(&req, port);
        }
        if req.method() == Method::CONNECT {
            debug!(client = %client.ip, "CONNECT refused");
            return self.local(Local::ConnectRefused, grpc);
        }
        if let Err(why) = check_request(&req) {
            debug!(client = %client.ip, why = Local::BadRequest(why).body().trim_end(), "malformed request head; answering 400");
            return self.local(Local::BadRequest(why), grpc);
        }
        if let Some(te) = req.headers().get(header::TRANSFER_ENCODING)
            && !te.as_bytes().eq_ignore_ascii_case(b"chunked")
        {
            // hyper has decoded the chunked framing; any other coding (gzip,
            // chunked) would be lost on the way, so refuse (RFC 9112 §6.1).
            debug!(client = %client.ip, "unsupported transfer coding; answering 501");
            return self.local(Local::UnsupportedCoding, grpc);
        }
        let table = self.table();
        // The authority the client addressed, with its port (a redirect
        // keeps it): absolute-form's or `:authority` (without userinfo),
        // else `Host`.
        let host = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().rsplit('@').next())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
        let decision = self.decide(&table, &client, host, &HyperView(&req));
        if self.log.is_on() {
            *route = decision.label().map(Arc::from);
        }
        let target = match decision {
            Decision::Forward(target) => target,
            Decision::Reply(_, reply) => return self.reply(&reply, grpc),
        };
        let upstream = target.upstream;
        let filters = target.hit.rule.filters.as_deref();
        let origin = filters
            .filter(|f| f.cors.is_some())
            .and_then(|_| filters::origin(&HyperView(&req)));

        // Body limit (the LB's, or the rule's if lower): refuse a declared
        // oversize body without reading it; a streamed one is counted as it
        // passes (ReqBody::client).
        let max_body = match (
            shared.config.max_body_bytes,
            filters.and_then(|f| f.max_body_bytes),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(max) = max_body
            && req.body().size_hint().lower() > max
        {
            warn!(limit = max, "request body over the limit; answering 413");
            return self.local(Local::BodyTooLarge, grpc);
        }

        let upgrade = is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if parts.uri.scheme().is_some() {
            // absolute-form: forward in origin-form with the target's
            // authority as Host (RFC 9112 §3.2.2); we only ever connect to
            // our own endpoints, whatever authority the client named.
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
        }
        let client_version = parts.version;
        let te_trailers = parts
            .headers
            .get_all(header::TE)
            .iter()
            .flat_map(|v| super::headers::connection_tokens(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(b"trailers"));
        let deadline = grpc.then(|| grpc_timeout(&parts.headers)).flatten();
        forward_request_headers(
            &mut parts.headers,
            client_version,
            &client,
            upgrade,
            shared.host_override.as_ref(),
        );
        if let Some(f) = filters {
            apply_edits(&mut parts.headers, &f.request_headers);
            if let Some(rewrite) = &f.rewrite {
                if let Some(host) = &rewrite.hostname {
                    parts.headers.insert(header::HOST, host.clone());
                }
                if let Some(path) = &rewrite.path {
                    let mut target_path = String::with_capacity(64);
                    filters::rewrite_target(
                        path,
                        target.hit.path,
                        parts.uri.path(),
                        parts.uri.query(),
                        &mut target_path,
                    );
                    match target_path.parse::<Uri>() {
                        Ok(uri) => parts.uri = uri,
                        Err(e) => {
                            warn!(path = %target_path, error = %e, "rewritten path is not a valid URI; forwarding the original")
                        }
                    }
                }
            }
        }
        let h2 = upstream.protocol == Protocol::H2c && !upgrade;
        if h2 {
            for_h2(&mut parts, te_trailers);
        } else {
            parts.version = Version::HTTP_11;
        }
        let (body, body_state) = ReqBody::client(body, max_body);
        let saved = (!upgrade && is_idempotent(&parts.method) && body.is_end_stream()).then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let attempts = Attempts {
            saved,
            body: body_state,
            deadline,
        };
        let request = Request::from_parts(parts, body);
        let (answered, side) = if h2 {
            let mut transport = Hyper {
                upstream: H2 {
                    pool: &self.h2_pool,
                },
                attempts,
            };
            self.forward(&target, &mut transport, request).await
        } else {
            let mut transport = Hyper {
                upstream: H1 {
                    worker: &self,
                    pool: &self.pool,
                    upgrade,
                },
                attempts,
            };
            self.forward(&target, &mut transport, request).await
        };
        *forwarded = side;
        let answered = match answered {
            Ok(a) => a,
            Err(local) => return self.local(local, grpc),
        };
        let endpoint = upstream.endpoints[answered.idx].addr;
        let HyperResponse {
            response,
            lease,
            upgrade: upstream_upgrade,
        } = answered.response;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client_upgrade), Some(upstream_upgrade)) = (client_upgrade, upstream_upgrade)
            else {
                warn!(endpoint = %endpoint, "upstream switched protocols unasked; answering 502");
                return self.local(Local::UnexpectedUpgrade, grpc);
            };
            let metrics = shared.metrics.clone();
            tokio::task::spawn_local(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        metrics.tunnels.inc();
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        metrics.tunnels.dec();
                        debug!(endpoint = %endpoint, result = ?r, "tunnel closed");
                    }
                    Err(e) => debug!(endpoint = %endpoint, error = %e, "upgrade failed"),
                }
            });
            let (mut parts, _) = response.into_parts();
            forward_response_headers(&mut parts.headers, client_version, true);
            return Response::from_parts(parts, RespBody::empty());
        }
        let (mut parts, body) = response.into_parts();
        forward_response_headers(&mut parts.headers, client_version, false);
        if let Some(f) = filters {
            apply_edits(&mut parts.headers, &f.response_headers);
            let key = upstream.endpoints[answered.idx].affinity_key;
            if let Some(affinity) = &f.affinity
                && target.sticky != Some(key)
                && let Some(cookie) = filters::affinity_set_cookie(affinity, key)
            {
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            if let (Some(cors), Some(origin)) = (&f.cors, &origin) {
                for (name, value) in filters::response_cors_headers(cors, origin) {
                    parts.headers.append(name, value);
                }
            }
        }
        Response::from_parts(
            parts,
            RespBody::Upstream(UpstreamBody::new(
                body,
                endpoint,
                lease,
                self.client.body_error.clone(),
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        let req = |v: Version, uri: &str, hosts: &[&str]| {
            let mut r = Request::builder().version(v).uri(uri);
            for h in hosts {
                r = r.header(header::HOST, *h);
            }
            r.body(()).unwrap()
        };
        assert!(check_request(&req(Version::HTTP_11, "/", &["a.example:80"])).is_ok());
        assert!(check_request(&req(Version::HTTP_11, "http://a/x", &[])).is_ok());
        assert!(check_request(&req(Version::HTTP_10, "/", &[])).is_ok());
        assert_eq!(
            check_request(&req(Version::HTTP_11, "/", &[])),
            Err(BadRequest::MissingHost)
        );
        assert_eq!(
            check_request(&req(Version::HTTP_11, "/", &["a", "b"])),
            Err(BadRequest::MultipleHosts)
        );
        assert_eq!(
            check_request(&req(Version::HTTP_11, "/", &["a b"])),
            Err(BadRequest::InvalidHost)
        );
    }
}

//! One request through the proxy: route, pick, forward, retry, respond.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::Worker;
use super::body::{BodyOutcome, ReqBody, RespBody, UpstreamBody};
use super::headers::{
    ClientIp, forward_request_headers, forward_response_headers, is_upgrade_request,
};
use super::pool::{Checkin, Sender};
use crate::selection::{Policy, Upstream};

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect refused, reset or unreachable.
    Connect,
    /// TCP connect timed out.
    ConnectTimeout,
    /// The request could not be written or the connection broke before any
    /// response byte, on a fresh connection.
    Send,
    /// The same on a reused (pooled) connection: the keep-alive race.
    Reused,
    /// No response head within the response-header timeout.
    ResponseTimeout,
}

impl FailureKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::Send => "send",
            FailureKind::Reused => "reused_connection",
            FailureKind::ResponseTimeout => "response_timeout",
        }
    }

    /// Connect failures feed passive health checking.
    pub fn is_connect(self) -> bool {
        matches!(self, FailureKind::Connect | FailureKind::ConnectTimeout)
    }

    /// Whether another endpoint may be tried. A response timeout is not
    /// retried: the request may be executing, and retrying would multiply
    /// load on a slow service.
    pub fn retryable(self) -> bool {
        !matches!(self, FailureKind::ResponseTimeout)
    }

    pub(crate) fn is_timeout(self) -> bool {
        matches!(
            self,
            FailureKind::ConnectTimeout | FailureKind::ResponseTimeout
        )
    }
}

/// A failed attempt; `request` is the request when it was never sent.
struct Failure {
    kind: FailureKind,
    request: Option<Request<ReqBody>>,
    error: Option<hyper::Error>,
}

/// Methods that RFC 9110 §9.2.2 defines as idempotent.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a failed request may be retried on another endpoint: always when
/// it was never sent; otherwise only for an idempotent request without body
/// (which can be replayed from its saved head).
pub fn may_retry(kind: FailureKind, request_returned: bool, replayable: bool) -> bool {
    kind.retryable() && (request_returned || replayable)
}

/// A response produced by the LB itself.
pub fn local_response(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::local(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Most attempts per request (the first and ten retries).
pub(crate) const MAX_TRIES: usize = 11;

/// Attempts allowed for a request to `upstream`: the first plus its retries,
/// at most one per endpoint.
pub(crate) fn max_attempts(upstream: &Upstream) -> usize {
    (upstream.policy.retries as usize + 1)
        .min(upstream.endpoints.len())
        .clamp(1, MAX_TRIES)
}

/// What to do after a failed attempt ([`Worker::after_failure`]).
pub(crate) enum AfterFailure {
    /// Try the endpoint with this index next.
    Retry(usize),
    /// Answer the client with this local response (status, body, metric
    /// reason).
    GiveUp(StatusCode, &'static str, &'static str),
}

impl Worker {
    fn local(
        &self,
        status: StatusCode,
        body: &'static str,
        reason: &'static str,
    ) -> Response<RespBody> {
        self.shared.metrics.local(reason);
        local_response(status, body)
    }

    /// 400 for a malformed request (`body` says why), closing the connection.
    fn bad_request(&self, body: &'static str) -> Response<RespBody> {
        let mut resp = self.local(StatusCode::BAD_REQUEST, body, "bad_request");
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// 413, closing the connection (the rest of the body is not read).
    fn too_large(&self) -> Response<RespBody> {
        let mut resp = self.local(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
            "body_too_large",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// Handles one client request.
    pub(crate) async fn handle(
        self: Rc<Self>,
        client: Rc<ClientIp>,
        mut req: Request<Incoming>,
    ) -> Response<RespBody> {
        let shared = &self.shared;
        if req.method() == Method::CONNECT {
            debug!(client = %client.ip, "CONNECT refused");
            return self.local(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported\n",
                "connect_refused",
            );
        }
        if let Err(why) = check_request(&req) {
            debug!(client = %client.ip, why = why.trim_end(), "malformed request head; answering 400");
            return self.bad_request(why);
        }
        if let Some(te) = req.headers().get(header::TRANSFER_ENCODING)
            && !te.as_bytes().eq_ignore_ascii_case(b"chunked")
        {
            // hyper has decoded the chunked framing; any other coding (gzip,
            // chunked) would be lost on the way, so refuse (RFC 9112 §6.1).
            debug!(client = %client.ip, "unsupported transfer coding; answering 501");
            let mut resp = self.local(
                StatusCode::NOT_IMPLEMENTED,
                "transfer coding not supported\n",
                "bad_request",
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        let table = self.table();
        let host = req.uri().host().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let Some(upstream) = table.routes.find(host, req.uri().path()) else {
            debug!(path = req.uri().path(), "no upstream matches");
            return self.local(
                StatusCode::NOT_FOUND,
                "no upstream matches this request\n",
                "no_route",
            );
        };
        let Some(mut idx) = upstream.pick() else {
            warn!(upstream = %upstream.name, "no endpoints available; answering 503");
            return self.local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no endpoints available\n",
                "no_endpoints",
            );
        };

        // Body limit: refuse a declared oversize body without reading it;
        // a streamed one is counted as it passes (ReqBody::client).
        if let Some(max) = shared.config.max_body_bytes
            && req.body().size_hint().lower() > max
        {
            warn!(limit = max, "request body over the limit; answering 413");
            return self.too_large();
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
        forward_request_headers(
            &mut parts.headers,
            client_version,
            &client,
            upgrade,
            shared.host_override.as_ref(),
        );
        parts.version = Version::HTTP_11;
        let (body, body_state) = ReqBody::client(body, shared.config.max_body_bytes);
        let saved = (!upgrade && is_idempotent(&parts.method) && body.is_end_stream()).then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let mut pending = Some(Request::from_parts(parts, body));

        let policy = &upstream.policy;
        let max_attempts = max_attempts(upstream);
        let mut tried = [usize::MAX; MAX_TRIES];
        let mut attempts = 0;
        let start = Instant::now();
        loop {
            tried[attempts] = idx;
            attempts += 1;
            let endpoint = &upstream.endpoints[idx];
            let req = match pending.take() {
                Some(r) => r,
                None => match &saved {
                    Some((m, u, h)) => rebuild(m, u, h),
                    None => unreachable!("retries only happen with a request to send"),
                },
            };
            match self.send(endpoint.addr, req, policy).await {
                Ok((resp, tx)) => {
                    return self.respond(
                        upstream,
                        idx,
                        resp,
                        tx,
                        client_upgrade,
                        client_version,
                        start,
                    );
                }
                Err(mut failure) => {
                    // A failure caused by the client's body is the client's.
                    match body_state.as_ref().map(|s| s.get()) {
                        Some(BodyOutcome::TooLarge) => {
                            warn!(upstream = %upstream.name, "streamed request body over the limit; answering 413");
                            return self.too_large();
                        }
                        Some(BodyOutcome::ClientError) => {
                            debug!(client = %client.ip, "malformed or aborted request body; answering 400");
                            return self.bad_request("bad request: malformed request body\n");
                        }
                        _ => {}
                    }
                    pending = failure.request.take();
                    let error = failure.error.as_ref().map(|e| e.to_string());
                    let retry = may_retry(failure.kind, pending.is_some(), saved.is_some());
                    match self.after_failure(
                        upstream,
                        &tried[..attempts],
                        max_attempts,
                        failure.kind,
                        error.as_deref(),
                        retry,
                    ) {
                        AfterFailure::Retry(next) => idx = next,
                        AfterFailure::GiveUp(status, body, reason) => {
                            return self.local(status, body, reason);
                        }
                    }
                }
            }
        }
    }

    /// Counts and logs a failed attempt on the last endpoint in `tried` and
    /// decides what comes next: another endpoint (when `retry` allows it,
    /// attempts remain and one is left untried), else a 504 after a timeout
    /// or a 502. Shared by the general path and the fast path.
    pub(crate) fn after_failure(
        &self,
        upstream: &Upstream,
        tried: &[usize],
        max_attempts: usize,
        kind: FailureKind,
        error: Option<&str>,
        retry: bool,
    ) -> AfterFailure {
        let shared = &self.shared;
        let attempts = tried.len();
        let idx = tried[attempts - 1];
        let endpoint = &upstream.endpoints[idx];
        shared.metrics.upstream_error(kind.label());
        if kind.is_connect() {
            shared.balancer.connect_failed(upstream, idx);
        }
        let next = retry
            .then_some(())
            .filter(|()| attempts < max_attempts)
            .and_then(|()| upstream.next_untried(idx, tried));
        if let Some(next) = next {
            shared.metrics.retries.inc();
            debug!(
                upstream = %upstream.name,
                endpoint = %endpoint.addr,
                kind = kind.label(),
                error,
                next = %upstream.endpoints[next].addr,
                "attempt failed; retrying on the next endpoint"
            );
            return AfterFailure::Retry(next);
        }
        if kind.is_timeout() {
            warn!(
                upstream = %upstream.name,
                endpoint = %endpoint.addr,
                kind = kind.label(),
                attempts,
                "upstream timed out; answering 504"
            );
            return AfterFailure::GiveUp(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timed out\n",
                "upstream_timeout",
            );
        }
        warn!(
            upstream = %upstream.name,
            endpoint = %endpoint.addr,
            kind = kind.label(),
            error,
            attempts,
            "no endpoint could serve the request; answering 502"
        );
        AfterFailure::GiveUp(
            StatusCode::BAD_GATEWAY,
            "bad gateway: upstream failed\n",
            "upstream_failed",
        )
    }

    /// Sends one attempt to `addr`, on a pooled connection when one is idle.
    /// A pooled connection that turns out closed before the request was
    /// written is discarded and the next one (or a new one) is used: that is
    /// the keep-alive race, and it costs the client nothing.
    async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<ReqBody>,
        policy: &Policy,
    ) -> Result<(Response<Incoming>, Sender), Failure> {
        loop {
            let (mut tx, reused) = match self.pool.checkout(addr) {
                Some(tx) => (tx, true),
                None => match self.connect(addr, policy).await {
                    Ok(tx) => (tx, false),
                    Err((kind, _)) => {
                        return Err(Failure {
                            kind,
                            request: Some(req),
                            error: None,
                        });
                    }
                },
            };
            if let Err(e) = tx.ready().await {
                if reused {
                    continue;
                }
                return Err(Failure {
                    kind: FailureKind::Send,
                    request: Some(req),
                    error: Some(e),
                });
            }
            let sent = tx.try_send_request(req);
            match tokio::time::timeout(policy.response_header_timeout, sent).await {
                Err(_) => {
                    return Err(Failure {
                        kind: FailureKind::ResponseTimeout,
                        request: None,
                        error: None,
                    });
                }
                Ok(Ok(resp)) => return Ok((resp, tx)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) if reused => {
                        req = back;
                        continue;
                    }
                    back => {
                        return Err(Failure {
                            kind: if reused {
                                FailureKind::Reused
                            } else {
                                FailureKind::Send
                            },
                            request: back,
                            error: Some(e.into_error()),
                        });
                    }
                },
            }
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        policy: &Policy,
    ) -> Result<Sender, (FailureKind, Option<std::io::Error>)> {
        let stream = super::connect_upstream(addr, policy.connect_timeout).await?;
        let (tx, conn) = self
            .client
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| (FailureKind::Connect, None))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(endpoint = %addr, error = %e, "upstream connection closed with an error");
            }
        });
        Ok(tx)
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        upstream: &Upstream,
        idx: usize,
        mut resp: Response<Incoming>,
        tx: Sender,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        client_version: Version,
        start: Instant,
    ) -> Response<RespBody> {
        let endpoint = &upstream.endpoints[idx];
        let status = resp.status();
        endpoint.record_response(status.as_u16());
        let metrics = &self.shared.metrics;
        metrics.duration.observe(self.id, start.elapsed());
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                warn!(endpoint = %endpoint.addr, "upstream switched protocols unasked; answering 502");
                return self.local(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: unexpected upgrade\n",
                    "upstream_failed",
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let metrics = metrics.clone();
            let addr = endpoint.addr;
            tokio::task::spawn_local(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        metrics.tunnels.inc();
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        metrics.tunnels.dec();
                        debug!(endpoint = %addr, result = ?r, "tunnel closed");
                    }
                    Err(e) => debug!(endpoint = %addr, error = %e, "upgrade failed"),
                }
            });
            let (mut parts, _) = resp.into_parts();
            forward_response_headers(&mut parts.headers, client_version, true);
            return Response::from_parts(parts, RespBody::empty());
        }
        let (mut parts, body) = resp.into_parts();
        forward_response_headers(&mut parts.headers, client_version, false);
        let checkin = Checkin::new(self.pool.clone(), endpoint.addr, tx);
        Response::from_parts(
            parts,
            RespBody::Upstream(UpstreamBody::new(
                body,
                Some(checkin),
                endpoint.addr,
                self.body_error.clone(),
            )),
        )
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one valid `Host`
/// (absolute-form requests carry it in the target instead). `Err` is the
/// 400 body.
pub fn check_request<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err("bad request: multiple Host headers\n"),
        (None, None) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
            Err("bad request: missing Host header\n")
        }
        (Some(h), None) if http::uri::Authority::try_from(h.as_bytes()).is_err() => {
            Err("bad request: invalid Host header\n")
        }
        _ => Ok(()),
    }
}

fn rebuild(method: &Method, uri: &Uri, headers: &HeaderMap) -> Request<ReqBody> {
    let mut req = Request::new(ReqBody::Empty);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules() {
        // never sent: always retryable, whatever the method
        assert!(may_retry(FailureKind::Connect, true, false));
        assert!(may_retry(FailureKind::ConnectTimeout, true, false));
        // sent, no response byte: only when replayable
        assert!(may_retry(FailureKind::Reused, false, true));
        assert!(!may_retry(FailureKind::Reused, false, false));
        assert!(!may_retry(FailureKind::Send, false, false));
        // timeouts after sending are never retried
        assert!(!may_retry(FailureKind::ResponseTimeout, false, true));
    }

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
            Err("bad request: missing Host header\n")
        );
        assert_eq!(
            check_request(&req(Version::HTTP_11, "/", &["a", "b"])),
            Err("bad request: multiple Host headers\n")
        );
        assert_eq!(
            check_request(&req(Version::HTTP_11, "/", &["a b"])),
            Err("bad request: invalid Host header\n")
        );
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}

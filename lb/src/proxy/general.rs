//! The general (hyper) path: requests that hyper's server parsed (bodies,
//! upgrades, HTTP/1.0, anything the fast path does not take) go through the
//! attempt core with [`HyperH1`], a transport that runs one hyper HTTP/1.1
//! client exchange on a connection from the worker's pool.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::Worker;
use super::attempt::{Failure, FailureKind, SendFailure, Transport, is_idempotent};
use super::body::{BodyOutcome, BodyState, ReqBody, RespBody, UpstreamBody};
use super::headers::{
    ClientIp, forward_request_headers, forward_response_headers, is_upgrade_request,
};
use super::local::{BadRequest, Local};
use super::upstream::{Pool, Reuse, UpConn};
use crate::selection::Policy;

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

/// The hyper path's upstream transport: one hyper HTTP/1.1 client exchange
/// per request on a pooled connection, which goes back to the pool when
/// the exchange completed cleanly ([`Reuse`]).
struct HyperH1<'w> {
    worker: &'w Worker,
    /// The worker's connection pool.
    pool: &'w Pool,
    /// The head of an idempotent bodiless request, for a replay.
    saved: Option<(Method, Uri, HeaderMap)>,
    /// What happened to the client's body, if it has one.
    body: Option<Arc<BodyState>>,
    /// An upgrade handshake: the connection becomes a tunnel, never pooled.
    upgrade: bool,
}

/// A response head and the means to return its connection.
struct HyperResponse {
    response: Response<Incoming>,
    reuse: Option<Rc<Reuse>>,
}

impl<'w> Transport for HyperH1<'w> {
    type Connector = &'w Pool;
    type Request = Request<ReqBody>;
    type Response = HyperResponse;

    fn connector(&mut self) -> &mut &'w Pool {
        &mut self.pool
    }

    async fn send(
        &mut self,
        addr: SocketAddr,
        conn: UpConn,
        request: Request<ReqBody>,
        policy: &Policy,
    ) -> Result<HyperResponse, SendFailure<Request<ReqBody>>> {
        let io = TokioIo::new(conn.into_stream());
        let (mut tx, connection) = match self.worker.client.handshake(io).await {
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
        match tokio::time::timeout(policy.response_header_timeout, sent).await {
            Err(_) => Err(SendFailure::sent(Failure::new(
                FailureKind::ResponseTimeout,
            ))),
            Ok(Ok(response)) => {
                if let Some(reuse) = &reuse
                    && !keeps_alive(&response)
                {
                    reuse.refuse();
                }
                Ok(HyperResponse { response, reuse })
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let failure = Failure::because(FailureKind::Send, e.into_error());
                Err(SendFailure { failure, unsent })
            }
        }
    }

    fn status(response: &HyperResponse) -> u16 {
        response.response.status().as_u16()
    }

    fn can_replay(&self) -> bool {
        self.saved.is_some()
    }

    fn replay(&mut self) -> Option<Request<ReqBody>> {
        let (method, uri, headers) = self.saved.as_ref()?;
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        Some(req)
    }

    fn client_fault(&self) -> Option<Local> {
        match self.body.as_ref()?.get() {
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
fn keeps_alive(response: &Response<Incoming>) -> bool {
    let close = response
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| super::headers::connection_tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(b"close"));
    response.version() == Version::HTTP_11 && !close
}

impl Worker {
    /// A local response, counted.
    fn local(&self, local: Local) -> Response<RespBody> {
        local.count(&self.shared.metrics);
        local.response()
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
            return self.local(Local::ConnectRefused);
        }
        if let Err(why) = check_request(&req) {
            debug!(client = %client.ip, why = Local::BadRequest(why).body().trim_end(), "malformed request head; answering 400");
            return self.local(Local::BadRequest(why));
        }
        if let Some(te) = req.headers().get(header::TRANSFER_ENCODING)
            && !te.as_bytes().eq_ignore_ascii_case(b"chunked")
        {
            // hyper has decoded the chunked framing; any other coding (gzip,
            // chunked) would be lost on the way, so refuse (RFC 9112 §6.1).
            debug!(client = %client.ip, "unsupported transfer coding; answering 501");
            return self.local(Local::UnsupportedCoding);
        }
        let table = self.table();
        let host = req.uri().host().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let upstream = match self.route(&table, host, req.uri().path()) {
            Ok(u) => u,
            Err(local) => return self.local(local),
        };

        // Body limit: refuse a declared oversize body without reading it;
        // a streamed one is counted as it passes (ReqBody::client).
        if let Some(max) = shared.config.max_body_bytes
            && req.body().size_hint().lower() > max
        {
            warn!(limit = max, "request body over the limit; answering 413");
            return self.local(Local::BodyTooLarge);
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
        let mut transport = HyperH1 {
            worker: &self,
            pool: &self.pool,
            saved,
            body: body_state,
            upgrade,
        };
        let answered = match self
            .forward(upstream, &mut transport, Request::from_parts(parts, body))
            .await
        {
            Ok(a) => a,
            Err(local) => return self.local(local),
        };
        let endpoint = upstream.endpoints[answered.idx].addr;
        let HyperResponse {
            mut response,
            reuse,
        } = answered.response;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                warn!(endpoint = %endpoint, "upstream switched protocols unasked; answering 502");
                return self.local(Local::UnexpectedUpgrade);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
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
        Response::from_parts(
            parts,
            RespBody::Upstream(UpstreamBody::new(
                body,
                endpoint,
                reuse,
                self.body_error.clone(),
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

//! The attempt core: the one place where the proxy's policy lives.
//!
//! Every request, whichever transport carried it in and whichever carries it
//! out, goes through `Worker::decide` and `Worker::forward` (crate-internal,
//! as are the other items named in backticks here):
//!
//! 1. **decide** (`Worker::decide`): the routing table's best rule for
//!    the request (listener, host, path, and method, headers and query
//!    where a rule asks for them), else [`Local::NoRoute`]; the rule's
//!    access checks and local answers (403, CORS preflight, redirect, fixed
//!    response); then the **pick**: the next endpoint of the rule's exact
//!    weighted split, else [`Local::NoEndpoints`], [`Local::InvalidBackend`]
//!    or [`Local::NoBackends`];
//! 2. **connect or check out** a connection (`Connector::checkout`,
//!    `Connector::connect`);
//! 3. **send** the request and wait for the response head
//!    (`Transport::send`);
//! 4. **classify** a failure ([`FailureKind`]): a pooled connection that
//!    turns out closed before the request left is the keep-alive race, and
//!    the same request goes out on another connection to the same endpoint;
//!    anything else is counted, feeds passive health (`Worker::after_failure`)
//!    and is retried on another endpoint when [`may_retry`] allows it, or
//!    answered locally ([`Local::UpstreamFailed`], [`Local::UpstreamTimeout`]).
//!
//! A transport (`Transport`) only moves bytes: the HTTP/1.1 fast path
//! (`fast/`) writes a rewritten head on a raw pooled connection, the general
//! path (`general.rs`) hands an `http::Request` to hyper's client on the same
//! kind of pooled connection. A new protocol adds a transport, not a policy.

use std::net::SocketAddr;

use http::Method;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Worker;
use super::access_log::{Forwarded, UpstreamSide};
use super::filters;
use super::headers::ClientIp;
use super::local::{Local, Reply};
use super::upstream::{self, ConnectError, Pool, UpConn};
use crate::metrics::Metrics;
use crate::selection::{
    Forward, Hit, Pick, Policy, RequestView, RouteRule, RoutingTable, RuleAction, Upstream,
};

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
    /// Metric label (`roundhouse_upstream_errors_total{kind}`).
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

    fn is_timeout(self) -> bool {
        matches!(
            self,
            FailureKind::ConnectTimeout | FailureKind::ResponseTimeout
        )
    }
}

/// A failed attempt: what went wrong, and the transport's words for it.
#[derive(Debug)]
pub struct Failure {
    /// The class of failure, which decides what happens next.
    pub kind: FailureKind,
    /// For the log line.
    pub error: Option<String>,
}

impl Failure {
    /// A failure of `kind` without further detail.
    pub fn new(kind: FailureKind) -> Self {
        Self { kind, error: None }
    }

    /// A failure of `kind` with the error that caused it.
    pub fn because(kind: FailureKind, error: impl ToString) -> Self {
        Self {
            kind,
            error: Some(error.to_string()),
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Timeout => Failure::new(FailureKind::ConnectTimeout),
            ConnectError::Io(e) => Failure::because(FailureKind::Connect, e),
        }
    }
}

/// A failed send; `unsent` is the request when it provably never left
/// (nothing was written), so it can go out again on another connection.
#[derive(Debug)]
pub struct SendFailure<R> {
    /// What went wrong.
    pub failure: Failure,
    /// The request, when it was not sent.
    pub unsent: Option<R>,
}

impl<R> SendFailure<R> {
    /// The request left (at least partly) and no response head came back.
    pub fn sent(failure: Failure) -> Self {
        Self {
            failure,
            unsent: None,
        }
    }

    /// Nothing was written: `request` can be sent again.
    pub fn unsent(failure: Failure, request: R) -> Self {
        Self {
            failure,
            unsent: Some(request),
        }
    }
}

/// Where a transport's connections come from.
pub(crate) trait Connector {
    /// A connection to one endpoint.
    type Conn;

    /// A pooled connection to `addr` that is still open, if one is idle
    /// (`now`: the attempt's clock reading, for idle expiry).
    fn checkout(&mut self, addr: SocketAddr, now: Instant) -> Option<Self::Conn>;

    /// A new connection to `addr` (within `policy.connect_timeout`).
    async fn connect(&mut self, addr: SocketAddr, policy: &Policy) -> Result<Self::Conn, Failure>;
}

/// HTTP/1.1 connections: the worker's one pool, else a new TCP connection.
impl Connector for &Pool {
    type Conn = UpConn;

    fn checkout(&mut self, addr: SocketAddr, now: Instant) -> Option<UpConn> {
        Pool::checkout(self, addr, now)
    }

    async fn connect(&mut self, addr: SocketAddr, policy: &Policy) -> Result<UpConn, Failure> {
        Ok(upstream::connect(addr, policy.connect_timeout).await?)
    }
}

/// The connection type of a transport's connector.
type ConnOf<T> = <<T as Transport>::Connector as Connector>::Conn;

/// What a transport does for the attempt core: get a connection to an
/// endpoint (its [`Connector`]), send one request on it and read the
/// response head. Bodies and the rest of the exchange are the transport's
/// own business, after [`Worker::forward`] returns.
pub(crate) trait Transport {
    /// Where connections come from.
    type Connector: Connector;
    /// One attempt's request, as this transport sends it.
    type Request;
    /// A response head, with whatever the transport needs for the body.
    type Response;

    /// The connector.
    fn connector(&mut self) -> &mut Self::Connector;

    /// Sends `request` on `conn` and waits for the final response head
    /// (within `policy.response_header_timeout`).
    async fn send(
        &mut self,
        addr: SocketAddr,
        conn: ConnOf<Self>,
        request: Self::Request,
        policy: &Policy,
    ) -> Result<Self::Response, SendFailure<Self::Request>>;

    /// The response's status code.
    fn status(response: &Self::Response) -> u16;

    /// Whether a request that was sent can be replayed on another endpoint
    /// (idempotent and bodiless: its head was kept).
    fn can_replay(&self) -> bool;

    /// The request again, for a retry ([`Transport::can_replay`] said yes).
    fn replay(&mut self) -> Option<Self::Request>;

    /// A failure caused by the client (its body broke or was too large),
    /// which must be answered as the client's error, not retried.
    fn client_fault(&self) -> Option<Local> {
        None
    }
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
pub fn may_retry(kind: FailureKind, unsent: bool, replayable: bool) -> bool {
    kind.retryable() && (unsent || replayable)
}

/// Most attempts per request (the first and ten retries).
const MAX_TRIES: usize = 11;

/// Attempts allowed for a request to `upstream` under `policy`: the first
/// plus its retries, at most one per endpoint.
fn max_attempts(upstream: &Upstream, policy: &Policy) -> usize {
    (policy.retries as usize + 1)
        .min(upstream.endpoints.len())
        .clamp(1, MAX_TRIES)
}

/// What to do after a failed attempt ([`Worker::after_failure`]).
enum AfterFailure {
    /// Try the endpoint with this index next.
    Retry(usize),
    /// Answer the client locally.
    GiveUp(Local),
}

/// A request that reached an endpoint and got a response head.
pub(crate) struct Answered<R> {
    /// Index of the endpoint in the upstream.
    pub idx: usize,
    /// The transport's response.
    pub response: R,
    /// When its head was in (the clock reading the request's duration was
    /// taken from): a connection checked in after the response was relayed
    /// counts its idle time from here, which saves a clock read per
    /// request. Its idle time then includes the body's relay, so a
    /// connection that streamed a long body can expire early (and be
    /// replaced by a new one), never late.
    pub at: Instant,
}

/// Where a request goes: the rule that took it, the backend and endpoint
/// of its first attempt, and the policy of its attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'t> {
    /// The rule and the match that took the request.
    pub hit: Hit<'t>,
    /// The backend.
    pub upstream: &'t Upstream,
    /// The endpoint of the first attempt.
    pub idx: usize,
    /// Retries and timeouts.
    pub policy: &'t Policy,
    /// The affinity key of the client's session cookie, when the rule has
    /// cookie affinity and the cookie's endpoint was chosen.
    pub sticky: Option<u64>,
}

/// What [`Worker::decide`] made of a request.
#[derive(Debug)]
pub(crate) enum Decision<'t> {
    /// Forward it.
    Forward(Target<'t>),
    /// Answer it locally (with the rule that decided so, if one matched).
    Reply(Option<Hit<'t>>, Reply<'t>),
}

impl<'t> Decision<'t> {
    /// The rule that took the request, if any.
    pub(crate) fn hit(&self) -> Option<Hit<'t>> {
        match self {
            Decision::Forward(t) => Some(t.hit),
            Decision::Reply(hit, _) => *hit,
        }
    }

    /// The access log's name of the rule that took the request.
    pub(crate) fn label(&self) -> Option<&'t str> {
        self.hit().map(|h| &*h.rule.label)
    }
}

impl Worker {
    /// Decides where a request on `client`'s connection with this `Host`
    /// value goes, in `table`: the best rule, its access checks and local
    /// answers, then the pick. The one call every client transport makes
    /// before forwarding (the filters it then applies are the rule's:
    /// [`crate::selection::RuleFilters`]).
    pub(crate) fn decide<'t>(
        &self,
        table: &'t RoutingTable,
        client: &ClientIp,
        host: Option<&str>,
        req: &dyn RequestView,
    ) -> Decision<'t> {
        match table.routes.find(client.listener, host, req) {
            Some(hit) => self.decide_hit(hit, client, host, req),
            None => {
                debug!(path = req.path(), "no route matches");
                Decision::Reply(None, Reply::new(Local::NoRoute))
            }
        }
    }

    /// [`Worker::decide`] once the rule is known.
    pub(crate) fn decide_hit<'t>(
        &self,
        hit: Hit<'t>,
        client: &ClientIp,
        host: Option<&str>,
        req: &dyn RequestView,
    ) -> Decision<'t> {
        let rule = hit.rule;
        let reply = |r: Reply<'t>| Decision::Reply(Some(hit), r);
        let Some(f) = &rule.filters else {
            // The common case, with nothing to check first.
            return match &rule.action {
                RuleAction::Forward(forward) => self.forwarding(hit, forward.pick(), None),
                _ => self.answer(hit, client, host, req),
            };
        };
        if let Some(ranges) = &f.source
            && !ranges.permits(client.ip)
        {
            debug!(client = %client.ip, route = %rule.label, "client address not allowed; answering 403");
            return reply(Reply::new(Local::Forbidden));
        }
        if let Some(cors) = &f.cors
            && filters::is_preflight(req)
        {
            let origin = filters::origin(req).unwrap_or_default();
            return reply(Reply {
                headers: filters::preflight_headers(cors, &origin),
                ..Reply::new(Local::Preflight)
            });
        }
        match &rule.action {
            RuleAction::Forward(forward) => {
                let (pick, sticky) = self.pick(rule, forward, req);
                self.forwarding(hit, pick, sticky)
            }
            _ => self.answer(hit, client, host, req),
        }
    }

    /// The decision for a pick of a forwarding rule.
    #[inline]
    fn forwarding<'t>(&self, hit: Hit<'t>, pick: Pick<'t>, sticky: Option<u64>) -> Decision<'t> {
        let rule = hit.rule;
        let reply = |r: Reply<'t>| Decision::Reply(Some(hit), r);
        match pick {
            Pick::Endpoint {
                upstream,
                idx,
                policy,
            } => Decision::Forward(Target {
                hit,
                upstream,
                idx,
                policy,
                sticky,
            }),
            Pick::NoEndpoints(upstream) => {
                warn!(upstream = %upstream.name, "no endpoints available; answering 503");
                reply(Reply::new(Local::NoEndpoints))
            }
            Pick::Invalid => {
                debug!(route = %rule.label, "this share goes to an invalid backend reference; answering 500");
                reply(Reply::new(Local::InvalidBackend))
            }
            Pick::NoBackends => {
                debug!(route = %rule.label, "the rule has no backend; answering 500");
                reply(Reply::new(Local::NoBackends))
            }
        }
    }

    /// The local answer of a rule that does not forward (a redirect, a
    /// fixed response).
    fn answer<'t>(
        &self,
        hit: Hit<'t>,
        client: &ClientIp,
        host: Option<&str>,
        req: &dyn RequestView,
    ) -> Decision<'t> {
        let reply = |r: Reply<'t>| Decision::Reply(Some(hit), r);
        match &hit.rule.action {
            RuleAction::Redirect(redirect) => {
                let location = filters::redirect_location(
                    redirect,
                    hit.path,
                    client.proto,
                    host,
                    req.path(),
                    req.query(),
                );
                reply(Reply {
                    headers: location
                        .map(|l| vec![(http::header::LOCATION, l)])
                        .unwrap_or_default(),
                    ..Reply::new(Local::Redirect(redirect.status))
                })
            }
            RuleAction::Respond(fixed) => reply(Reply {
                body: Some(&fixed.body),
                ..Reply::new(Local::Fixed(fixed.status))
            }),
            RuleAction::Forward(forward) => self.forwarding(hit, forward.pick(), None),
        }
    }

    /// The pick for a request to a forwarding rule: with cookie affinity,
    /// the endpoint its session cookie names when that one is still
    /// available (and the key, so no new cookie is set); else the next one
    /// in the rule's exact rotation.
    fn pick<'r>(
        &self,
        rule: &RouteRule,
        forward: &'r Forward,
        req: &dyn RequestView,
    ) -> (Pick<'r>, Option<u64>) {
        if let Some(affinity) = rule.filters.as_ref().and_then(|f| f.affinity.as_ref())
            && let Some(key) = filters::affinity_cookie_key(req, &affinity.name)
            && let Some(pick) = forward.sticky(key)
        {
            return (pick, Some(key));
        }
        (forward.pick(), None)
    }

    /// Forwards one request to `target` through `transport`: sends, and
    /// retries on other endpoints of the same backend by the rules above.
    /// Returns the answer (`Err`: the local response to give instead) and
    /// what happened upstream (endpoint, status, time, retries), which the
    /// caller's access log line is made from.
    pub(crate) async fn forward<T: Transport>(
        &self,
        target: &Target<'_>,
        transport: &mut T,
        request: T::Request,
    ) -> (Result<Answered<T::Response>, Local>, Forwarded) {
        let Target {
            upstream,
            mut idx,
            policy,
            ..
        } = *target;
        let max_attempts = max_attempts(upstream, policy);
        let mut tried = [usize::MAX; MAX_TRIES];
        let mut attempts = 0;
        let mut pending = Some(request);
        let start = Instant::now();
        let mut capped;
        loop {
            tried[attempts] = idx;
            attempts += 1;
            let endpoint = &upstream.endpoints[idx];
            let Some(request) = pending.take().or_else(|| transport.replay()) else {
                unreachable!("a retry is only decided with a request to send");
            };
            // A request timeout bounds all attempts together.
            let policy = match policy.request_timeout {
                None => policy,
                Some(limit) => {
                    let left = limit.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        let side = forwarded(endpoint.addr, None, start.elapsed(), attempts - 1);
                        return (Err(Local::UpstreamTimeout), side);
                    }
                    capped = policy.clone();
                    capped.response_header_timeout = capped.response_header_timeout.min(left);
                    &capped
                }
            };
            // The first attempt's pool lookup uses the clock reading the
            // request's duration starts from; a retry reads it again.
            let now = if attempts == 1 { start } else { Instant::now() };
            let failure = match attempt(transport, endpoint.addr, request, policy, now).await {
                Ok(response) => {
                    let status = T::status(&response);
                    endpoint.record_response(status);
                    let at = Instant::now();
                    let took = at.saturating_duration_since(start);
                    self.shared.metrics.duration.observe(self.id, took);
                    let side = forwarded(endpoint.addr, Some(status), took, attempts);
                    return (Ok(Answered { idx, response, at }), side);
                }
                Err(SendFailure { failure, unsent }) => {
                    pending = unsent;
                    failure
                }
            };
            if let Some(local) = transport.client_fault() {
                let side = forwarded(endpoint.addr, None, start.elapsed(), attempts);
                return (Err(local), side);
            }
            let retry = may_retry(failure.kind, pending.is_some(), transport.can_replay());
            match self.after_failure(upstream, &tried[..attempts], max_attempts, &failure, retry) {
                AfterFailure::Retry(next) => idx = next,
                AfterFailure::GiveUp(local) => {
                    let side = forwarded(endpoint.addr, None, start.elapsed(), attempts);
                    return (Err(local), side);
                }
            }
        }
    }

    /// Counts and logs a failed attempt on the last endpoint in `tried` and
    /// decides what comes next: another endpoint (when `retry` allows it,
    /// attempts remain and one is left untried), else a 504 after a timeout
    /// or a 502.
    fn after_failure(
        &self,
        upstream: &Upstream,
        tried: &[usize],
        max_attempts: usize,
        failure: &Failure,
        retry: bool,
    ) -> AfterFailure {
        let shared = &self.shared;
        let attempts = tried.len();
        let idx = tried[attempts - 1];
        let endpoint = &upstream.endpoints[idx];
        let kind = failure.kind;
        let error = failure.error.as_deref();
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
            return AfterFailure::GiveUp(Local::UpstreamTimeout);
        }
        warn!(
            upstream = %upstream.name,
            endpoint = %endpoint.addr,
            kind = kind.label(),
            error,
            attempts,
            "no endpoint could serve the request; answering 502"
        );
        AfterFailure::GiveUp(Local::UpstreamFailed)
    }
}

/// Counts and logs an upstream response body that failed after its head was
/// forwarded: the client's response is cut short (its connection is
/// aborted, so it cannot mistake the truncated body for a whole one).
pub(crate) fn body_failed(metrics: &Metrics, endpoint: SocketAddr, error: &dyn std::fmt::Display) {
    metrics.upstream_error("body");
    warn!(endpoint = %endpoint, error = %error, "upstream response body failed mid-stream; aborting the client response");
}

/// The upstream side of a request: the endpoint tried last, its status when
/// it answered, the time since the first attempt and the retries.
#[inline]
fn forwarded(
    addr: SocketAddr,
    status: Option<u16>,
    duration: std::time::Duration,
    attempts: usize,
) -> Forwarded {
    Forwarded {
        upstream: Some(UpstreamSide {
            addr,
            status,
            duration,
        }),
        retries: attempts.saturating_sub(1) as u32,
    }
}

/// One attempt on one endpoint: a pooled connection if one is idle, else a
/// new one. A pooled connection that turns out closed before the request
/// left is the keep-alive race: the same request goes out on the next
/// pooled (or a new) connection, at no cost to the client.
async fn attempt<T: Transport>(
    transport: &mut T,
    addr: SocketAddr,
    mut request: T::Request,
    policy: &Policy,
    now: Instant,
) -> Result<T::Response, SendFailure<T::Request>> {
    loop {
        let (conn, reused) = match transport.connector().checkout(addr, now) {
            Some(conn) => (conn, true),
            None => match transport.connector().connect(addr, policy).await {
                Ok(conn) => (conn, false),
                Err(failure) => return Err(SendFailure::unsent(failure, request)),
            },
        };
        match transport.send(addr, conn, request, policy).await {
            Ok(response) => return Ok(response),
            Err(SendFailure {
                unsent: Some(back), ..
            }) if reused => {
                debug!(endpoint = %addr, "pooled connection closed by the endpoint; trying another");
                request = back;
            }
            Err(mut e) => {
                if reused && e.failure.kind == FailureKind::Send {
                    e.failure.kind = FailureKind::Reused;
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::*;
    use crate::discovery::{EndpointSpec, RoutingConfig, UpstreamConfig};
    use crate::metrics::Metrics;
    use crate::proxy::ProxyConfig;
    use crate::selection::Balancer;

    /// What the scripted transport does next.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        ConnectRefused,
        /// Fails before anything was written (the request comes back).
        Unsent,
        /// Fails after writing, before a response head.
        Lost,
        Timeout,
        Answer(u16),
    }

    /// A transport that follows a script and records every attempt as
    /// (endpoint port, reused connection).
    struct Script {
        steps: VecDeque<Step>,
        pooled: Vec<u16>,
        attempts: Vec<(u16, bool)>,
        replayable: bool,
    }

    impl Script {
        fn new(steps: &[Step], pooled: &[u16], replayable: bool) -> Self {
            Self {
                steps: steps.iter().copied().collect(),
                pooled: pooled.to_vec(),
                attempts: Vec::new(),
                replayable,
            }
        }
    }

    impl Connector for Script {
        type Conn = bool;

        fn checkout(&mut self, addr: SocketAddr, _: Instant) -> Option<bool> {
            let i = self.pooled.iter().position(|p| *p == addr.port())?;
            self.pooled.remove(i);
            Some(true)
        }

        async fn connect(&mut self, addr: SocketAddr, _: &Policy) -> Result<bool, Failure> {
            if let Some(Step::ConnectRefused) = self.steps.front() {
                self.steps.pop_front();
                self.attempts.push((addr.port(), false));
                return Err(Failure::new(FailureKind::Connect));
            }
            Ok(false)
        }
    }

    impl Transport for Script {
        type Connector = Self;
        type Request = ();
        type Response = u16;

        fn connector(&mut self) -> &mut Self {
            self
        }

        async fn send(
            &mut self,
            addr: SocketAddr,
            reused: bool,
            (): (),
            _: &Policy,
        ) -> Result<u16, SendFailure<()>> {
            self.attempts.push((addr.port(), reused));
            match self.steps.pop_front().expect("the script has a step") {
                Step::Answer(status) => Ok(status),
                Step::Unsent => Err(SendFailure::unsent(Failure::new(FailureKind::Send), ())),
                Step::Lost => Err(SendFailure::sent(Failure::new(FailureKind::Send))),
                Step::Timeout => Err(SendFailure::sent(Failure::new(
                    FailureKind::ResponseTimeout,
                ))),
                Step::ConnectRefused => unreachable!("consumed by connect"),
            }
        }

        fn status(response: &u16) -> u16 {
            *response
        }

        fn can_replay(&self) -> bool {
            self.replayable
        }

        fn replay(&mut self) -> Option<()> {
            self.replayable.then_some(())
        }
    }

    fn balancer(ports: &[u16], policy: Policy) -> Arc<Balancer> {
        let b = Arc::new(Balancer::new(policy, Arc::new(Metrics::new(1))));
        b.apply(&RoutingConfig {
            upstreams: vec![UpstreamConfig::catch_all(
                "u",
                ports
                    .iter()
                    .map(|p| EndpointSpec::new(([127, 0, 0, 1], *p).into()))
                    .collect(),
            )],
            routes: Vec::new(),
        });
        b
    }

    /// Runs one request through the core; returns the outcome (status or
    /// local response), the attempts and the retry count.
    async fn run(
        b: &Arc<Balancer>,
        script: &mut Script,
    ) -> (Result<(u16, u16), Local>, Vec<(u16, bool)>, u64) {
        let worker = crate::proxy::tests::worker(b.clone(), ProxyConfig::default());
        let table = b.snapshot();
        let client = ClientIp::new([127, 0, 0, 1].into());
        let req = crate::selection::route::SimpleRequest::get("/");
        let out = match worker.decide(&table, &client, Some("a"), &req) {
            Decision::Forward(target) => worker
                .forward(&target, script, ())
                .await
                .0
                .map(|a| (target.upstream.endpoints[a.idx].addr.port(), a.response)),
            Decision::Reply(_, reply) => Err(reply.local),
        };
        (
            out,
            std::mem::take(&mut script.attempts),
            b.metrics().retries.get(),
        )
    }

    #[tokio::test]
    async fn the_keep_alive_race_costs_nothing_and_is_no_retry() {
        let b = balancer(&[1, 2], Policy::default());
        // A pooled connection to 1 turns out closed before the request
        // left: the same request goes to 1 again on a new connection.
        let mut s = Script::new(&[Step::Unsent, Step::Answer(200)], &[1], false);
        let (out, attempts, retries) = run(&b, &mut s).await;
        assert_eq!(out, Ok((1, 200)));
        assert_eq!(attempts, [(1, true), (1, false)]);
        assert_eq!(retries, 0, "not a retry on another endpoint");
    }

    #[tokio::test]
    async fn a_lost_request_is_retried_only_when_it_can_be_replayed() {
        let b = balancer(&[1, 2], Policy::default());
        let mut s = Script::new(&[Step::Lost, Step::Answer(200)], &[1], true);
        let (out, attempts, retries) = run(&b, &mut s).await;
        assert_eq!(out, Ok((2, 200)), "replayed on the next endpoint");
        assert_eq!(attempts, [(1, true), (2, false)]);
        assert_eq!(retries, 1);
        let text = b.metrics().encode();
        assert!(
            text.contains("roundhouse_upstream_errors_total{kind=\"reused_connection\"} 1"),
            "{text}"
        );

        let b = balancer(&[1, 2], Policy::default());
        let mut s = Script::new(&[Step::Lost], &[], false);
        let (out, attempts, retries) = run(&b, &mut s).await;
        assert_eq!(out, Err(Local::UpstreamFailed), "a POST is not replayed");
        assert_eq!((attempts.len(), retries), (1, 0));
    }

    #[tokio::test]
    async fn connect_failures_move_on_and_feed_passive_health() {
        let policy = Policy {
            eject_after: 1,
            ..Policy::default()
        };
        let b = balancer(&[1, 2, 3], policy);
        let mut s = Script::new(&[Step::ConnectRefused, Step::Answer(204)], &[], false);
        let (out, attempts, retries) = run(&b, &mut s).await;
        assert_eq!(out, Ok((2, 204)), "never sent: retried whatever the method");
        assert_eq!(attempts, [(1, false), (2, false)]);
        assert_eq!(retries, 1);
        assert!(b.snapshot().upstreams[0].endpoints[0].is_ejected());
    }

    #[tokio::test]
    async fn attempts_are_bounded_by_retries_and_endpoints() {
        let policy = Policy {
            retries: 1,
            eject_after: 0,
            ..Policy::default()
        };
        let b = balancer(&[1, 2, 3], policy);
        let mut s = Script::new(&[Step::ConnectRefused; 3], &[], true);
        let (out, attempts, _) = run(&b, &mut s).await;
        assert_eq!(out, Err(Local::UpstreamFailed));
        assert_eq!(
            attempts,
            [(1, false), (2, false)],
            "the first and one retry"
        );

        let b = balancer(&[1, 2], Policy::default());
        let mut s = Script::new(&[Step::ConnectRefused; 3], &[], true);
        let (out, attempts, _) = run(&b, &mut s).await;
        assert_eq!(out, Err(Local::UpstreamFailed));
        assert_eq!(attempts.len(), 2, "at most one attempt per endpoint");
    }

    #[tokio::test]
    async fn a_response_timeout_is_a_504_and_never_retried() {
        let b = balancer(&[1, 2], Policy::default());
        let mut s = Script::new(&[Step::Timeout], &[], true);
        let (out, attempts, retries) = run(&b, &mut s).await;
        assert_eq!(out, Err(Local::UpstreamTimeout));
        assert_eq!((attempts.len(), retries), (1, 0));
    }

    #[tokio::test]
    async fn no_endpoints_is_a_503_and_the_cursor_rotates_first_attempts() {
        let b = balancer(&[], Policy::default());
        let mut s = Script::new(&[], &[], true);
        assert_eq!(run(&b, &mut s).await.0, Err(Local::NoEndpoints));

        let b = balancer(&[1, 2], Policy::default());
        let mut s = Script::new(&[Step::Answer(200); 4], &[], true);
        let mut first = Vec::new();
        for _ in 0..4 {
            first.push(run(&b, &mut s).await.0.unwrap().0);
        }
        assert_eq!(first, [1, 2, 1, 2]);
    }

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

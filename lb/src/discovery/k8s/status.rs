//! The status writer: a work queue with one entry per object, as
//! kube-runtime's `Controller` and controller-runtime keep one per object.
//! It is generic over the status type and the [`Sink`] that writes it, so
//! every kind (Upstream, and the Gateway API kinds) shares one queue, one
//! back-off and one logging policy; a kind only brings its sink.
//!
//! - **Fair.** Each object has its own state and its own back-off; the
//!   next write is the one due first (ties by name), a few run at once
//!   ([`CONCURRENCY`]) and each has a deadline ([`WRITE_TIMEOUT`]), so a
//!   failing or hanging object never holds the others back.
//! - **Bounded.** Retryable failures (connection errors, timeouts, 409, 429,
//!   5xx) back off per object, exponentially up to a ceiling
//!   ([`backoff::STATUS`]). Other 4xx answers (422 from validation or an
//!   admission webhook, 403, …) cannot succeed by retrying: the entry is
//!   parked until the object changes or its computed status does.
//! - **Quiet.** A rejection is logged at WARN once per distinct message and
//!   object; a retryable failure on its first occurrence and then at most
//!   once per [`LOG_EVERY`] per object; everything else at DEBUG.
//! - **Latest wins.** Only the newest computed status of an object is
//!   written; one that the object already has, or that we wrote last, is not
//!   written again (the API server may prune what it returns, so "the object
//!   shows it" alone cannot be the test).
//!
//! [`StatusQueue`] is the pure part (time is passed in); [`StatusWriter`]
//! drives it against a [`Sink`] (the Kubernetes API, or a test double).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backoff::{self, Backoff};
use crate::crd::{Upstream, UpstreamStatus};
use crate::metrics::{DiscoveryMetrics, ResultLabels};

/// The field manager of status writes (one for every replica).
pub const FIELD_MANAGER: &str = "roundhouse-lb";
/// How often a persisting retryable failure of one object is logged at WARN.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// How long one status write may take before it counts as a (retryable)
/// failure. kube's client has no read timeout of its own.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Status writes in flight at once.
pub const CONCURRENCY: usize = 4;

/// Why a write failed, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// May succeed later: connection errors, timeouts, 408, 409, 425, 429,
    /// 5xx. Retried after the object's back-off.
    Retryable(String),
    /// Will fail again as long as nothing changes: other 4xx (422 Invalid,
    /// 403 Forbidden, 400, …) and answers we cannot read.
    Permanent(String),
    /// The object is gone (404): nothing to write.
    NotFound,
}

/// Sorts a client error into [`Failure`]s. The message keeps the server's
/// code, reason and message.
pub fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => {
            let msg = format!("{} {}: {}", s.code, s.reason, s.message);
            match s.code {
                404 => Failure::NotFound,
                408 | 409 | 425 | 429 | 500..=599 => Failure::Retryable(msg),
                400..=499 => Failure::Permanent(msg),
                _ => Failure::Retryable(msg),
            }
        }
        kube::Error::SerdeError(_)
        | kube::Error::BuildRequest(_)
        | kube::Error::HttpError(_)
        | kube::Error::FromUtf8(_) => Failure::Permanent(e.to_string()),
        // Connection, TLS, auth (a token can be refreshed), stream errors.
        _ => Failure::Retryable(e.to_string()),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State<S> {
    /// Written (or found on the object): nothing to do.
    Clean,
    /// To be written at this instant.
    Due(Instant),
    /// Being written; this is the status sent.
    InFlight(S),
    /// Rejected; waits for a new object version or a new desired status.
    Parked,
}

#[derive(Debug)]
struct Entry<S> {
    desired: S,
    /// The object's resourceVersion when last seen.
    version: Option<String>,
    state: State<S>,
    /// Consecutive failed writes (the back-off exponent).
    failures: u32,
    /// The last rejection logged for this object.
    rejected: Option<String>,
    /// When a retryable failure was last logged at WARN, and how many were
    /// not logged since.
    last_warn: Option<Instant>,
    not_logged: u32,
}

/// What a finished write means, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written, after this many failures.
    Written {
        /// Consecutive failures before this success.
        after_failures: u32,
    },
    /// The object is gone; its entry is dropped.
    Gone,
    /// Failed, retried after `delay`.
    Retrying {
        /// Consecutive failures so far.
        failures: u32,
        /// Until the next attempt.
        delay: Duration,
        /// `Some(n)`: log this one at WARN, `n` failures having not been
        /// logged since the last WARN; `None`: DEBUG only.
        warn: Option<u32>,
    },
    /// Rejected; parked until the object or its inputs change.
    Rejected {
        /// A message not logged before for this object: WARN.
        first: bool,
    },
    /// The entry was dropped while the write was in flight.
    Forgotten,
}

/// A status as the queue handles it: compared to decide whether to write.
pub trait Status: Clone + PartialEq + std::fmt::Debug + Send + 'static {}

impl<S: Clone + PartialEq + std::fmt::Debug + Send + 'static> Status for S {}

/// The pure work queue: per-object desired status, state and back-off.
#[derive(Debug)]
pub struct StatusQueue<S> {
    entries: BTreeMap<String, Entry<S>>,
    backoff: Backoff,
}

impl<S: Status> StatusQueue<S> {
    /// An empty queue.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            entries: BTreeMap::new(),
            backoff,
        }
    }

    /// Notes `name`'s computed status and its object as last seen (its
    /// status and resourceVersion). Schedules a write when the status is
    /// new, or when a rejected one may now pass because the object changed.
    pub fn observe(
        &mut self,
        name: &str,
        desired: &S,
        current: Option<&S>,
        version: Option<&str>,
        now: Instant,
    ) {
        let Some(e) = self.entries.get_mut(name) else {
            let state = if current == Some(desired) {
                State::Clean
            } else {
                State::Due(now)
            };
            self.entries.insert(
                name.to_owned(),
                Entry {
                    desired: desired.clone(),
                    version: version.map(str::to_owned),
                    state,
                    failures: 0,
                    rejected: None,
                    last_warn: None,
                    not_logged: 0,
                },
            );
            return;
        };
        let desired_changed = &e.desired != desired;
        let version_changed = e.version.as_deref() != version;
        if desired_changed {
            e.desired = desired.clone();
        }
        if version_changed {
            e.version = version.map(str::to_owned);
        }
        match &e.state {
            // Decided when the write completes.
            State::InFlight(_) => {}
            // Someone (another replica, or our own write echoed) put it there.
            _ if current == Some(&e.desired) => e.state = State::Clean,
            // We wrote it; the object may show a pruned copy. Never fight
            // over it: only a new desired status is written.
            State::Clean if desired_changed => e.state = State::Due(now),
            State::Clean => {}
            // Keep the schedule: a new status does not skip the back-off.
            State::Due(_) => {}
            State::Parked if desired_changed || version_changed => e.state = State::Due(now),
            State::Parked => {}
        }
    }

    /// Drops the entries of objects for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|name, _| keep(name));
    }

    /// When the next write is due (none in flight or parked count).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Due(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Takes the write due first (ties by name) if it is due by `now`,
    /// marking it in flight.
    pub fn pop_due(&mut self, now: Instant) -> Option<(String, S)> {
        let (name, e) = self
            .entries
            .iter_mut()
            .filter_map(|(n, e)| match e.state {
                State::Due(at) if at <= now => Some((at, n, e)),
                _ => None,
            })
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, n, e)| (n, e))?;
        e.state = State::InFlight(e.desired.clone());
        Some((name.clone(), e.desired.clone()))
    }

    /// Puts an in-flight write back as due now, not counting a failure
    /// (the writer changes how it writes and tries again).
    pub fn requeue(&mut self, name: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(name)
            && matches!(e.state, State::InFlight(_))
        {
            e.state = State::Due(now);
        }
    }

    /// Records the result of `name`'s in-flight write.
    pub fn complete(&mut self, name: &str, result: Result<(), Failure>, now: Instant) -> Outcome {
        let Some(e) = self.entries.get_mut(name) else {
            return Outcome::Forgotten;
        };
        let sent = match std::mem::replace(&mut e.state, State::Clean) {
            State::InFlight(sent) => sent,
            other => {
                e.state = other;
                return Outcome::Forgotten;
            }
        };
        let moved_on = e.desired != sent;
        match result {
            Ok(()) => {
                let after_failures = e.failures;
                e.failures = 0;
                e.rejected = None;
                e.last_warn = None;
                e.not_logged = 0;
                e.state = if moved_on {
                    State::Due(now)
                } else {
                    State::Clean
                };
                Outcome::Written { after_failures }
            }
            Err(Failure::NotFound) => {
                self.entries.remove(name);
                Outcome::Gone
            }
            Err(Failure::Retryable(_)) => {
                e.failures = e.failures.saturating_add(1);
                let delay = self.backoff.delay(e.failures);
                e.state = State::Due(now + delay);
                let warn = match e.last_warn {
                    Some(t) if now.duration_since(t) < LOG_EVERY => {
                        e.not_logged += 1;
                        None
                    }
                    _ => {
                        let n = e.not_logged;
                        e.last_warn = Some(now);
                        e.not_logged = 0;
                        Some(n)
                    }
                };
                Outcome::Retrying {
                    failures: e.failures,
                    delay,
                    warn,
                }
            }
            Err(Failure::Permanent(msg)) => {
                e.failures = 0;
                e.state = if moved_on {
                    State::Due(now)
                } else {
                    State::Parked
                };
                let first = e.rejected.as_deref() != Some(msg.as_str());
                e.rejected = Some(msg);
                Outcome::Rejected { first }
            }
        }
    }

    /// Objects whose status on the server is not (known to be) the
    /// computed one: due, backing off, in flight or rejected.
    pub fn stale(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.state != State::Clean)
            .count()
    }
}

/// How a status is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Server-side apply with [`FIELD_MANAGER`], forced.
    Apply,
    /// A JSON merge patch of `.status`, for API servers that reject
    /// server-side apply on the status subresource (415).
    Merge,
}

/// Where statuses of one kind go.
pub trait Sink<S>: Send + 'static {
    /// The kind's resource as RBAC names it, e.g. `upstreams` (for logs).
    fn resource(&self) -> &'static str;

    /// Writes `status` as the status of the object `name` (its key in the
    /// queue).
    fn write(
        &self,
        name: String,
        status: S,
        method: Method,
    ) -> BoxFuture<'static, Result<(), kube::Error>>;
}

impl Sink<UpstreamStatus> for Api<Upstream> {
    fn resource(&self) -> &'static str {
        "upstreams"
    }

    fn write(
        &self,
        name: String,
        status: UpstreamStatus,
        method: Method,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        let api = self.clone();
        Box::pin(async move {
            match method {
                Method::Apply => {
                    let patch = serde_json::json!({
                        "apiVersion": "roundhouse.dev/v1alpha1",
                        "kind": "Upstream",
                        "status": status,
                    });
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    api.patch_status(&name, &params, &Patch::Apply(&patch))
                        .await?;
                }
                Method::Merge => {
                    let patch = serde_json::json!({ "status": status });
                    let params = PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PatchParams::default()
                    };
                    api.patch_status(&name, &params, &Patch::Merge(&patch))
                        .await?;
                }
            }
            Ok(())
        })
    }
}

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The client or the server said no.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

struct Done {
    name: String,
    method: Method,
    result: Result<(), WriteError>,
}

/// Logs an event about one object: Upstreams keep their `upstream=NAME`
/// field (dashboards and tests read it), other kinds say
/// `resource=… object=KEY`.
macro_rules! log {
    ($level:ident, $resource:expr, $name:expr, $($rest:tt)+) => {
        if $resource == "upstreams" {
            $level!(upstream = %$name, $($rest)+)
        } else {
            $level!(resource = $resource, object = %$name, $($rest)+)
        }
    };
}

/// Drives a [`StatusQueue`] against a [`Sink`].
pub struct StatusWriter<K, S> {
    sink: K,
    queue: StatusQueue<S>,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
    method: Method,
    metrics: DiscoveryMetrics,
    timeout: Duration,
    /// This writer's share of the `status_stale` gauge (several writers,
    /// one per kind, add to it).
    stale: i64,
}

impl<K, S: std::fmt::Debug> std::fmt::Debug for StatusWriter<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("queue", &self.queue)
            .field("in_flight", &self.in_flight.len())
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl<K: Sink<S>, S: Status> StatusWriter<K, S> {
    /// A writer to `sink`, reporting to `metrics`.
    pub fn new(sink: K, metrics: DiscoveryMetrics) -> Self {
        Self {
            sink,
            queue: StatusQueue::new(backoff::STATUS),
            in_flight: FuturesUnordered::new(),
            method: Method::Apply,
            metrics,
            timeout: WRITE_TIMEOUT,
            stale: 0,
        }
    }

    /// Sets the per-write deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// See [`StatusQueue::observe`]; call [`StatusWriter::dispatch`] after a
    /// batch of these.
    pub fn observe(&mut self, name: &str, desired: &S, current: Option<&S>, version: Option<&str>) {
        self.queue
            .observe(name, desired, current, version, Instant::now());
    }

    /// Drops the entries of objects for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.queue.retain(keep);
    }

    /// Objects whose status is not (known to be) written.
    pub fn stale(&self) -> usize {
        self.queue.stale()
    }

    /// Starts the writes that are due, up to [`CONCURRENCY`] in flight.
    pub fn dispatch(&mut self) {
        let now = Instant::now();
        while self.in_flight.len() < CONCURRENCY {
            let Some((name, status)) = self.queue.pop_due(now) else {
                break;
            };
            let method = self.method;
            let write = self.sink.write(name.clone(), status, method);
            let timeout = self.timeout;
            self.in_flight.push(Box::pin(async move {
                let result = match tokio::time::timeout(timeout, write).await {
                    Ok(r) => r.map_err(WriteError::Api),
                    Err(_) => Err(WriteError::Timeout(timeout)),
                };
                Done {
                    name,
                    method,
                    result,
                }
            }));
        }
        let stale = self.queue.stale() as i64;
        self.metrics.status_stale.inc_by(stale - self.stale);
        self.stale = stale;
    }

    /// Waits for a write to finish or to fall due, handles it and starts
    /// what is due. Cancel-safe (for `select!`); pends forever when idle.
    pub async fn step(&mut self) {
        let due = if self.in_flight.len() < CONCURRENCY {
            self.queue.next_due()
        } else {
            None
        };
        tokio::select! {
            Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => self.finish(done),
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            else => std::future::pending::<()>().await,
        }
        self.dispatch();
    }

    /// Writes what is due and waits for the writes in flight, for at most
    /// `within` (at shutdown). Writes backing off are left.
    pub async fn flush(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                self.dispatch();
                let due_now = self.queue.next_due().is_some_and(|t| t <= Instant::now());
                if self.in_flight.is_empty() && !due_now {
                    return;
                }
                self.step().await;
            }
        })
        .await;
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .status_writes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn finish(&mut self, done: Done) {
        let now = Instant::now();
        let resource = self.sink.resource();
        let Done {
            name,
            method,
            result,
        } = done;
        if let Err(WriteError::Api(kube::Error::Api(s))) = &result
            && s.code == 415
            && method == Method::Apply
        {
            self.count("permanent_error");
            if self.method == Method::Apply {
                self.method = Method::Merge;
                let error = format!("{} {}: {}", s.code, s.reason, s.message);
                log!(
                    warn,
                    resource,
                    name,
                    error = %error,
                    "the API server does not take server-side apply on {resource}/status; \
                     writing statuses as JSON merge patches from now on"
                );
            }
            self.queue.requeue(&name, now);
            return;
        }
        let (result, label) = match &result {
            Ok(()) => (Ok(()), "ok"),
            Err(e) => {
                let f = match e {
                    WriteError::Api(k) => classify(k),
                    WriteError::Timeout(_) => Failure::Retryable(e.to_string()),
                };
                let label = match f {
                    Failure::Retryable(_) => "retryable_error",
                    Failure::Permanent(_) => "permanent_error",
                    Failure::NotFound => "not_found",
                };
                (Err(f), label)
            }
        };
        self.count(label);
        let message = match &result {
            Err(Failure::Retryable(m) | Failure::Permanent(m)) => m.clone(),
            _ => String::new(),
        };
        match self.queue.complete(&name, result, now) {
            Outcome::Written { after_failures: 0 } => {
                log!(debug, resource, name, "status written")
            }
            Outcome::Written { after_failures } => log!(
                info,
                resource,
                name,
                failures = after_failures,
                "status written after failed attempts"
            ),
            Outcome::Gone => log!(debug, resource, name, "object gone; status dropped"),
            Outcome::Forgotten => log!(
                debug,
                resource,
                name,
                "status write finished after the object left"
            ),
            Outcome::Retrying {
                failures,
                delay,
                warn: Some(not_logged),
            } => log!(
                warn,
                resource,
                name,
                error = %message,
                failures,
                retry_in_ms = delay.as_millis() as u64,
                not_logged,
                "cannot write status; retrying with back-off"
            ),
            Outcome::Retrying {
                failures, delay, ..
            } => log!(
                debug,
                resource,
                name,
                error = %message,
                failures,
                retry_in_ms = delay.as_millis() as u64,
                "cannot write status; retrying with back-off"
            ),
            Outcome::Rejected { first: true } => log!(
                warn,
                resource,
                name,
                error = %message,
                "the API server rejected the status; not retrying until the object or its inputs change"
            ),
            Outcome::Rejected { first: false } => log!(
                debug,
                resource,
                name,
                error = %message,
                "status rejected again (same error)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    fn status(ready: u32) -> UpstreamStatus {
        UpstreamStatus {
            ready_endpoints: ready,
            ready: Some(format!("{ready}/{ready}")),
            ..UpstreamStatus::default()
        }
    }

    fn queue() -> StatusQueue<UpstreamStatus> {
        StatusQueue::new(backoff::STATUS)
    }

    fn retryable() -> Result<(), Failure> {
        Err(Failure::Retryable("503 ServiceUnavailable: busy".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn written_or_already_there_is_clean_and_latest_wins() {
        let mut q = queue();
        let now = Instant::now();
        q.observe("a", &status(1), Some(&status(1)), Some("1"), now);
        assert_eq!(
            (q.stale(), q.pop_due(now)),
            (0, None),
            "already on the object"
        );
        q.observe("b", &status(1), None, Some("1"), now);
        assert_eq!(q.stale(), 1);
        let (name, sent) = q.pop_due(now).unwrap();
        assert_eq!((name.as_str(), &sent), ("b", &status(1)));
        // A newer status arrives while the first is in flight: written next.
        q.observe("b", &status(2), None, Some("1"), now);
        assert_eq!(q.pop_due(now), None, "one write per object at a time");
        assert_eq!(
            q.complete("b", Ok(()), now),
            Outcome::Written { after_failures: 0 }
        );
        assert_eq!(q.pop_due(now).unwrap().1, status(2));
        q.complete("b", Ok(()), now);
        assert_eq!(q.stale(), 0);
        // The server shows a pruned copy: not written again...
        let mut pruned = status(2);
        pruned.ready = None;
        q.observe("b", &status(2), Some(&pruned), Some("3"), now);
        assert_eq!((q.stale(), q.pop_due(now)), (0, None));
        // ...until the computed status changes.
        q.observe("b", &status(3), Some(&pruned), Some("3"), now);
        assert_eq!(q.pop_due(now).unwrap().1, status(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_object_backs_off_alone() {
        let mut q = queue();
        let t0 = Instant::now();
        for name in ["a-fails", "b", "c", "d"] {
            q.observe(name, &status(1), None, Some("1"), t0);
        }
        let first = q.pop_due(t0).unwrap().0;
        assert_eq!(first, "a-fails", "ties go by name");
        let out = q.complete("a-fails", retryable(), t0);
        assert_eq!(
            out,
            Outcome::Retrying {
                failures: 1,
                delay: Duration::from_millis(500),
                warn: Some(0)
            }
        );
        // The others are due now, the failing one only after its back-off.
        let next: Vec<String> = std::iter::from_fn(|| q.pop_due(t0).map(|x| x.0)).collect();
        assert_eq!(next, ["b", "c", "d"]);
        for n in &next {
            q.complete(n, Ok(()), t0);
        }
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(500)));
        // Its delays double to the ceiling; a new status does not skip them.
        let mut t;
        let mut delays = Vec::new();
        for _ in 0..9 {
            t = q.next_due().unwrap();
            q.observe("a-fails", &status(7), None, Some("1"), t);
            assert_eq!(q.pop_due(t).unwrap().0, "a-fails");
            match q.complete("a-fails", retryable(), t) {
                Outcome::Retrying { delay, .. } => delays.push(delay.as_secs_f64()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
        assert_eq!(q.stale(), 1);
        // Success resets the back-off.
        t = q.next_due().unwrap();
        q.pop_due(t);
        assert_eq!(
            q.complete("a-fails", Ok(()), t),
            Outcome::Written { after_failures: 10 }
        );
        q.observe("a-fails", &status(8), None, Some("2"), t);
        q.pop_due(t);
        assert!(matches!(
            q.complete("a-fails", retryable(), t),
            Outcome::Retrying { failures: 1, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_warn_once_a_minute() {
        let mut q = queue();
        let t0 = Instant::now();
        q.observe("a", &status(1), None, None, t0);
        let mut warns = Vec::new();
        // Ten minutes of failures, retried as soon as due.
        while let Some(t) = q.next_due().filter(|t| *t < t0 + Duration::from_secs(600)) {
            q.pop_due(t).unwrap();
            if let Outcome::Retrying { warn: Some(n), .. } = q.complete("a", retryable(), t) {
                warns.push(((t - t0).as_secs(), n));
            }
        }
        // Attempts at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 63.5, then every 60 s.
        assert_eq!(
            warns,
            [
                (0, 0),
                (63, 6),
                (123, 0),
                (183, 0),
                (243, 0),
                (303, 0),
                (363, 0),
                (423, 0),
                (483, 0),
                (543, 0)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_park_until_the_object_or_status_changes_and_log_once() {
        let mut q = queue();
        let t0 = Instant::now();
        let denied = || Err(Failure::Permanent("422 Invalid: denied by webhook".into()));
        q.observe("a", &status(1), None, Some("1"), t0);
        q.pop_due(t0).unwrap();
        assert_eq!(
            q.complete("a", denied(), t0),
            Outcome::Rejected { first: true }
        );
        assert_eq!((q.next_due(), q.stale()), (None, 1), "parked, still stale");
        // Re-observing the same inputs does not retry.
        q.observe(
            "a",
            &status(1),
            None,
            Some("1"),
            t0 + Duration::from_secs(3600),
        );
        assert_eq!(q.next_due(), None);
        // The object changed (new resourceVersion): one new attempt.
        let t1 = t0 + Duration::from_secs(7200);
        q.observe("a", &status(1), None, Some("2"), t1);
        assert_eq!(q.pop_due(t1).unwrap().0, "a");
        assert_eq!(
            q.complete("a", denied(), t1),
            Outcome::Rejected { first: false },
            "same message: not logged again"
        );
        // New inputs (a new status): another attempt, a new message is logged.
        q.observe("a", &status(2), None, Some("2"), t1);
        q.pop_due(t1).unwrap();
        assert_eq!(
            q.complete("a", Err(Failure::Permanent("403 Forbidden: no".into())), t1),
            Outcome::Rejected { first: true }
        );
        // Gone: dropped.
        q.observe("a", &status(3), None, Some("3"), t1);
        q.pop_due(t1).unwrap();
        assert_eq!(q.complete("a", Err(Failure::NotFound), t1), Outcome::Gone);
        assert_eq!(q.stale(), 0);
    }

    #[test]
    fn classification() {
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("msg", "Reason")
                    .with_code(code)
                    .boxed(),
            )
        };
        for code in [408, 409, 425, 429, 500, 503, 504] {
            assert!(
                matches!(classify(&api(code)), Failure::Retryable(_)),
                "{code}"
            );
        }
        for code in [400, 403, 415, 422] {
            assert!(
                matches!(classify(&api(code)), Failure::Permanent(_)),
                "{code}"
            );
        }
        assert_eq!(classify(&api(404)), Failure::NotFound);
        assert_eq!(
            classify(&api(422)),
            Failure::Permanent("422 Reason: msg".into()),
            "the server's code, reason and message"
        );
        let io = kube::Error::ReadEvents(std::io::Error::other("reset"));
        assert!(matches!(classify(&io), Failure::Retryable(_)));
    }

    /// A sink that answers per object from a script and records attempts
    /// with their (virtual) times.
    #[derive(Clone, Default)]
    struct Scripted {
        /// name → answers, used in order; the last one repeats.
        answers: Arc<Mutex<HashMap<String, Vec<Answer>>>>,
        attempts: Arc<Mutex<Vec<(String, Method, Duration)>>>,
        t0: Arc<Mutex<Option<Instant>>>,
    }

    #[derive(Clone, Debug)]
    enum Answer {
        Ok,
        Code(u16),
        Hang,
    }

    impl Scripted {
        fn answer(&self, name: &str, answers: Vec<Answer>) {
            self.answers.lock().unwrap().insert(name.into(), answers);
        }
        fn attempts(&self, name: &str) -> Vec<(Method, Duration)> {
            self.attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.0 == name)
                .map(|a| (a.1, a.2))
                .collect()
        }
    }

    impl Sink<UpstreamStatus> for Scripted {
        fn resource(&self) -> &'static str {
            "upstreams"
        }

        fn write(
            &self,
            name: String,
            _status: UpstreamStatus,
            method: Method,
        ) -> BoxFuture<'static, Result<(), kube::Error>> {
            let t0 = *self.t0.lock().unwrap().get_or_insert_with(Instant::now);
            self.attempts
                .lock()
                .unwrap()
                .push((name.clone(), method, t0.elapsed()));
            let answer = {
                let mut answers = self.answers.lock().unwrap();
                match answers.get_mut(&name) {
                    Some(list) if list.len() > 1 => list.remove(0),
                    Some(list) => list[0].clone(),
                    None => Answer::Ok,
                }
            };
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                match answer {
                    Answer::Ok => Ok(()),
                    Answer::Code(code) => Err(kube::Error::Api(
                        kube::core::Status::failure("scripted", "Scripted")
                            .with_code(code)
                            .boxed(),
                    )),
                    Answer::Hang => std::future::pending().await,
                }
            })
        }
    }

    fn writes(m: &DiscoveryMetrics, result: &'static str) -> u64 {
        m.status_writes
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// Runs the writer for `d` of virtual time.
    async fn run_for<K: Sink<UpstreamStatus>>(
        w: &mut StatusWriter<K, UpstreamStatus>,
        d: Duration,
    ) {
        let _ = tokio::time::timeout(d, async {
            loop {
                w.step().await;
            }
        })
        .await;
    }

    /// One object rejected forever (422), one whose writes hang: the other
    /// three are written at once; the rejected one is tried once.
    #[tokio::test(start_paused = true)]
    async fn failing_and_hanging_objects_do_not_delay_the_others() {
        let sink = Scripted::default();
        sink.answer("backend", vec![Answer::Code(422)]);
        sink.answer("hangs", vec![Answer::Hang]);
        let metrics = DiscoveryMetrics::default();
        let mut w =
            StatusWriter::new(sink.clone(), metrics.clone()).with_timeout(Duration::from_secs(2));
        for name in ["backend", "bad-port", "date", "hangs", "zeta"] {
            w.observe(name, &status(1), None, Some("1"));
        }
        w.dispatch();
        run_for(&mut w, Duration::from_secs(1)).await;
        for name in ["bad-port", "date", "zeta"] {
            let a = sink.attempts(name);
            assert_eq!(a.len(), 1, "{name}: {a:?}");
            assert!(
                a[0].1 < Duration::from_millis(100),
                "{name} written at {:?}",
                a[0].1
            );
        }
        assert_eq!(writes(&metrics, "ok"), 3);
        assert_eq!(writes(&metrics, "permanent_error"), 1);
        assert_eq!(metrics.status_stale.get(), 2, "backend and hangs");
        // A minute later: the rejected one was not retried; the hanging one
        // timed out and was retried with back-off (2 s timeout each).
        run_for(&mut w, Duration::from_secs(60)).await;
        assert_eq!(sink.attempts("backend").len(), 1);
        let hangs: Vec<u64> = sink
            .attempts("hangs")
            .iter()
            .map(|a| a.1.as_millis() as u64)
            .collect();
        assert_eq!(hangs, [0, 2500, 5500, 9500, 15500, 25500, 43500]);
        assert_eq!(
            writes(&metrics, "retryable_error"),
            7,
            "the 7th timed out at 45.5 s"
        );
        // The server recovers: written at the next attempt.
        sink.answer("hangs", vec![Answer::Ok]);
        run_for(&mut w, Duration::from_secs(40)).await;
        assert_eq!(sink.attempts("hangs").len(), 8);
        assert_eq!(metrics.status_stale.get(), 1, "only the rejected one");
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_and_server_errors_are_retried_with_back_off() {
        let sink = Scripted::default();
        sink.answer(
            "a",
            vec![
                Answer::Code(409),
                Answer::Code(500),
                Answer::Code(429),
                Answer::Ok,
            ],
        );
        let metrics = DiscoveryMetrics::default();
        let mut w = StatusWriter::new(sink.clone(), metrics.clone());
        w.observe("a", &status(1), None, Some("1"));
        w.dispatch();
        run_for(&mut w, Duration::from_secs(10)).await;
        let times: Vec<u64> = sink
            .attempts("a")
            .iter()
            .map(|a| a.1.as_millis() as u64)
            .collect();
        // Each answer takes 5 ms; back-off 0.5, 1, 2 s.
        assert_eq!(times, [0, 505, 1510, 3515]);
        assert_eq!(
            (writes(&metrics, "retryable_error"), writes(&metrics, "ok")),
            (3, 1)
        );
        assert_eq!(metrics.status_stale.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn falls_back_to_merge_patch_when_apply_is_rejected() {
        let sink = Scripted::default();
        sink.answer("a", vec![Answer::Code(415), Answer::Ok]);
        let metrics = DiscoveryMetrics::default();
        let mut w = StatusWriter::new(sink.clone(), metrics.clone());
        w.observe("a", &status(1), None, Some("1"));
        w.dispatch();
        run_for(&mut w, Duration::from_secs(1)).await;
        w.observe("b", &status(1), None, Some("1"));
        w.dispatch();
        run_for(&mut w, Duration::from_secs(1)).await;
        let methods: Vec<Method> = sink.attempts("a").iter().map(|a| a.0).collect();
        assert_eq!(
            methods,
            [Method::Apply, Method::Merge],
            "retried at once as a merge patch"
        );
        assert_eq!(
            sink.attempts("b")[0].0,
            Method::Merge,
            "and every write after it"
        );
        assert_eq!(metrics.status_stale.get(), 0);
    }

    /// Writers of several kinds share the stale gauge: each adds its own share.
    #[tokio::test(start_paused = true)]
    async fn writers_of_several_kinds_add_up_in_the_stale_gauge() {
        let metrics = DiscoveryMetrics::default();
        let one = Scripted::default();
        one.answer("a", vec![Answer::Code(422)]);
        let two = Scripted::default();
        two.answer("b", vec![Answer::Code(422)]);
        two.answer("c", vec![Answer::Code(422)]);
        let mut w1 = StatusWriter::new(one, metrics.clone());
        let mut w2 = StatusWriter::new(two.clone(), metrics.clone());
        w1.observe("a", &status(1), None, Some("1"));
        w2.observe("b", &status(1), None, Some("1"));
        w2.observe("c", &status(1), None, Some("1"));
        w1.dispatch();
        w2.dispatch();
        run_for(&mut w1, Duration::from_secs(1)).await;
        run_for(&mut w2, Duration::from_secs(1)).await;
        assert_eq!((w1.stale(), w2.stale()), (1, 2));
        assert_eq!(metrics.status_stale.get(), 3);
        // `c` passes now; its entry is retained, `b` is dropped.
        two.answer("c", vec![Answer::Ok]);
        w2.retain(|n| n == "c");
        w2.observe("c", &status(2), None, Some("2"));
        w2.dispatch();
        run_for(&mut w2, Duration::from_secs(1)).await;
        assert_eq!(metrics.status_stale.get(), 1, "only w1's rejected one");
    }
}

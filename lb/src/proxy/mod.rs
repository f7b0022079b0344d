//! The data plane: accepting clients and forwarding their requests.
//!
//! Layout: one single-threaded Tokio runtime per worker thread, each with
//! its own `SO_REUSEPORT` listener and its own upstream connection pools, so
//! requests never cross threads and no pool lock is shared. Selection is
//! global (one atomic cursor per upstream), so round-robin stays exact
//! whichever worker accepted the connection.
//!
//! Layout of the engine: the policy is in one place, the attempt core
//! ([`attempt`]: route, pick, connect or check out, send, classify, retry
//! or answer with one of the [`local`] responses), and each protocol is a
//! transport around it. Every client connection starts on the HTTP/1.1
//! fast path ([`fast`], raw bytes); a request it does not take (a body, an
//! upgrade, anything unusual) moves the connection to the general hyper
//! path (`general.rs`) for good. Both send upstream on connections from the
//! worker's one pool ([`upstream`]) and rewrite headers by one table
//! ([`headers`]). A new protocol plugs in as a client transport that calls
//! `Worker::decide` and `Worker::forward` with an upstream transport
//! implementing `attempt::Transport` (crate-internal; described in
//! [`attempt`]).

pub mod access_log;
pub mod attempt;
pub mod body;
mod buffers;
mod conn;
mod drain;
pub mod fast;
pub mod filters;
mod general;
mod grpc;
pub mod h2;
pub mod headers;
pub mod local;
mod park;
mod rewind;
pub mod stream;
mod throttle;
mod timer;
pub mod tls;
pub mod upstream;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use http::HeaderValue;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use attempt::{FailureKind, is_idempotent, may_retry};

use self::throttle::Throttle;
use self::upstream::Pool;
use crate::metrics::Metrics;
use crate::selection::{Balancer, RoutingTable};

/// Data-plane settings (the `lb serve` flags).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Worker threads (one runtime and listener each).
    pub workers: usize,
    /// Time a client has to send a complete request head; hyper also applies
    /// it to the idle time between requests on a keep-alive connection.
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers), in bytes; beyond → 431.
    pub max_header_bytes: usize,
    /// Most request headers; beyond → 431.
    pub max_headers: usize,
    /// Largest request body, if limited; beyond → 413.
    pub max_body_bytes: Option<u64>,
    /// Idle upstream connections are closed after this; keep it below the
    /// backends' keep-alive timeout.
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint and worker.
    pub upstream_max_idle: usize,
    /// A plain HTTP/1.1 client connection idle this long leaves its task
    /// and waits in the worker's table of parked connections (`park`), at a
    /// tenth of the memory (default 1 s); zero: never (it waits in its task
    /// until the header-read timeout).
    pub idle_park_after: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Replaces the `Host` header sent upstream (default: keep the client's).
    pub host_override: Option<HeaderValue>,
    /// Most simultaneous client connections (all workers); beyond, new
    /// connections get a 503 and are closed.
    pub max_connections: usize,
    /// Serve plain bodiless HTTP/1.1 requests on the fast path (`fast`);
    /// when false every request takes the general (hyper) path.
    pub fast_path: bool,
    /// Most concurrent streams on one client HTTP/2 connection.
    pub h2_max_streams: u32,
    /// Time a client has to complete a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Answer every request on the plain listener with a redirect to
    /// HTTPS on this port (`--https-redirect`); `None`: proxy it.
    pub https_redirect: Option<u16>,
    /// Where access log lines go (`--access-log`); `None`: no access log.
    pub access_log: Option<access_log::Target>,
    /// The access log's line format (`--access-log-format`).
    pub access_log_format: access_log::Format,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            upstream_idle_timeout: Duration::from_secs(4),
            upstream_max_idle: 256,
            idle_park_after: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(20),
            host_override: None,
            max_connections: 10_000,
            fast_path: true,
            h2_max_streams: 100,
            tls_handshake_timeout: Duration::from_secs(10),
            https_redirect: None,
            access_log: None,
            access_log_format: access_log::Format::Json,
        }
    }
}

/// Most concurrent requests on one HTTP/2 connection to an endpoint (a
/// worker opens another connection beyond it).
const UPSTREAM_H2_STREAMS: usize = 100;

/// State shared by all workers.
pub(crate) struct Shared {
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: ProxyConfig,
    pub(crate) host_override: Option<HeaderValue>,
    connections: AtomicUsize,
    /// TLS for the TLS listener, when there is one.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(
        balancer: Arc<Balancer>,
        config: ProxyConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Self {
            metrics: balancer.metrics().clone(),
            balancer,
            host_override: config.host_override.clone(),
            config,
            connections: AtomicUsize::new(0),
            tls: tls.map(conn::acceptor),
        }
    }
}

/// One worker thread's state.
pub(crate) struct Worker {
    /// Index, for per-worker metric shards.
    pub(crate) id: usize,
    pub(crate) shared: Arc<Shared>,
    /// This worker's handle on the current routing table: cloning the `Rc`
    /// per request touches no cache line another core writes.
    #[allow(
        clippy::redundant_allocation,
        reason = "the Rc is per worker so a clone does not write the shared Arc's count"
    )]
    table: RefCell<(u64, Rc<Arc<RoutingTable>>)>,
    /// This worker's upstream connections (both paths).
    pub(crate) pool: Rc<Pool>,
    /// Its HTTP/2 connections to `h2c` endpoints.
    pub(crate) h2_pool: Rc<h2::upstream::H2Pool>,
    /// The general (hyper) path's client side.
    pub(crate) client: general::Client,
    /// This worker's side of the access log (off when the log is). It is
    /// dropped (and so handed over) when the worker's thread ends.
    pub(crate) log: access_log::Log,
    /// Rate limit of the "connection limit reached" warning.
    pub(crate) limit_warn: RefCell<Throttle>,
    /// Where idle plain connections are parked (`None`: parking is off).
    pub(crate) parking: Option<park::Parking>,
}

impl Worker {
    /// Worker `id`'s state: an empty pool, the current table.
    fn new(
        id: usize,
        shared: Arc<Shared>,
        log: Option<access_log::WorkerLog>,
        parking: Option<park::Parking>,
    ) -> Self {
        let client = general::Client::new(shared.metrics.clone());
        Self {
            id,
            table: RefCell::new((
                shared.balancer.version(),
                Rc::new(shared.balancer.snapshot()),
            )),
            pool: Pool::new(
                shared.config.upstream_max_idle,
                shared.config.upstream_idle_timeout,
            ),
            h2_pool: Rc::new(h2::upstream::H2Pool::new(UPSTREAM_H2_STREAMS)),
            shared,
            client,
            log: access_log::Log::new(log),
            limit_warn: RefCell::new(Throttle::new(throttle::WARN_EVERY)),
            parking,
        }
    }

    /// The current routing table, re-read only when its version changed.
    #[inline]
    #[allow(clippy::redundant_allocation, reason = "see Worker::table")]
    pub(crate) fn table(&self) -> Rc<Arc<RoutingTable>> {
        let version = self.shared.balancer.version();
        let mut cached = self.table.borrow_mut();
        if cached.0 != version {
            *cached = (version, Rc::new(self.shared.balancer.snapshot()));
        }
        cached.1.clone()
    }
}

/// Waits until every task `tracker` tracks has finished (the tracker is
/// closed) or `deadline` has passed; false when the deadline cut it short.
async fn drain_within(tracker: &TaskTracker, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, tracker.wait()).await.is_ok()
}

/// Binds `count` listeners on `addr` with `SO_REUSEPORT`, so the kernel
/// spreads connections across workers. If `addr` has port 0 the first bind
/// picks a port and the others share it.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// A running data plane.
#[derive(Debug)]
pub struct ProxyHandle {
    threads: Vec<thread::JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl ProxyHandle {
    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until every worker has drained and stopped (after `shutdown`
    /// was cancelled). Call from a blocking context.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Awaits the workers from async code.
    pub async fn wait(self) {
        let _ = tokio::task::spawn_blocking(move || self.join()).await;
    }
}

/// The listeners the data plane serves: one plain and, with TLS, one TLS
/// listener per worker (all `SO_REUSEPORT`).
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP (HTTP/1.1, and h2c with prior knowledge).
    pub plain: Vec<std::net::TcpListener>,
    /// TLS (HTTP/1.1 and HTTP/2 by ALPN), with its server configuration.
    pub tls: Option<(Vec<std::net::TcpListener>, Arc<rustls::ServerConfig>)>,
}

/// Starts one worker thread per plain listener. Workers stop accepting when
/// `shutdown` is cancelled and drain in-flight requests for up to
/// `config.shutdown_timeout`. With `access_log`, each worker gets its own
/// [`access_log::WorkerLog`]; they are all dropped (their lines handed over)
/// once [`ProxyHandle::wait`] returns, so [`access_log::AccessLog::shutdown`]
/// may follow it.
pub fn start(
    listeners: Listeners,
    balancer: Arc<Balancer>,
    config: ProxyConfig,
    shutdown: CancellationToken,
    access_log: Option<&access_log::AccessLog>,
) -> io::Result<ProxyHandle> {
    let local_addr = listeners
        .plain
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener"))?
        .local_addr()?;
    let (tls_listeners, tls_config) = match listeners.tls {
        Some((l, c)) => (l, Some(c)),
        None => (Vec::new(), None),
    };
    let mut tls_listeners = tls_listeners.into_iter();
    let shared = Arc::new(Shared::new(balancer, config, tls_config));
    let mut threads = Vec::new();
    for (i, listener) in listeners.plain.into_iter().enumerate() {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let tls = tls_listeners.next();
        let log = access_log.map(|a| a.worker(i));
        let t = thread::Builder::new()
            .name(format!("lb-worker-{i}"))
            .spawn(move || {
                if let Err(e) = run_worker(i, listener, tls, shared, shutdown, log) {
                    error!(worker = i, error = %e, "worker failed");
                }
            })?;
        threads.push(t);
    }
    Ok(ProxyHandle {
        threads,
        local_addr,
    })
}

fn run_worker(
    id: usize,
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    log: Option<access_log::WorkerLog>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    // The worker runs as a task of its own rather than as the future
    // `block_on` drives: `LocalSet` polls that future again each time any
    // of its tasks is woken (twice per proxied request), and a handle is
    // cheap to poll where the accept loop's `select!` was not.
    let worker = local.spawn_local(serve_worker(
        id,
        listener,
        tls_listener,
        shared,
        shutdown,
        log,
    ));
    match local.block_on(&rt, worker) {
        Ok(done) => done,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(io::Error::other(e)),
        },
    }
}

/// Worker `id`'s accept loop and, once `shutdown` is cancelled, the drain
/// of its connections.
async fn serve_worker(
    id: usize,
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    log: Option<access_log::WorkerLog>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let tls_listener = tls_listener.map(TcpListener::from_std).transpose()?;
    let (parking, poller) = if shared.config.idle_park_after.is_zero() {
        (None, None)
    } else {
        match park::new(shared.metrics.parked_connections.clone()) {
            Ok((parking, poller)) => (Some(parking), Some(poller)),
            Err(e) => {
                warn!(error = %e, "cannot create the table for idle connections; they stay in their tasks");
                (None, None)
            }
        }
    };
    let worker = Rc::new(Worker::new(id, shared.clone(), log, parking));
    let servers = conn::Servers::new(&worker, shared.tls.clone());
    let sweeper = {
        let (pool, h2_pool) = (worker.pool.clone(), worker.h2_pool.clone());
        let every = (pool.idle_timeout() / 2).max(Duration::from_millis(100));
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                pool.sweep();
                h2_pool.sweep();
            }
        })
    };
    // A quiet worker's lines still reach the sink within about
    // FLUSH_INTERVAL.
    let flusher = worker.log.is_on().then(|| {
        let worker = worker.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(access_log::FLUSH_INTERVAL);
            loop {
                tick.tick().await;
                worker.log.flush_if_due();
            }
        })
    });
    let tracker = TaskTracker::new();
    let drain = drain::Drain::new();
    if let Some(poller) = poller {
        tracker.spawn_local(conn::run_parking(
            worker.clone(),
            servers.clone(),
            tracker.clone(),
            drain.clone(),
            poller,
        ));
    }
    let mut accept_warn = Throttle::new(throttle::WARN_EVERY);
    loop {
        let (accepted, tls) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => (r, false),
            r = accept_on(tls_listener.as_ref()) => (r, true),
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(c) = shared.metrics.accepted_connections.get(id) {
                    c.inc();
                }
                conn::accept(&worker, &servers, &tracker, &drain, stream, peer, tls);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the
                // connection waits in the backlog meanwhile.
                accept_failed(&shared, &mut accept_warn, &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    drop(tls_listener);
    tracker.close();
    let open = worker.parking.as_ref().map_or(tracker.len(), |p| {
        // The parking task is not a connection; its connections are.
        tracker.len().saturating_sub(1) + p.len()
    });
    drain.cancel();
    if open > 0 {
        info!(connections = open, "draining connections");
    }
    if !drain_within(&tracker, shared.config.shutdown_timeout).await {
        warn!(
            connections = tracker.len(),
            "shutdown deadline reached; closing remaining connections"
        );
    }
    sweeper.abort();
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    Ok(())
}

/// Counts a failed accept by reason and warns, at most once per
/// [`throttle::WARN_EVERY`] on this worker.
fn accept_failed(shared: &Shared, warn_limit: &mut Throttle, e: &io::Error) {
    let reason = accept_error_reason(e);
    shared.metrics.accept_error(reason);
    let Some(skipped) = warn_limit.hit(Instant::now()) else {
        debug!(
            reason,
            "accept failed again (warned at most once per period); backing off 50 ms"
        );
        return;
    };
    if reason == "fd_limit" {
        warn!(
            error = %e,
            fd_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            open_connections = shared.connections.load(Ordering::Relaxed),
            not_logged_since_last = skipped,
            "accept failed: file descriptor limit reached; backing off 50 ms (raise the hard RLIMIT_NOFILE or lower --max-connections)"
        );
    } else {
        warn!(error = %e, reason, not_logged_since_last = skipped, "accept failed; backing off 50 ms");
    }
}

/// The `reason` label of a failed accept: `fd_limit` (EMFILE, ENFILE),
/// `memory` (ENOBUFS, ENOMEM) or `other`.
fn accept_error_reason(e: &io::Error) -> &'static str {
    use rustix::io::Errno;
    match e.raw_os_error() {
        Some(n) if n == Errno::MFILE.raw_os_error() || n == Errno::NFILE.raw_os_error() => {
            "fd_limit"
        }
        Some(n) if n == Errno::NOBUFS.raw_os_error() || n == Errno::NOMEM.raw_os_error() => {
            "memory"
        }
        _ => "other",
    }
}

/// The next connection on `listener`; never, without one.
async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A worker over `balancer`, as a worker thread builds it.
    pub(crate) fn worker(balancer: Arc<Balancer>, config: ProxyConfig) -> Worker {
        Worker::new(0, Arc::new(Shared::new(balancer, config, None)), None, None)
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_connections_up_to_the_deadline() {
        let tracker = TaskTracker::new();
        let done = CancellationToken::new();
        let finish = done.clone();
        tracker.spawn(async move { finish.cancelled().await });
        tracker.close();
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            done.cancel();
        });
        assert!(drain_within(&tracker, Duration::from_secs(20)).await);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "done when the last one is"
        );

        let stuck = TaskTracker::new();
        stuck.spawn(std::future::pending::<()>());
        stuck.close();
        let start = tokio::time::Instant::now();
        assert!(!drain_within(&stuck, Duration::from_secs(20)).await);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(20),
            "cut at the deadline"
        );
    }
}

//! Test harness: in-process backends on 127.0.0.1 that can be killed, and
//! the LB started through the same `server::run` as production.

#![allow(dead_code, missing_docs)]

pub mod fake_api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use lb::discovery::{Discovery, EndpointSpec, Publisher, RoutingConfig, UpstreamConfig};
use lb::proxy::ProxyConfig;
use lb::selection::Policy;
use lb::server::{self, Bound, Running, Settings};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A backend on its own thread and runtime; `kill` drops the runtime, which
/// closes the listener and every connection at once, like a crashed process.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestBackend {
    /// The real backend service (`backend::app`) named `name`.
    pub fn start(name: &str) -> TestBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    /// Same, on a given address (to restart a killed backend in place).
    pub fn start_on(addr: SocketAddr, name: &str) -> TestBackend {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = backend::app(backend::AppState::new(name)).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    next.run(req).await
                }
            },
        ));
        Self::spawn(addr, name, hits, move |listener, stop| {
            async move {
                // No graceful shutdown: on stop, the serve future is dropped
                // and the runtime with it, like a crashed process.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    () = stop => {}
                }
            }
            .boxed()
        })
    }

    /// A custom hyper service.
    pub fn with_service<F, Fut>(name: &str, f: F) -> TestBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        Self::spawn(
            "127.0.0.1:0".parse().unwrap(),
            name,
            hits,
            move |listener, stop| {
                async move {
                    tokio::pin!(stop);
                    loop {
                        let (stream, _) = tokio::select! {
                            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                            () = &mut stop => return,
                        };
                        let f = f.clone();
                        let h = h.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                h.fetch_add(1, Ordering::Relaxed);
                                let f = f.clone();
                                async move { Ok::<_, Infallible>(f(req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        });
                    }
                }
                .boxed()
            },
        )
    }

    fn spawn(
        addr: SocketAddr,
        name: &str,
        hits: Arc<AtomicUsize>,
        serve: impl FnOnce(
            tokio::net::TcpListener,
            futures::future::BoxFuture<'static, ()>,
        ) -> futures::future::BoxFuture<'static, ()>
        + Send
        + 'static,
    ) -> TestBackend {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let std = bind_reuse(addr);
                let listener = tokio::net::TcpListener::from_std(std).unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stop = async move {
                    let _ = stop_rx.await;
                }
                .boxed();
                // Serve until told to stop; then return so the runtime is
                // dropped with every connection still open: a crash.
                serve(listener, stop).await;
            });
            rt.shutdown_background();
        });
        let addr = addr_rx.recv().unwrap();
        TestBackend {
            addr,
            name: name.to_owned(),
            hits,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Abrupt stop: listener and all connections closed at once.
    pub fn kill(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn spec(&self) -> EndpointSpec {
        EndpointSpec::new(self.addr).named(self.name.as_str())
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind_reuse(addr: SocketAddr) -> std::net::TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(1024).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

/// A discovery source driven by the test.
#[derive(Debug)]
pub struct ManualDiscovery(pub mpsc::UnboundedReceiver<RoutingConfig>);

impl Discovery for ManualDiscovery {
    fn run(
        self: Box<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> futures::future::BoxFuture<'static, ()> {
        let mut rx = self.0;
        Box::pin(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    cfg = rx.recv() => match cfg {
                        Some(cfg) => { publisher.publish(cfg, true); }
                        None => { shutdown.cancelled().await; return; }
                    }
                }
            }
        })
    }
}

pub fn routing(specs: Vec<EndpointSpec>) -> RoutingConfig {
    RoutingConfig {
        upstreams: vec![UpstreamConfig::catch_all("default", specs)],
    }
}

/// The LB, running on its own thread.
pub struct TestLb {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub running: Running,
    updates: mpsc::UnboundedSender<RoutingConfig>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

pub fn test_proxy_config() -> ProxyConfig {
    ProxyConfig {
        workers: 2,
        shutdown_timeout: Duration::from_secs(5),
        ..ProxyConfig::default()
    }
}

impl TestLb {
    pub fn start(initial: RoutingConfig) -> TestLb {
        Self::start_with(initial, test_proxy_config(), Policy::default())
    }

    pub fn start_with(initial: RoutingConfig, proxy: ProxyConfig, policy: Policy) -> TestLb {
        let (updates, rx) = mpsc::unbounded_channel();
        updates.send(initial).unwrap();
        let mut lb = Self::start_source(
            move || async move { Box::new(ManualDiscovery(rx)) as Box<dyn Discovery> }.boxed(),
            proxy,
            policy,
        );
        lb.updates = updates;
        lb.wait_version(1);
        lb
    }

    /// Starts the LB with a discovery source built inside its runtime
    /// (a kube Client must be created there).
    pub fn start_source(
        source: impl FnOnce() -> futures::future::BoxFuture<'static, Box<dyn Discovery>>
        + Send
        + 'static,
        proxy: ProxyConfig,
        policy: Policy,
    ) -> TestLb {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            proxy,
            policy,
            drain_delay: Duration::ZERO,
        };
        let bound = Bound::bind(&settings).unwrap();
        let (addr, admin) = (bound.proxy_addr(), bound.admin_addr());
        let (updates, _) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (running_tx, running_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let source = source().await;
                server::run(
                    settings,
                    bound,
                    source,
                    async move {
                        let _ = stop_rx.await;
                    },
                    move |r| running_tx.send(r).unwrap(),
                )
                .await
            })
        });
        let running = running_rx.recv().unwrap();
        TestLb {
            addr,
            admin,
            running,
            updates,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `cond` holds for the current routing table.
    pub async fn wait_table(
        &self,
        what: &str,
        cond: impl Fn(&lb::selection::RoutingTable) -> bool,
    ) {
        wait_until(what, || cond(&self.running.balancer.snapshot())).await;
    }

    /// Publishes a new endpoint set and waits until the table has it.
    pub fn update(&self, cfg: RoutingConfig) {
        let before = self.running.balancer.snapshot().version;
        self.updates.send(cfg).unwrap();
        self.wait_version(before + 1);
    }

    fn wait_version(&self, v: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.running.balancer.snapshot().version < v {
            assert!(
                std::time::Instant::now() < deadline,
                "routing table never reached version {v}"
            );
            thread::yield_now();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM equivalent; returns what `server::run` returned.
    pub fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long one step of a test may take before it counts as hung. Not a
/// performance bound: the behaviour under test takes milliseconds, and what
/// it rules out takes far longer or forever.
pub const HANG: Duration = Duration::from_secs(10);

/// `fut`, or a panic if it has not finished within `limit` (a hang guard).
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("hung: no result within {limit:?}"),
    }
}

/// Polls `cond` every millisecond for up to 10 s; panics naming `what`.
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Backends named `names` on 127.0.0.11, 127.0.0.12, … all on one port
/// (an EndpointSlice has one port for all its endpoints).
pub fn backends_on_one_port(names: &[&str]) -> Vec<TestBackend> {
    'retry: for _ in 0..20 {
        let first = TestBackend::start_on("127.0.0.11:0".parse().unwrap(), names[0]);
        let port = first.addr.port();
        let mut out = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", 11 + i).parse().unwrap();
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'retry;
            }
            out.push(TestBackend::start_on(addr, name));
        }
        return out;
    }
    panic!("no common free port");
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Conn {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn.with_upgrades());
        Ok(Conn { tx })
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, String), hyper::Error> {
        self.send(
            Request::get(path)
                .header("host", "test")
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, String), hyper::Error> {
        self.tx.ready().await?;
        let resp = self.tx.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// GET over a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    let mut c = Conn::open(addr).await.map_err(|e| e.to_string())?;
    c.get(path).await.map_err(|e| e.to_string())
}

pub fn empty_body() -> Empty<Bytes> {
    Empty::new()
}

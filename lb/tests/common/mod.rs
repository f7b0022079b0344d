//! Test harness: in-process backends on 127.0.0.1 that can be killed, and
//! the LB started through the same `server::run` as production.

#![allow(dead_code, missing_docs)]

pub mod fake_api;
pub mod sockets;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Bytes written to its sockets (counted by [`TestBackend::with_streaming`]
    /// backends only; 0 for the others).
    pub written: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestBackend {
    /// The real backend service (`backend::app`) named `name`.
    pub fn start(name: &str) -> TestBackend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    /// Same, on a given address (to restart a killed backend in place).
    /// The backend in echo mode: every path answers `backend::Echo` JSON
    /// (what it received, and `name`/`namespace`/pod).
    pub fn echo(name: &str, namespace: &str) -> TestBackend {
        let state = backend::AppState::new(name).echoing(backend::Identity {
            namespace: namespace.to_owned(),
            pod: String::new(),
        });
        Self::serve_app("127.0.0.1:0".parse().unwrap(), name, state)
    }

    pub fn start_on(addr: SocketAddr, name: &str) -> TestBackend {
        Self::serve_app(addr, name, backend::AppState::new(name))
    }

    fn serve_app(addr: SocketAddr, name: &str, state: backend::AppState) -> TestBackend {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = backend::app(state).layer(axum::middleware::from_fn(
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

    /// A backend whose answer to a path is `chunk` sent `times` times, as a
    /// stream (the chunk is shared, so the body costs no memory). Counts the
    /// bytes it writes in [`TestBackend::written`].
    pub fn with_streaming(name: &str, answer: fn(&str) -> (Bytes, usize)) -> TestBackend {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let mut backend = Self::spawn(
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
                        let h = h.clone();
                        let stream = sockets::Counted::new(stream, counter.clone());
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                                h.fetch_add(1, Ordering::Relaxed);
                                let (chunk, times) = answer(req.uri().path());
                                let frames = futures::stream::iter(
                                    std::iter::repeat_n(chunk, times)
                                        .map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(c))),
                                );
                                async move {
                                    Ok::<_, Infallible>(Response::new(
                                        http_body_util::StreamBody::new(frames),
                                    ))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
                .boxed()
            },
        );
        backend.written = written;
        backend
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
            written: Arc::new(AtomicU64::new(0)),
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
        routes: Vec::new(),
    }
}

/// The LB, running on its own thread.
pub struct TestLb {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when started with certificates.
    pub tls_addr: Option<SocketAddr>,
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
        Self::start_full(source, proxy, policy, None)
    }

    /// Like [`TestLb::start_with`], with a TLS listener serving `certs`.
    pub fn start_tls(
        initial: RoutingConfig,
        proxy: ProxyConfig,
        certs: std::sync::Arc<lb::proxy::tls::CertStore>,
    ) -> TestLb {
        let (updates, rx) = mpsc::unbounded_channel();
        updates.send(initial).unwrap();
        let tls = lb::server::TlsSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            certs,
        };
        let mut lb = Self::start_full(
            move || async move { Box::new(ManualDiscovery(rx)) as Box<dyn Discovery> }.boxed(),
            proxy,
            Policy::default(),
            Some(tls),
        );
        lb.updates = updates;
        lb.wait_version(1);
        lb
    }

    fn start_full(
        source: impl FnOnce() -> futures::future::BoxFuture<'static, Box<dyn Discovery>>
        + Send
        + 'static,
        proxy: ProxyConfig,
        policy: Policy,
        tls: Option<lb::server::TlsSettings>,
    ) -> TestLb {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            proxy,
            policy,
            drain_delay: Duration::ZERO,
            tls,
        };
        let bound = Bound::bind(&settings).unwrap();
        let (addr, admin) = (bound.proxy_addr(), bound.admin_addr());
        let tls_addr = bound.tls_addr();
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
            tls_addr,
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

    /// The value of one counter or gauge series (`name{labels}`, exactly as
    /// /metrics prints it). Panics if /metrics has no such series, or its
    /// value is not a whole number: a renamed metric or label must fail the
    /// test, not read as 0.
    pub fn counter(&self, series: &str) -> u64 {
        let text = self.running.balancer.metrics().encode();
        let prefix = format!("{series} ");
        let Some(value) = text.lines().find_map(|l| l.strip_prefix(prefix.as_str())) else {
            let name = series.split('{').next().unwrap_or(series);
            let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
            panic!("/metrics has no series {series}; series named {name}: {similar:?}");
        };
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{series} is {value:?}, not a whole number"))
    }

    /// Publishes a new endpoint set and waits until the table has it.
    pub fn update(&self, cfg: RoutingConfig) {
        let before = self.running.balancer.version();
        self.updates.send(cfg).unwrap();
        self.wait_version(before + 1);
    }

    /// Waits until table version `v` is published: the version the
    /// workers check before each request (`Balancer::version`, stored after
    /// the table itself), so a request sent next is routed by it. Waiting on
    /// the stored table instead let a request race the version's store and
    /// be routed by the previous table (a 404 in CI on a loaded machine).
    fn wait_version(&self, v: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.running.balancer.version() < v {
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

/// Runs hyper's HTTP/2 tasks on the test's runtime.
#[derive(Clone, Copy)]
pub struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// An HTTP/2 client connection (one "channel") over `io`.
pub async fn h2_client<I>(io: I) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http2::handshake(Exec, TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// An h2c client: HTTP/2 with prior knowledge over plain TCP.
pub async fn h2c_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    h2_client(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

/// Sends `req` on an HTTP/2 connection; returns status, body and trailers.
pub async fn h2_send(
    tx: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String, Option<http::HeaderMap>) {
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (parts.status, parts.headers, body, trailers)
}

/// A GET of `path` for an HTTP/2 connection (`:authority` test).
pub fn h2_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://test{path}"))
        .body(Full::default())
        .unwrap()
}

/// A backend speaking h2c only (HTTP/2 with prior knowledge), answering
/// every request with its name and, when `trailers`, the trailer
/// `grpc-status: 0`. Records each request's headers.
pub struct H2cBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2cBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2cBackend {
    pub async fn start(name: &str, trailers: bool) -> H2cBackend {
        Self::start_with(name, trailers, None).await
    }

    /// Same; with `hang`, requests to that path never get an answer.
    pub async fn start_with(name: &str, trailers: bool, hang: Option<&'static str>) -> H2cBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, s, n) = (hits.clone(), seen.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, s, n) = (h.clone(), s.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (h, s, n) = (h.clone(), s.clone(), n.clone());
                        async move {
                            h.fetch_add(1, Ordering::Relaxed);
                            s.lock().unwrap().push(req.headers().clone());
                            if Some(req.uri().path()) == hang {
                                std::future::pending::<()>().await;
                            }
                            let _ = req.into_body().collect().await;
                            let mut frames = vec![Ok::<_, Infallible>(hyper::body::Frame::data(
                                Bytes::from(format!("{n}\n")),
                            ))];
                            if trailers {
                                let mut t = http::HeaderMap::new();
                                t.insert("grpc-status", "0".parse().unwrap());
                                frames.push(Ok(hyper::body::Frame::trailers(t)));
                            }
                            let body =
                                http_body_util::StreamBody::new(futures::stream::iter(frames));
                            Ok::<_, Infallible>(Response::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(Exec)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        H2cBackend {
            addr,
            name: name.to_owned(),
            hits,
            seen,
            task,
        }
    }

    pub fn spec(&self) -> EndpointSpec {
        EndpointSpec::new(self.addr).named(self.name.as_str())
    }
}

/// Routing to `specs` over h2c.
pub fn h2c_routing(specs: Vec<EndpointSpec>) -> RoutingConfig {
    let mut upstream = UpstreamConfig::catch_all("default", specs);
    upstream.protocol = lb::discovery::Protocol::H2c;
    RoutingConfig {
        upstreams: vec![upstream],
        routes: Vec::new(),
    }
}

/// A self-signed certificate (ECDSA P-256) for `names`, as a cert pair and
/// the DER of the certificate (for a client's root store).
pub fn cert(name: &str, names: &[&str]) -> (lb::discovery::CertPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (
        lb::discovery::CertPair {
            name: name.to_owned(),
            chain_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        },
        cert.der().to_vec(),
    )
}

/// A TLS client trusting `roots` (DER certificates), offering `alpn`.
pub fn tls_client(roots: &[Vec<u8>], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    tls_client_with(roots, alpn, true)
}

/// The same; `resume: false` makes every handshake a full one.
pub fn tls_client_with(
    roots: &[Vec<u8>],
    alpn: &[&[u8]],
    resume: bool,
) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A TLS connection to `addr` for the name `sni`.
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

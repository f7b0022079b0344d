//! A client connection from accept to close: the connection limit, TLS,
//! and which transport serves it — the HTTP/1.1 fast path, hyper's
//! HTTP/1.1 server, or the HTTP/2 transport (`h2/`: ALPN `h2` on the TLS
//! listener, or h2c with prior knowledge on the plain one). Every request,
//! whichever of them carried it, goes through the same attempt core.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::drain::Drain;
use super::headers::ClientIp;
use super::local::Local;
use super::rewind::Rewind;
use super::stream::{ClientStream, h2_preface};
use super::{Worker, fast, h2, park};

/// The servers a worker runs on its connections.
pub(crate) struct Servers {
    pub(crate) h1: hyper::server::conn::http1::Builder,
    pub(crate) h2: h2::Server,
    /// The TLS listener's acceptor and handshake timeout.
    pub(crate) tls: Option<(TlsAcceptor, Duration)>,
    /// A plain connection's first bytes must come within this.
    pub(crate) idle_timeout: Duration,
}

impl Servers {
    /// Servers configured from the worker's settings.
    pub(crate) fn new(worker: &Worker, tls: Option<TlsAcceptor>) -> Rc<Self> {
        let config = &worker.shared.config;
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            .half_close(false)
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192) + 8192)
            .max_header_size(config.max_header_bytes)
            .max_headers(config.max_headers);
        Rc::new(Self {
            h1,
            h2: h2::Server::new(config),
            tls: tls.map(|a| (a, config.tls_handshake_timeout)),
            idle_timeout: config.header_read_timeout,
        })
    }
}

/// Takes an accepted connection (`tls`: from the TLS listener) under the
/// connection limit and serves it on the worker until it closes.
pub(crate) fn accept(
    worker: &Rc<Worker>,
    servers: &Rc<Servers>,
    tracker: &TaskTracker,
    drain: &Drain,
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    let shared = &worker.shared;
    let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    if open > shared.config.max_connections {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        Local::TooManyConnections.count(&shared.metrics);
        debug!(client = %peer, "connection limit reached; refusing");
        if let Some(skipped) = worker
            .limit_warn
            .borrow_mut()
            .hit(std::time::Instant::now())
        {
            warn!(
                max_connections = shared.config.max_connections,
                not_logged_since_last = skipped,
                "connection limit reached (--max-connections); refusing new connections with 503 (plain) or a close (TLS)"
            );
        }
        if tls {
            // Nothing can be said before a handshake: just close.
            return;
        }
        tokio::task::spawn_local(async move {
            let mut out = Vec::new();
            Local::TooManyConnections.write_h1(&mut out, true);
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
        });
        return;
    }
    let _ = stream.set_nodelay(true);
    shared.metrics.active_connections.inc();
    let w = worker.clone();
    let servers = servers.clone();
    let drain = drain.clone();
    if !tls && shared.config.fast_path && shared.config.https_redirect.is_none() {
        tracker.spawn_local(plain_fast(w, servers, drain, stream, peer, NEW_PLAIN));
    } else {
        tracker.spawn_local(async move {
            Box::pin(serve_connection(
                w.clone(),
                &servers,
                &drain,
                stream,
                peer,
                tls,
            ))
            .await;
            closed(&w);
        });
    }
}

/// The task of a plain connection on the fast path, the bulk of
/// connections. Its future is built before the task starts and holds
/// little besides the fast path's, for the task's size is what an idle
/// keep-alive connection costs besides its socket
/// (`connection_task_stays_small`).
fn plain_fast(
    w: Rc<Worker>,
    servers: Rc<Servers>,
    drain: Drain,
    stream: TcpStream,
    peer: SocketAddr,
    start: fast::Start,
) -> impl Future<Output = ()> {
    let client = Rc::new(ClientIp::new(peer.ip()).at_port(peer.port()));
    // `then`, not an async block awaiting `fast`: that would hold the fast
    // path's future twice (as captured, and as awaited).
    w.serve_fast(stream, client, drain.clone(), start)
        .then(move |outcome| async move {
            match outcome {
                // Still open, in the worker's table.
                fast::Outcome::Parked => return,
                fast::Outcome::Closed => {}
                outcome => Box::pin(after_fast(w.clone(), &servers, &drain, outcome)).await,
            }
            closed(&w);
        })
}

/// How a new plain connection starts on the fast path.
const NEW_PLAIN: fast::Start = fast::Start {
    h2c: true,
    parkable: true,
};

/// Runs the worker's table of parked idle connections until the drain:
/// a connection whose client sent something goes back to the fast path in
/// a new task (on `tracker`, so the drain waits for it); the ones the table
/// closes are counted out.
pub(crate) async fn run_parking(
    w: Rc<Worker>,
    servers: Rc<Servers>,
    tracker: TaskTracker,
    drain: Drain,
    poller: park::Poller,
) {
    let Some(parking) = &w.parking else {
        return;
    };
    let wake = |p: park::Parked| match TcpStream::from_std(p.stream) {
        Ok(stream) => {
            let start = fast::Start {
                h2c: p.h2c,
                parkable: true,
            };
            let task = plain_fast(
                w.clone(),
                servers.clone(),
                drain.clone(),
                stream,
                p.peer,
                start,
            );
            tracker.spawn_local(task);
        }
        Err(e) => {
            debug!(client = %p.peer, error = %e, "cannot resume a parked connection; closing it");
            closed(&w);
        }
    };
    poller.run(parking, &drain, wake, || closed(&w)).await;
}

/// Counts a served connection out.
fn closed(w: &Worker) {
    w.shared.connections.fetch_sub(1, Ordering::Relaxed);
    w.shared.metrics.active_connections.dec();
}

/// One accepted connection that does not start on the plain fast path:
/// TLS (the handshake and stream are ~9 KB, boxed so that no other
/// connection's task carries them), or plain with the fast path off or
/// redirecting to HTTPS.
async fn serve_connection(
    w: Rc<Worker>,
    servers: &Servers,
    drain: &Drain,
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    if tls {
        Box::pin(serve_tls(w, servers, drain, stream, peer)).await;
    } else {
        let client = Rc::new(ClientIp::new(peer.ip()).at_port(peer.port()));
        serve(w, servers, client, drain, stream, peer, true).await;
    }
}

/// The TLS handshake (within the handshake timeout), then the protocol
/// ALPN chose.
async fn serve_tls(
    w: Rc<Worker>,
    servers: &Servers,
    drain: &Drain,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some((acceptor, timeout)) = &servers.tls else {
        return;
    };
    let stream = match tokio::time::timeout(*timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            w.shared.metrics.tls_handshake_errors.inc();
            debug!(client = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            w.shared.metrics.tls_handshake_errors.inc();
            debug!(client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let client = Rc::new(ClientIp::tls(peer.ip()).at_port(peer.port()));
    if h2 {
        serve_h2(w, servers, client, drain, stream, peer).await;
    } else {
        serve(w, servers, client, drain, stream, peer, false).await;
    }
}

/// An HTTP/1.1 connection (or, on the plain listener, one that opens with
/// the HTTP/2 preface): the fast path first when it is on, then whatever
/// it hands over.
async fn serve<S: ClientStream>(
    w: Rc<Worker>,
    servers: &Servers,
    client: Rc<ClientIp>,
    drain: &Drain,
    stream: S,
    peer: SocketAddr,
    h2c: bool,
) {
    if w.shared.config.fast_path && !redirecting(&client, &w) {
        let start = fast::Start {
            h2c,
            parkable: false,
        };
        let outcome = w.serve_fast(stream, client, drain.clone(), start).await;
        return after_fast(w, servers, drain, outcome).await;
    }
    let (stream, prefix) = if h2c {
        let mut stream = stream;
        let Some((prefix, is_h2)) = sniff(&mut stream, servers.idle_timeout).await else {
            return;
        };
        let stream = Rewind::new(prefix.freeze(), stream);
        if is_h2 {
            return Box::pin(serve_h2(w, servers, client, drain, stream, peer)).await;
        }
        return Box::pin(serve_h1(w, servers, client, drain, stream, peer)).await;
    } else {
        (stream, Bytes::new())
    };
    Box::pin(serve_h1(
        w,
        servers,
        client,
        drain,
        Rewind::new(prefix, stream),
        peer,
    ))
    .await;
}

/// Serves what the fast path handed over: the rest of the connection on
/// hyper's HTTP/1.1 server (starting with the bytes already read), or on
/// its HTTP/2 server (h2c with prior knowledge).
async fn after_fast<S: ClientStream>(
    w: Rc<Worker>,
    servers: &Servers,
    drain: &Drain,
    outcome: fast::Outcome<S>,
) {
    match outcome {
        // Only a parkable connection is parked, and it is not served here.
        fast::Outcome::Closed | fast::Outcome::Parked => {}
        fast::Outcome::Http2(stream, prefix, client) => {
            let (peer, stream) = (client.addr(), Rewind::new(prefix.freeze(), stream));
            serve_h2(w, servers, client, drain, stream, peer).await;
        }
        fast::Outcome::Fallback(stream, prefix, client) => {
            let (peer, stream) = (client.addr(), Rewind::new(prefix.freeze(), stream));
            serve_h1(w, servers, client, drain, stream, peer).await;
        }
    }
}

/// Reads the first bytes of a plain connection until they show whether it
/// opens with the HTTP/2 preface (usually the first byte tells); `None`
/// when the client sends nothing in time or goes away.
async fn sniff<S: ClientStream>(stream: &mut S, timeout: Duration) -> Option<(BytesMut, bool)> {
    let mut buf = BytesMut::with_capacity(1024);
    let due = Instant::now() + timeout;
    loop {
        if let Some(is_h2) = h2_preface(&buf) {
            return Some((buf, is_h2));
        }
        match tokio::time::timeout_at(due, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Whether requests on this connection are answered with a redirect to
/// HTTPS instead of being proxied.
fn redirecting(client: &ClientIp, w: &Worker) -> bool {
    client.proto == "http" && w.shared.config.https_redirect.is_some()
}

/// Serves the rest of a client connection with hyper's HTTP/1.1 server,
/// shutting it down gracefully when `drain` is cancelled.
async fn serve_h1<S: ClientStream>(
    w: Rc<Worker>,
    servers: &Servers,
    client: Rc<ClientIp>,
    drain: &Drain,
    stream: Rewind<S>,
    peer: SocketAddr,
) {
    let service = service_fn(move |req| {
        let w = w.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(w.handle(client, req).await) }
    });
    let conn = servers
        .h1
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Serves an HTTP/2 connection on the HTTP/2 transport (`h2::serve`).
async fn serve_h2<S>(
    w: Rc<Worker>,
    servers: &Servers,
    client: Rc<ClientIp>,
    drain: &Drain,
    stream: S,
    _peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    h2::serve(w, &servers.h2, client, drain, stream).await;
}

/// The TLS acceptor for a server configuration.
pub(crate) fn acceptor(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection task's future is what an idle plain connection costs
    /// besides its socket: the TLS and hyper states, and the state of
    /// serving a request, must not be inline in it. (With the TLS arm inline
    /// it was 9.4 KB in the debug build; with the request state inline
    /// 1.7 KB; now 272 bytes.)
    #[tokio::test]
    async fn connection_task_stays_small() {
        use crate::metrics::Metrics;
        use crate::selection::{Balancer, Policy};
        let b = Arc::new(Balancer::new(Policy::default(), Arc::new(Metrics::new(1))));
        let w = Rc::new(crate::proxy::tests::worker(
            b,
            super::super::ProxyConfig::default(),
        ));
        let servers = Servers::new(&w, None);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let drain = Drain::new();
        let (s1, s2) = (
            TcpStream::connect(a).await.unwrap(),
            TcpStream::connect(a).await.unwrap(),
        );
        let task = plain_fast(w.clone(), servers, drain.clone(), s1, a, NEW_PLAIN);
        let fast = w.serve_fast(s2, Rc::new(ClientIp::new(a.ip())), drain, NEW_PLAIN);
        let (task, fast) = (std::mem::size_of_val(&task), std::mem::size_of_val(&fast));
        assert!(
            task <= fast + 64 && task <= 288,
            "connection task {task} bytes, fast path {fast} bytes"
        );
    }
}

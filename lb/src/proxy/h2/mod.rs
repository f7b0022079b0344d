//! The HTTP/2 transport: client connections that speak HTTP/2 (h2c with
//! prior knowledge on the plain port, `h2` by ALPN on the TLS listener),
//! served on the `h2` crate directly, and HTTP/2 to `h2c` endpoints.
//!
//! One task per client connection drives the connection and all of its
//! streams: each stream is a future in the connection's own set
//! ([`FuturesUnordered`]), not a task of its own, so a request costs no
//! spawn and no cross-task wake-up, and the frames its answer produces are
//! written by the same task in the same pass. A stream's state lives in a
//! box from the worker's free list (`buffers::pooled`), so serving one
//! allocates nothing for it once the worker is warm. Every stream goes through the
//! attempt core on its own (`Worker::decide`, `Worker::forward`), so the
//! streams of one connection are balanced exactly like separate requests:
//! - a request for an HTTP/1.1 Upstream is written as HTTP/1.1 bytes by the
//!   one header rule table ([`head`]) on a raw connection from the worker's
//!   one pool, as the fast path does, and the response head parsed once
//!   with `httparse` (`to_h1.rs`);
//! - a request for an `h2c` Upstream (gRPC) goes out as a stream on one of
//!   the worker's multiplexed connections (`upstream.rs`, `to_h2.rs`).
//!
//! Bodies stream both ways with HTTP/2 flow control honoured (`body.rs`).
//! The hardening limits (concurrent streams, header list size, resets,
//! send buffer) are set in `Server::new` and documented in
//! docs/SECURITY.md.

mod body;
mod call;
pub mod head;
mod request;
mod to_h1;
mod to_h2;
pub(crate) mod upstream;

use std::future::poll_fn;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;

use super::Worker;
use super::buffers::pooled;
use super::drain::Drain;
use super::headers::ClientIp;
use super::timer::LazyTimer;

/// Settings of the LB's HTTP/2 server (its limits are its hardening).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent streams per connection (`--h2-max-streams`).
    pub max_streams: u32,
    /// Largest decoded header list (`--max-header-bytes`).
    pub max_header_list: u32,
}

/// Resets of streams the LB had not yet accepted that a connection may
/// cause before it gets a GOAWAY (rapid reset, CVE-2023-44487).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the LB may reset because of a client's errors before the
/// connection gets a GOAWAY.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Most bytes queued for sending on one stream (a client that never reads
/// holds at most this much per stream).
pub const MAX_SEND_BUFFER: usize = 256 * 1024;

/// The flow-control window a client gets for each request body, and for
/// all of a connection's request bodies together: what a client may have
/// sent that the endpoints have not taken yet (the LB gives window back
/// only as it writes the bytes upstream), so at most this much is held per
/// connection. As large as hyper's defaults were, so uploads are not
/// slowed by more window updates than before.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The `h2` crate's server configured with the LB's limits; the fuzz
/// target builds its server with this too.
pub fn server_builder(limits: &Limits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_list)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER);
    b
}

/// The HTTP/2 server of a worker.
pub(crate) struct Server {
    builder: h2::server::Builder,
    /// A connection without streams for this long is closed (GOAWAY).
    idle_timeout: Duration,
}

impl Server {
    /// The server for a worker with these settings.
    pub(crate) fn new(config: &super::ProxyConfig) -> Self {
        let limits = Limits {
            max_streams: config.h2_max_streams,
            max_header_list: u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX),
        };
        Self {
            builder: server_builder(&limits),
            idle_timeout: config.header_read_timeout,
        }
    }
}

/// Polls the streams that are ready; whether any of them finished.
fn poll_streams<F: Future<Output = request::Served>>(
    streams: &mut FuturesUnordered<F>,
    cx: &mut std::task::Context<'_>,
) -> bool {
    let mut done = false;
    while let Poll::Ready(Some(request::Served)) = streams.poll_next_unpin(cx) {
        done = true;
    }
    done
}

/// Serves an HTTP/2 client connection until it closes: every stream is one
/// request through the attempt core. The connection is closed gracefully
/// (GOAWAY, in-flight streams finish) when `drain` is cancelled, or when it
/// has had no stream for the header-read timeout (as an idle HTTP/1.1
/// keep-alive connection is); a client that does not complete the
/// preface within that time is dropped.
pub(crate) async fn serve<S>(
    w: Rc<Worker>,
    server: &Server,
    client: Rc<ClientIp>,
    drain: &Drain,
    io: S,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = client.addr();
    let idle = server.idle_timeout;
    let mut timer = LazyTimer::new();
    let mut idle_since = Instant::now();
    let handshake = server.builder.handshake::<S, Bytes>(io);
    let mut conn = tokio::select! {
        r = handshake => match r {
            Ok(conn) => conn,
            Err(e) => {
                debug!(client = %peer, error = %e, "HTTP/2 handshake failed");
                return;
            }
        },
        () = timer.until(idle_since + idle) => {
            debug!(client = %peer, "no HTTP/2 preface within the header-read timeout; closing");
            return;
        }
        () = drain.cancelled() => return,
    };
    let mut streams = FuturesUnordered::new();
    // Registers this task's waker on its first poll; later polls check a
    // flag.
    let mut cancelled = pin!(drain.cancelled());
    let mut closing = false;
    let result = poll_fn(|cx| {
        loop {
            // The streams that were woken (their endpoint answered) first:
            // the connection's poll just after writes what they queued.
            let mut done = poll_streams(&mut streams, cx);
            // The connection's own work: writing frames, reading frames,
            // new streams.
            let mut accepted = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        // In a recycled box: no allocation for the stream's
                        // state once the worker has served a few, and the
                        // set only moves a pointer around.
                        let stream = request::serve(w.clone(), client.clone(), req, respond);
                        streams.push(pooled(stream));
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            // New streams start at once; one the LB answers itself (or
            // whose endpoint is that quick) queues frames to write.
            let new_done = accepted && poll_streams(&mut streams, cx);
            done |= new_done;
            if done && streams.is_empty() {
                idle_since = Instant::now();
            }
            if !closing {
                let idle_for =
                    streams.is_empty() && timer.poll_until(cx, idle_since + idle).is_ready();
                if idle_for {
                    debug!(client = %peer, "HTTP/2 connection idle; closing");
                }
                let draining = cancelled.as_mut().poll(cx).is_ready();
                if idle_for || draining {
                    closing = true;
                    conn.graceful_shutdown();
                    continue;
                }
            }
            if new_done {
                // Their frames are written by the next pass.
                continue;
            }
            return Poll::Pending;
        }
    })
    .await;
    if let Err(e) = result {
        debug!(client = %peer, error = %e, "HTTP/2 client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Request;

    use super::*;
    use crate::metrics::Metrics;
    use crate::proxy::ProxyConfig;
    use crate::selection::{Balancer, Policy};

    /// A connection is closed (GOAWAY, then the close) once it has had no
    /// stream for the header-read timeout, counted from its last stream.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_the_timeout_after_its_last_stream() {
        let balancer = Arc::new(Balancer::new(Policy::default(), Arc::new(Metrics::new(1))));
        let config = ProxyConfig {
            header_read_timeout: Duration::from_secs(30),
            ..ProxyConfig::default()
        };
        let server = Server::new(&config);
        let w = Rc::new(crate::proxy::tests::worker(balancer, config));
        let client = Rc::new(ClientIp::new("127.0.0.1".parse().unwrap()));
        let drain = Drain::new();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let start = Instant::now();
        let lb = serve(w, &server, client, &drain, far);
        let user = async {
            let (tx, conn) = h2::client::handshake(near).await.unwrap();
            let mut conn = std::pin::pin!(conn);
            // A request 10 s in (no route: the LB's own 404).
            tokio::select! {
                _ = &mut conn => panic!("closed before the first request"),
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
            let mut tx = tx.ready().await.unwrap();
            let req = Request::get("http://a/x").body(()).unwrap();
            let (resp, _) = tx.send_request(req, true).unwrap();
            let resp = tokio::select! {
                _ = &mut conn => panic!("closed with a stream in flight"),
                r = resp => r.unwrap(),
            };
            assert_eq!(resp.status(), 404);
            let answered = start.elapsed();
            conn.await.unwrap();
            (answered, start.elapsed())
        };
        let ((answered, closed), ()) = tokio::join!(user, lb);
        assert_eq!(answered, Duration::from_secs(10));
        assert!(
            closed >= Duration::from_secs(40) && closed <= Duration::from_millis(40_010),
            "closed {closed:?} after start: 30 s after the last stream"
        );
    }

    /// Without a preface within the timeout, the connection is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_client_without_a_preface_is_dropped_at_the_timeout() {
        let balancer = Arc::new(Balancer::new(Policy::default(), Arc::new(Metrics::new(1))));
        let config = ProxyConfig {
            header_read_timeout: Duration::from_secs(5),
            ..ProxyConfig::default()
        };
        let server = Server::new(&config);
        let w = Rc::new(crate::proxy::tests::worker(balancer, config));
        let client = Rc::new(ClientIp::new("127.0.0.1".parse().unwrap()));
        let drain = Drain::new();
        let (_near, far) = tokio::io::duplex(1024);
        let start = Instant::now();
        serve(w, &server, client, &drain, far).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}

//! Moving bodies onto HTTP/2 streams with flow control honoured: data is
//! handed to a stream only as the peer's window allows, so a peer that
//! reads slowly holds the LB (and, through it, the other side) back instead
//! of making it buffer; a received frame's window is given back only once
//! its bytes have been passed on.

use std::fmt;
use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};

/// Frames that have already arrived are joined into one up to this size.
const COALESCE: usize = 16 * 1024;

/// Why a body could not be moved on.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The receiving stream failed (reset, or its connection broke).
    Recv(h2::Error),
    /// The sending stream is gone (reset by its peer, or closed).
    Send(Option<h2::Error>),
    /// The body went over `--max-body-bytes`.
    TooLarge,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Recv(e) => write!(f, "receiving: {e}"),
            BodyError::Send(Some(e)) => write!(f, "sending: {e}"),
            BodyError::Send(None) => f.write_str("sending: stream closed"),
            BodyError::TooLarge => f.write_str("request body over the limit"),
        }
    }
}

/// Waits until `tx` may send at least one more byte of a `want`-byte
/// chunk; the capacity granted.
fn poll_window(
    tx: &mut SendStream<Bytes>,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, BodyError>> {
    loop {
        let have = tx.capacity();
        if have > 0 {
            return Poll::Ready(Ok(have.min(want)));
        }
        tx.reserve_capacity(want);
        match ready!(tx.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(BodyError::Send(Some(e)))),
            None => return Poll::Ready(Err(BodyError::Send(None))),
        }
    }
}

/// Sends `data` on `tx` as the peer's window allows (`end`: it is the last
/// of the body).
pub(crate) async fn send_all(
    tx: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), BodyError> {
    if data.is_empty() {
        return if end { finish(tx) } else { Ok(()) };
    }
    while !data.is_empty() {
        let n = poll_fn(|cx| poll_window(tx, data.len(), cx)).await?;
        let part = data.split_to(n);
        tx.send_data(part, end && data.is_empty())
            .map_err(|e| BodyError::Send(Some(e)))?;
    }
    Ok(())
}

/// Ends `tx` without more data.
pub(crate) fn finish(tx: &mut SendStream<Bytes>) -> Result<(), BodyError> {
    tx.send_data(Bytes::new(), true)
        .map_err(|e| BodyError::Send(Some(e)))
}

/// Moves a body from one HTTP/2 stream to another, trailers included; a
/// state machine (rather than a future) so that it can be polled beside
/// the exchange it belongs to and resumed after it.
#[derive(Debug)]
pub(crate) struct Pump {
    /// Received, not yet all sent: its window is released as it goes.
    chunk: Bytes,
    /// `chunk` is the last of the body.
    last: bool,
    done: bool,
    /// Nothing has been sent yet.
    first: bool,
    /// Bytes still allowed (`u64::MAX`: no limit).
    remaining: u64,
    /// Body bytes sent so far.
    pub(crate) sent: u64,
}

impl Pump {
    /// A pump for a body of at most `limit` bytes.
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Self {
            chunk: Bytes::new(),
            last: false,
            done: false,
            first: true,
            remaining: limit.unwrap_or(u64::MAX),
            sent: 0,
        }
    }

    /// A pump for a body that has already ended (nothing to move).
    pub(crate) fn finished() -> Self {
        Self {
            done: true,
            ..Self::new(None)
        }
    }

    /// Whether the whole body has been passed on.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the frames that have already arrived to `chunk` (up to
    /// [`COALESCE`] bytes), so that a peer sending many tiny DATA frames is
    /// not relayed as a flood of tiny frames (which HTTP/2 peers count
    /// against the connection). Never waits: `Ready(Ok)` as soon as nothing
    /// more is there.
    fn coalesce(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut RecvStream,
    ) -> Poll<Result<(), BodyError>> {
        let mut joined: Option<BytesMut> = None;
        while !self.last && joined.as_ref().map_or(self.chunk.len(), BytesMut::len) < COALESCE {
            let Poll::Ready(Some(next)) = rx.poll_data(cx) else {
                break;
            };
            let data = next.map_err(BodyError::Recv)?;
            let n = data.len() as u64;
            if n > self.remaining {
                return Poll::Ready(Err(BodyError::TooLarge));
            }
            self.remaining -= n;
            self.last = rx.is_end_stream();
            joined
                .get_or_insert_with(|| BytesMut::from(&self.chunk[..]))
                .extend_from_slice(&data);
        }
        if let Some(joined) = joined {
            self.chunk = joined.freeze();
        }
        Poll::Ready(Ok(()))
    }

    /// Moves what it can from `rx` to `tx`; ready when the body has ended
    /// (or failed).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut RecvStream,
        tx: &mut SendStream<Bytes>,
    ) -> Poll<Result<(), BodyError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if !self.chunk.is_empty() {
                // The first chunk goes without waiting for the window: it
                // is at most one coalesced read (COALESCE), the bound the
                // window gives anyway, and most bodies are that one chunk.
                let n = if std::mem::take(&mut self.first) {
                    self.chunk.len()
                } else {
                    ready!(poll_window(tx, self.chunk.len(), cx))?
                };
                let part = self.chunk.split_to(n);
                let end = self.last && self.chunk.is_empty();
                tx.send_data(part, end)
                    .map_err(|e| BodyError::Send(Some(e)))?;
                self.sent += n as u64;
                // The peer may send more now that this much has moved on.
                let _ = rx.flow_control().release_capacity(n);
                if end {
                    self.done = true;
                }
                continue;
            }
            match ready!(rx.poll_data(cx)) {
                Some(Ok(data)) => {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        return Poll::Ready(Err(BodyError::TooLarge));
                    }
                    self.remaining -= n;
                    self.last = rx.is_end_stream();
                    if data.is_empty() {
                        if self.last {
                            finish(tx)?;
                            self.done = true;
                        }
                        continue;
                    }
                    self.chunk = data;
                    if !self.last {
                        ready!(self.coalesce(cx, rx))?;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(BodyError::Recv(e))),
                None => {
                    match ready!(rx.poll_trailers(cx)) {
                        Ok(Some(trailers)) => tx
                            .send_trailers(trailers)
                            .map_err(|e| BodyError::Send(Some(e)))?,
                        Ok(None) => finish(tx)?,
                        Err(e) => return Poll::Ready(Err(BodyError::Recv(e))),
                    }
                    self.done = true;
                }
            }
        }
    }
}

//! What connections are carried on, for the modules that serve them: the
//! client stream types and the HTTP/2 preface.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// What a client connection is carried on: a TCP socket or a TLS stream.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Called after a read that left spare room in the buffer, i.e. that
    /// emptied the socket's receive queue: a plain socket then clears its
    /// read readiness, so the next read waits for the next readiness event
    /// instead of first making a `recv` that returns `EAGAIN` (one syscall
    /// less per read; new data always brings a new event). A TLS stream may
    /// still hold decrypted bytes, so it does nothing.
    fn drained(&self) {}

    /// Ready once the stream may have bytes to read (or is closed): lets an
    /// idle keep-alive connection wait without holding read buffers. A TLS
    /// stream may hold decrypted bytes already, so it is always ready.
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The plain socket, out of tokio's reactor, for an idle connection to
    /// be parked (`park`); `Err(self)` for a stream that cannot be (TLS:
    /// its session state would have to be parked too). An inner error
    /// means the socket was lost on the way (and so closed).
    fn into_parkable(self) -> Result<io::Result<std::net::TcpStream>, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

impl ClientStream for TcpStream {
    fn drained(&self) {
        let _ = self.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn into_parkable(self) -> Result<io::Result<std::net::TcpStream>, Self> {
        Ok(self.into_std())
    }
}

impl ClientStream for TlsStream<TcpStream> {}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` starts with the HTTP/2 preface (`Some(true)`), cannot
/// (`Some(false)`), or is a prefix of it (`None`: read more).
pub fn h2_preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Some(false)
    } else if n == H2_PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_h2_preface_is_recognised_from_its_first_byte() {
        assert_eq!(
            h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Some(true)
        );
        assert_eq!(h2_preface(b"PRI * HT"), None);
        assert_eq!(h2_preface(b""), None);
        assert_eq!(h2_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(h2_preface(b"PRI * HTTP/1.1\r\n"), Some(false));
    }
}

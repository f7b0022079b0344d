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
    /// idle keep-alive connection wait without holding read buffers or the
    /// state of serving a request. The default is always ready.
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

impl ClientStream for TlsStream<TcpStream> {
    /// Ready when the TLS session holds decrypted bytes not read yet (or
    /// the client's close_notify), otherwise when the socket is readable.
    /// The stream decrypts every complete record it reads, so what the
    /// session may still hold besides is part of a record, which needs more
    /// bytes from the socket. An idle TLS keep-alive connection then waits
    /// as a plain one does, without its buffers and request state.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, session) = self.get_ref();
        if !session.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}

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
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An idle TLS connection waits for its socket: not readable until the
    /// client sends, readable while decrypted bytes wait to be read, and
    /// not readable again once they are.
    #[tokio::test]
    async fn an_idle_tls_stream_is_readable_only_when_the_client_sent() {
        let cert = crate::proxy::tls::tests::pair("t", &["t.example"]);
        let store = crate::proxy::tls::CertStore::new(std::slice::from_ref(&cert)).unwrap();
        let server =
            tokio_rustls::TlsAcceptor::from(crate::proxy::tls::server_config(store).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile_certs(&cert.chain_pem) {
            roots.add(der).unwrap();
        }
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, accepted) = tokio::join!(
            async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("t.example").unwrap();
                connector.connect(name, tcp).await.unwrap()
            },
            async {
                let (tcp, _) = l.accept().await.unwrap();
                server.accept(tcp).await.unwrap()
            }
        );
        let (mut client, mut tls) = (client, accepted);
        let readable = |tls: &TlsStream<TcpStream>| {
            let waker = futures::task::noop_waker();
            tls.poll_readable(&mut Context::from_waker(&waker))
                .is_ready()
        };
        // Idle: the socket's readiness may be left over from the last
        // read (it "may" have bytes); a read that would wait clears it.
        let settle = |tls: &mut TlsStream<TcpStream>| {
            if readable(tls) {
                let read = futures::FutureExt::now_or_never(tls.read(&mut [0u8; 1]));
                assert!(read.is_none(), "no application data was sent: {read:?}");
            }
            !readable(tls)
        };
        assert!(
            settle(&mut tls),
            "idle after the handshake: nothing to read"
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.flush().await.unwrap();
        // Readable once the record arrived (awaited, not slept on).
        std::future::poll_fn(|cx| tls.poll_readable(cx))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /");
        assert!(readable(&tls), "decrypted bytes still wait to be read");
        let mut rest = [0u8; 13];
        tls.read_exact(&mut rest).await.unwrap();
        assert!(settle(&mut tls), "all read: waiting for the socket again");
    }

    /// The DER certificates in a PEM chain.
    fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .map(Result::unwrap)
            .collect()
    }

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

//! A client connection that is plain or TLS, and can become TLS in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A server-side stream, plain or TLS.
#[derive(Debug)]
pub enum MailStream {
    /// Cleartext (before STARTTLS, or a listener without TLS).
    Plain(TcpStream),
    /// TLS (implicit, or after STARTTLS).
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a TLS session negotiated, for `Received:` headers and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl MailStream {
    /// Runs the server side of a TLS handshake over a plain stream (STARTTLS,
    /// STLS, or an implicit-TLS listener), bounded by `timeout`.
    ///
    /// The caller must drop whatever it had buffered from the plain stream
    /// first: bytes pipelined before the handshake must never be read as if
    /// they had come over TLS (CVE-2011-0411).
    pub async fn start_tls(
        self,
        acceptor: &TlsAcceptor,
        timeout: Duration,
    ) -> io::Result<MailStream> {
        let MailStream::Plain(tcp) = self else {
            return Err(io::Error::other("TLS is already active"));
        };
        let done = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Ok(MailStream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        };
        // Implicit TLS and STARTTLS alike, in every protocol.
        let outcome = if done.is_ok() { "ok" } else { "failed" };
        metrics::counter!("mailroom_tls_handshakes_total", "outcome" => outcome).increment(1);
        done
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, MailStream::Tls(_))
    }

    /// The negotiated TLS version and cipher, when encrypted.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let MailStream::Tls(tls) = self else {
            return None;
        };
        let conn = tls.get_ref().1;
        Some(TlsInfo {
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS")
                .replace("TLSv1_", "TLSv1."),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown")
                .to_string(),
        })
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

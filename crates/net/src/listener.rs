//! Bound listeners and the accept loop shared by every protocol service.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::{ConnectionLimiter, MailStream, Refusal, Shutdown};

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS at all (internal gRPC on loopback, tests).
    Plain,
    /// Cleartext first; the client may upgrade (STARTTLS, STLS).
    StartTls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Plain => "plaintext",
            TlsMode::StartTls => "STARTTLS",
            TlsMode::Implicit => "implicit TLS",
        })
    }
}

/// A bound TCP listener with the name of its service and its TLS mode.
#[derive(Debug)]
pub struct Listener {
    service: &'static str,
    mode: TlsMode,
    addr: SocketAddr,
    tcp: TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port). The error names the service
    /// and the address, and hints at the usual causes.
    pub async fn bind(
        service: &'static str,
        addr: SocketAddr,
        mode: TlsMode,
    ) -> io::Result<Listener> {
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                }
                io::ErrorKind::AddrInUse => " (another program listens there)",
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("{service}: cannot listen on {addr}: {e}{hint}"),
            )
        })?;
        let addr = tcp.local_addr()?;
        Ok(Listener {
            service,
            mode,
            addr,
            tcp,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service name (`submission`, `imap`, `admin`, …).
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The TLS mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Gives up the socket (for servers with an accept loop of their own, like gRPC).
    pub fn into_tcp(self) -> TcpListener {
        self.tcp
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<12} {:<22} {}", self.service, self.addr, self.mode)
    }
}

/// What the accept loop shares with every session.
#[derive(Clone)]
pub struct ServeContext {
    /// Connection caps.
    pub limiter: ConnectionLimiter,
    /// TLS for implicit-TLS listeners and STARTTLS upgrades.
    pub tls: Option<TlsAcceptor>,
    /// How long a client gets to finish a TLS handshake.
    pub handshake_timeout: Duration,
    /// Shutdown signal and session tracking.
    pub shutdown: Shutdown,
}

/// One accepted client connection, handed to a [`Session`].
pub struct Connection {
    /// The stream: already TLS on an implicit-TLS listener.
    pub stream: MailStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address as the client reached it.
    pub local: SocketAddr,
    /// The listener's mode.
    pub mode: TlsMode,
    /// For STARTTLS upgrades (`None` when TLS is not configured).
    pub tls: Option<TlsAcceptor>,
    /// Handshake bound for STARTTLS upgrades.
    pub handshake_timeout: Duration,
}

/// A protocol's side of a connection.
pub trait Session: Send + Sync + 'static {
    /// Serves one connection until the client leaves or `shutdown` fires
    /// (then it should say goodbye in its protocol's words and return).
    fn serve(
        &self,
        conn: Connection,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Tells a client turned away by a connection cap why, in the
    /// protocol's words (SMTP `421 4.7.0 …`), before the socket closes. Only
    /// called on cleartext listeners; the default says nothing.
    fn refuse(&self, stream: MailStream, why: Refusal) -> impl Future<Output = ()> + Send {
        let _ = (stream, why);
        async {}
    }
}

/// How long a refusal message may take before the socket is just closed.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until shutdown, running `session` on each.
///
/// Returns when shutdown is triggered; sessions still running are tracked by
/// `ctx.shutdown` and drained by its owner.
pub async fn serve<S: Session>(
    listener: Listener,
    session: Arc<S>,
    ctx: ServeContext,
) -> io::Result<()> {
    if listener.mode != TlsMode::Plain && ctx.tls.is_none() {
        return Err(io::Error::other(format!(
            "{}: {} needs a TLS certificate",
            listener.service, listener.mode
        )));
    }
    let shutdown = ctx.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = shutdown.triggered() => return Ok(()),
            accepted = listener.tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(service = listener.service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // The root of the traces of what this session does (one message's
        // trace starts here); its id goes into every log line of the session.
        let span = info_span!(
            "connection",
            service = listener.service,
            %peer,
            trace_id = tracing::field::Empty
        );
        mailroom_telemetry::record_trace_id(&span);
        let service = listener.service;
        metrics::counter!("mailroom_connections_total", "service" => service).increment(1);
        let permit = match ctx.limiter.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                debug!(parent: &span, ?why, "connection refused by a cap");
                metrics::counter!("mailroom_connections_refused_total", "service" => service)
                    .increment(1);
                if listener.mode != TlsMode::Implicit {
                    let session = session.clone();
                    shutdown.spawn(async move {
                        let _ = tokio::time::timeout(
                            REFUSAL_TIMEOUT,
                            session.refuse(MailStream::Plain(tcp), why),
                        )
                        .await;
                    });
                }
                continue;
            }
        };
        let local = tcp.local_addr().unwrap_or(listener.addr);
        let session = session.clone();
        let ctx = ctx.clone();
        let mode = listener.mode;
        shutdown.spawn(
            async move {
                let _permit = permit;
                let _open = OpenSession::new(service);
                let mut stream = MailStream::Plain(tcp);
                if mode == TlsMode::Implicit {
                    let Some(acceptor) = &ctx.tls else { return };
                    stream = match Box::pin(stream.start_tls(acceptor, ctx.handshake_timeout)).await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(error = %e, "TLS handshake failed");
                            metrics::counter!("mailroom_tls_handshake_failures_total", "service" => service)
                                .increment(1);
                            return;
                        }
                    };
                }
                let conn = Connection {
                    stream,
                    peer,
                    local,
                    mode,
                    tls: ctx.tls.clone(),
                    handshake_timeout: ctx.handshake_timeout,
                };
                session.serve(conn, ctx.shutdown.token()).await;
            }
            .instrument(span),
        );
    }
}

/// Counts a session in `mailroom_sessions_open` while it lives (also when
/// it panics).
struct OpenSession(&'static str);

impl OpenSession {
    fn new(service: &'static str) -> OpenSession {
        metrics::gauge!("mailroom_sessions_open", "service" => service).increment(1.0);
        OpenSession(service)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics::gauge!("mailroom_sessions_open", "service" => self.0).decrement(1.0);
    }
}

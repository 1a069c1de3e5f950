//! The client connection the three protocol clients share: TCP, implicit TLS
//! or STARTTLS upgrade, a bounded input buffer, timeouts and the redacting
//! protocol trace.
//!
//! Invariants:
//! * input is only ever buffered up to the caller's bound: [`Connection::read_line`]
//!   fails as soon as a line passes its limit, and literal readers ask for
//!   exact byte counts they have checked first, so a hostile server cannot
//!   make the client allocate without limit;
//! * every read and write is under [`Connection::timeout`]: a server that
//!   stops talking ends the command with an error instead of hanging;
//! * the TLS upgrade refuses to start while unread plaintext is buffered
//!   (bytes a man in the middle injected before the handshake must never be
//!   read as if they came over TLS; CVE-2011-0411, RFC 3207 §4.2);
//! * certificates are verified against the system roots (plus `--ca-file`)
//!   unless `--insecure` was given, which the CLI announces loudly;
//! * the trace never shows a secret: callers send credentials through
//!   [`Connection::send_secret`], which traces a redacted form.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (ports 465, 993, 995).
    Tls,
    /// Plain connection upgraded with STARTTLS/STLS before anything else;
    /// the client refuses to go on when the server does not offer it.
    Starttls,
    /// No TLS at all (loopback test servers only).
    None,
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Security, String> {
        match s {
            "tls" => Ok(Security::Tls),
            "starttls" => Ok(Security::Starttls),
            "none" => Ok(Security::None),
            _ => Err(format!("{s:?}: expected tls, starttls or none")),
        }
    }
}

/// Where a server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name (checked against the certificate) or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS mode.
    pub security: Security,
}

/// How server certificates are checked.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (PEM), for a private CA or a
    /// self-signed server.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. For throw-away test servers only.
    pub insecure: bool,
}

/// Options every client takes.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Certificate checks.
    pub tls: TlsOptions,
    /// Print the protocol exchange on stderr (secrets redacted).
    pub trace: bool,
    /// Bound on each network read and write and on connecting.
    pub timeout: Duration,
    /// Largest message, literal or multi-line response accepted.
    pub max_message: usize,
    /// Over IMAP, enable `UTF8=ACCEPT` where offered (RFC 6855); when off,
    /// mailbox names travel in modified UTF-7 even then.
    pub imap_utf8: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: TlsOptions::default(),
            trace: false,
            timeout: Duration::from_secs(60),
            max_message: 64 << 20,
            imap_utf8: true,
        }
    }
}

/// Builds the rustls configuration (aws-lc-rs, like the servers).
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>> {
    let provider = mailroom_net::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS setup: {e}")))?;
    if options.insecure {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = &options.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect())
            .map_err(|e| Error::File(format!("--ca-file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::File(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::File(format!("--ca-file {}: {e}", path.display())))?;
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// `--insecure`: accepts any certificate, but still checks the handshake
/// signatures so the session keys are at least bound to the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between a failed upgrade and the end of the connection.
    Gone,
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes written to the socket at a time when progress is reported.
const WRITE_CHUNK: usize = 64 * 1024;

/// Told how far a long transfer got. The library draws nothing; the CLI
/// shows a bar on a terminal.
pub trait Progress: Send {
    /// A transfer of `total` bytes starts (`what` names it for the user).
    fn start(&mut self, what: &str, total: u64);
    /// `n` more bytes went through.
    fn advance(&mut self, n: u64);
    /// The transfer ended (whole or not).
    fn finish(&mut self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// One connection to a server.
pub struct Connection {
    stream: Stream,
    input: Vec<u8>,
    server: String,
    host: String,
    tls: Arc<ClientConfig>,
    trace: bool,
    /// Whether the server's address is a loopback one.
    loopback: bool,
    /// Bound on each read, write and handshake.
    pub timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects, and for [`Security::Tls`] runs the handshake.
    pub async fn open(endpoint: &Endpoint, options: &ClientOptions) -> Result<Connection> {
        let server = format!("{}:{}", endpoint.host, endpoint.port);
        let tls = client_config(&options.tls)?;
        let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
        let tcp = match tokio::time::timeout(options.timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(Error::Connect {
                    server,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(Error::Connect {
                    server,
                    reason: "timed out".into(),
                });
            }
        };
        let loopback = tcp
            .peer_addr()
            .is_ok_and(|a| mailroom_net::is_loopback(a.ip()));
        let mut conn = Connection {
            loopback,
            stream: Stream::Plain(tcp),
            input: Vec::new(),
            server,
            host: endpoint.host.clone(),
            tls,
            trace: options.trace,
            timeout: options.timeout,
        };
        if conn.trace {
            eprintln!("-- connected to {}", conn.server);
        }
        if endpoint.security == Security::Tls {
            conn.start_tls().await?;
        }
        Ok(conn)
    }

    /// `host:port` of the server, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Refuses to go on with a login over a cleartext connection to
    /// anything but a loopback address: a password (or a SCRAM exchange an
    /// eavesdropper could attack offline) must not cross a network in the
    /// clear.
    pub fn check_login_allowed(&self) -> Result<()> {
        if self.is_tls() || self.loopback {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "refusing to log in to {} without TLS (use --security tls or starttls)",
            self.server
        )))
    }

    /// Runs the TLS handshake on the plain connection (after the server
    /// agreed to STARTTLS/STLS, or at once for implicit TLS).
    pub async fn start_tls(&mut self) -> Result<()> {
        if !self.input.is_empty() {
            return Err(Error::protocol(
                "the server sent data before the TLS handshake (possible injection)",
            ));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(Error::protocol("TLS is already active"));
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|_| Error::Tls {
            server: self.server.clone(),
            reason: format!("{:?} is not a valid server name", self.host),
        })?;
        let handshake = TlsConnector::from(self.tls.clone()).connect(name, tcp);
        let tls = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(c)) => {
                        format!("the certificate is not trusted ({c:?})")
                    }
                    Some(other) => other.to_string(),
                    None => e.to_string(),
                };
                return Err(Error::Tls {
                    server: self.server.clone(),
                    reason,
                });
            }
            Err(_) => {
                return Err(Error::Tls {
                    server: self.server.clone(),
                    reason: "the handshake timed out".into(),
                });
            }
        };
        if self.trace {
            eprintln!("-- TLS established");
        }
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Reads once more from the socket into the input buffer; an error when
    /// the server closed the connection.
    pub async fn fill(&mut self) -> Result<()> {
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.read_some()).await {
            Ok(r) => r,
            Err(_) => Err(Error::protocol(format!(
                "no answer within {}s",
                limit.as_secs()
            ))),
        }
    }

    /// Like [`Connection::fill`] without a timeout: for IDLE, where the
    /// caller bounds the wait itself (dropping this future loses nothing:
    /// bytes are only ever appended to the input buffer).
    pub async fn fill_untimed(&mut self) -> Result<()> {
        self.read_some().await
    }

    async fn read_some(&mut self) -> Result<()> {
        // Read straight into the spare capacity of the input buffer (no
        // large array in the future's state).
        self.input.reserve(READ_CHUNK);
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read_buf(&mut self.input).await?,
            Stream::Tls(s) => s.read_buf(&mut self.input).await?,
            Stream::Gone => 0,
        };
        if n == 0 {
            return Err(Error::protocol("the server closed the connection"));
        }
        Ok(())
    }

    /// The unread input.
    pub fn buffered(&self) -> &[u8] {
        &self.input
    }

    /// Drops `n` bytes from the front of the input.
    pub fn consume(&mut self, n: usize) {
        self.input.drain(..n.min(self.input.len()));
    }

    /// Takes all buffered input.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }

    /// Passes the next `n` bytes of input to `sink` as they arrive, a
    /// buffer at a time (never more than one read in memory), and reports
    /// them to `progress`.
    pub async fn stream_exact(
        &mut self,
        n: u64,
        sink: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let mut left = n;
        while left > 0 {
            if self.input.is_empty() {
                self.fill().await?;
            }
            let take = self
                .input
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            sink(&self.input[..take])?;
            self.consume(take);
            left -= take as u64;
            progress.advance(take as u64);
        }
        Ok(())
    }

    /// Reads one line (without its line ending), at most `max` bytes
    /// including it.
    pub async fn read_line(&mut self, max: usize) -> Result<Vec<u8>> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.input[searched..].iter().position(|&b| b == b'\n') {
                let end = searched + i;
                if end + 1 > max {
                    break;
                }
                let mut line: Vec<u8> = self.input.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.trace_in(&line);
                return Ok(line);
            }
            searched = self.input.len();
            if searched >= max {
                break;
            }
            self.fill().await?;
        }
        Err(Error::protocol(format!(
            "a response line is longer than {max} bytes"
        )))
    }

    /// Writes and flushes.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        if self.trace {
            for line in data.split_inclusive(|&b| b == b'\n').take(20) {
                eprintln!("C: {}", printable(line));
            }
        }
        self.write(data).await
    }

    /// Writes a command carrying a secret; the trace shows `shown` instead.
    pub async fn send_secret(&mut self, data: &[u8], shown: &str) -> Result<()> {
        if self.trace {
            eprintln!("C: {shown}");
        }
        self.write(data).await
    }

    /// Writes message content; the trace shows only its size.
    pub async fn send_content(&mut self, data: &[u8]) -> Result<()> {
        if self.trace {
            eprintln!("C: <{} bytes of message content>", data.len());
        }
        self.write(data).await
    }

    /// Writes message content in pieces, reporting each to `progress`.
    pub async fn send_content_progress(
        &mut self,
        data: &[u8],
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if self.trace {
            eprintln!("C: <{} bytes of message content>", data.len());
        }
        for piece in data.chunks(WRITE_CHUNK) {
            self.write(piece).await?;
            progress.advance(piece.len() as u64);
        }
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let write = async {
            match &mut self.stream {
                Stream::Plain(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Stream::Tls(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
                Stream::Gone => Err(std::io::Error::other("connection lost")),
            }
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::protocol("the server stopped reading")),
        }
    }

    /// Traces a line received (used by the readers that frame input
    /// themselves).
    pub fn trace_in(&self, line: &[u8]) {
        if self.trace {
            eprintln!("S: {}", printable(line));
        }
    }

    /// Whether tracing is on.
    pub fn tracing(&self) -> bool {
        self.trace
    }

    /// Shuts the connection down, ignoring errors (the session is over).
    pub async fn close(&mut self) {
        let _ = match &mut self.stream {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
    }
}

/// A line for the trace: control characters escaped, long lines cut.
fn printable(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let cut = line.len() > 300;
    let mut out = String::from_utf8_lossy(&line[..line.len().min(300)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect::<String>();
    if cut {
        out.push_str(&format!("… ({} bytes)", line.len()));
    }
    out
}

//! Shared helpers for the end-to-end tests: start the real stack in-process
//! on port 0 against a throw-away store, and talk to it as a client would.

use mailroom::Stack;
use mailroom_config::Config;
use mailroom_rpc::admin::admin_client::AdminClient;
use mailroom_store::testing::TestDb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in a temporary directory.
    Sqlite,
    /// A fresh database on the local PostgreSQL server.
    Postgres,
}

/// A stack running in this process, with everything it needs kept alive.
#[derive(Debug)]
pub struct Running {
    /// The services.
    pub stack: Stack,
    /// `http://127.0.0.1:<port>` of the Admin service.
    pub admin_url: String,
    /// The admin token the stack generated.
    pub token: String,
    /// The data directory (certificate, token, SQLite file).
    pub data_dir: tempfile::TempDir,
    /// The database (dropped after the stack).
    pub db: TestDb,
}

/// A configuration for tests: everything on 127.0.0.1 port 0.
pub fn test_config(data_dir: &std::path::Path, store_url: &str) -> Config {
    let mut config = Config::default();
    config.server.data_dir = data_dir.to_path_buf();
    config.store.url = Some(store_url.to_string());
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.mda.listen = "127.0.0.1:0".parse().unwrap();
    config.mta.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.mta.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.submission.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.submission.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    config.server.hostname = "mx.example.test".into();
    // Tests count failures, they need not wait for them.
    config.smtp.auth_failure_delay_ms = 10;
    config
}

/// Starts every service on `backend`; `None` only when PostgreSQL tests were
/// opted out of with `MAILROOM_TEST_SKIP_POSTGRES=1`.
pub async fn start(backend: Backend) -> Option<Running> {
    start_with(backend, None, |_| {}).await
}

/// Like [`start`], with a chosen service (all when `None`) and configuration changes.
pub async fn start_with(
    backend: Backend,
    only: Option<mailroom::ServiceName>,
    change: impl FnOnce(&mut Config),
) -> Option<Running> {
    let (store, db) = match backend {
        Backend::Sqlite => TestDb::sqlite().await,
        Backend::Postgres => TestDb::postgres().await?,
    };
    store.close().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(data_dir.path(), &db.url);
    change(&mut config);
    let stack = mailroom::start(config, only)
        .await
        .expect("the stack starts");
    let admin_url = stack
        .addr("admin")
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let token = std::fs::read_to_string(stack.token_file())
        .unwrap()
        .trim()
        .to_string();
    Some(Running {
        stack,
        admin_url,
        token,
        data_dir,
        db,
    })
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

/// A raw Admin client presenting `token` (or none).
pub async fn admin_client(
    url: &str,
    token: Option<&str>,
) -> AdminClient<InterceptedService<Channel, Bearer>> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminClient::with_interceptor(channel, Bearer(token.map(str::to_string)))
}

/// Runs a `mailroom …` command line in-process, feeding `stdin` to password
/// prompts; returns what it printed, or the error it reported.
pub async fn cli(args: &[&str], stdin: &str) -> Result<String, String> {
    use clap::Parser;
    let cli =
        mailroom::Cli::try_parse_from(std::iter::once("mailroom").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
    let mut input = std::io::Cursor::new(stdin.as_bytes().to_vec());
    let mut passwords = mailroom::cli::PasswordInput::Reader(&mut input);
    let mut out = Vec::new();
    match mailroom::cli::run_with(cli, &mut passwords, &mut out).await {
        Ok(_) => Ok(String::from_utf8(out).unwrap()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// A Delivery client for the stack's MDA.
pub async fn delivery_client(
    running: &Running,
) -> mailroom_rpc::delivery::delivery_client::DeliveryClient<Channel> {
    let url = format!("http://{}", running.stack.addr("mda").unwrap());
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    mailroom_rpc::delivery::delivery_client::DeliveryClient::new(channel)
        .max_encoding_message_size(64 << 20)
}

/// A second handle on the stack's database, to look at what the services stored.
pub async fn open_store(running: &Running) -> mailroom_store::Store {
    mailroom_store::Store::connect(&running.db.url, &mailroom_store::StoreOptions::default())
        .await
        .unwrap()
}

/// A deliberately small SMTP client for tests: it sends exactly the bytes
/// it is given, so tests can pipeline, smuggle and misbehave.
pub struct SmtpClient<S> {
    io: tokio::io::BufReader<S>,
}

/// A TLS stream to the stack.
pub type TlsClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl SmtpClient<tokio::net::TcpStream> {
    /// Connects and reads the greeting.
    pub async fn connect(addr: std::net::SocketAddr) -> (Self, (u16, String)) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = SmtpClient {
            io: tokio::io::BufReader::new(tcp),
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    /// Runs STARTTLS and the handshake (trusting the stack's certificate).
    pub async fn starttls(
        mut self,
        running: &Running,
    ) -> Result<SmtpClient<TlsClientStream>, String> {
        let (code, text) = self.cmd("STARTTLS").await;
        if code != 220 {
            return Err(format!("STARTTLS refused: {code} {text}"));
        }
        let tcp = self.io.into_inner();
        tls_connect(running, tcp).await.map(|s| SmtpClient {
            io: tokio::io::BufReader::new(s),
        })
    }
}

/// Connects with implicit TLS and reads the greeting.
pub async fn connect_tls(
    running: &Running,
    addr: std::net::SocketAddr,
) -> (SmtpClient<TlsClientStream>, (u16, String)) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tls_connect(running, tcp).await.unwrap();
    let mut c = SmtpClient {
        io: tokio::io::BufReader::new(tls),
    };
    let greeting = c.reply().await;
    (c, greeting)
}

/// A TLS client handshake that trusts the stack's generated certificate.
pub async fn tls_connect(
    running: &Running,
    tcp: tokio::net::TcpStream,
) -> Result<TlsClientStream, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(running.data_dir.path().join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(mailroom_net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> SmtpClient<S> {
    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply: its code and its lines joined by `\n`.
    /// `(0, "")` when the server closed the connection.
    pub async fn reply(&mut self) -> (u16, String) {
        use tokio::io::AsyncBufReadExt;
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.io.read_line(&mut line),
            )
            .await
            .expect("no reply within 10 s")
            .unwrap_or(0);
            if n == 0 {
                return (0, text.join("\n"));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text.join("\n"));
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// AUTH PLAIN with an initial response.
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> (u16, String) {
        let raw = format!("\0{user}\0{password}");
        self.cmd(&format!("AUTH PLAIN {}", base64_encode(raw.as_bytes())))
            .await
    }
}

/// Standard base64 (tests only; the server uses the base64 crate).
pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Creates `example.test` with the given accounts (password `PASSWORD`).
pub async fn with_accounts(running: &Running, accounts: &[&str]) -> mailroom_store::Store {
    let store = open_store(running).await;
    store
        .add_domain(&mailroom_address::Domain::parse("example.test").unwrap())
        .await
        .unwrap();
    for a in accounts {
        store
            .create_account(&mailroom_address::Address::parse(a).unwrap(), PASSWORD, 0)
            .await
            .unwrap();
    }
    store
}

/// The password of accounts made by [`with_accounts`].
pub const PASSWORD: &str = "correct horse battery";

impl<S: tokio::io::AsyncRead> SmtpClient<S> {
    /// Wraps a connected stream (e.g. after a hand-made TLS handshake).
    pub fn from_stream(stream: S) -> Self {
        SmtpClient {
            io: tokio::io::BufReader::new(stream),
        }
    }

    /// The underlying stream; anything the client had buffered is dropped.
    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }
}

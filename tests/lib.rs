//! Shared helpers for the end-to-end tests: start the real stack in-process
//! on port 0 against a throw-away store, and talk to it as a client would.

use mailroom::Stack;
use mailroom_config::Config;
use mailroom_rpc::admin::admin_client::AdminClient;
use mailroom_store::testing::TestDb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub mod imap_client;

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
    // Never ask the machine's resolver about test domains: remote recipients
    // of tests that do not run a DNS server of their own are deferred quickly.
    config.mta.dns_servers = vec!["127.0.0.1:1".parse().unwrap()];
    // Tests count failures, they need not wait for them.
    config.smtp.auth_failure_delay_ms = 10;
    config.pop3.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.pop3.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    config.pop3.auth_failure_delay_ms = 10;
    config.imap.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.imap.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    config.imap.auth_failure_delay_ms = 10;
    // The internal gRPC ports are opened too (credentials required), so
    // that tests can call Delivery and Queue as services run apart do.
    // Tests of the embedded default's closed ports turn this off.
    config.internal.expose = true;
    // Sender authentication needs a DNS server with the senders' records;
    // the tests of it (tests/sender_auth.rs) run one and turn this on.
    config.sender_auth.check_inbound = false;
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

/// The stack's internal secret (generated into its data directory).
pub fn internal_secret(running: &Running) -> mailroom_rpc::internal::InternalSecret {
    let text = std::fs::read_to_string(running.data_dir.path().join("internal-secret")).unwrap();
    mailroom_rpc::internal::InternalSecret::parse(&text).unwrap()
}

/// A Delivery client for the stack's MDA, with the MTA role's credential.
pub async fn delivery_client(
    running: &Running,
) -> mailroom_rpc::delivery::delivery_client::DeliveryClient<
    InterceptedService<Channel, mailroom_rpc::internal::AttachCredential>,
> {
    let url = format!("http://{}", running.stack.addr("mda").unwrap());
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let credential = internal_secret(running).credential(mailroom_rpc::internal::Role::Mta);
    mailroom_rpc::delivery::delivery_client::DeliveryClient::with_interceptor(
        channel,
        mailroom_rpc::internal::AttachCredential(credential),
    )
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

/// The id of `account`'s INBOX.
pub async fn inbox_id(store: &mailroom_store::Store, account: &str) -> i64 {
    mailbox_id(store, account, "INBOX").await
}

/// The id of `account`'s mailbox `name`.
pub async fn mailbox_id(store: &mailroom_store::Store, account: &str, name: &str) -> i64 {
    let acc = store
        .get_account(&mailroom_address::Address::parse(account).unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .list_mailboxes(acc.id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == name)
        .unwrap()
        .id
}

/// Serves `account`'s domain in `store` and creates the account (password
/// [`PASSWORD`]).
pub async fn serve_account(store: &mailroom_store::Store, account: &str) {
    let address = mailroom_address::Address::parse(account).unwrap();
    match store.add_domain(address.domain()).await {
        Ok(_) | Err(mailroom_store::StoreError::AlreadyExists(_)) => {}
        Err(e) => panic!("add domain: {e}"),
    }
    store.create_account(&address, PASSWORD, 0).await.unwrap();
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

// ---------------------------------------------------------------------------
// Outbound relay helpers: a DNS server and scriptable SMTP peers on loopback.
// ---------------------------------------------------------------------------

/// One record for [`TestDns`].
#[derive(Debug, Clone)]
pub enum DnsRecord {
    /// `MX preference exchange` (exchange `"."` is a null MX).
    Mx(u16, String),
    /// `A address`.
    A(std::net::Ipv4Addr),
    /// `TXT "..."`: one record, split into strings of at most 255 bytes.
    Txt(String),
}

/// An authoritative DNS server on 127.0.0.1 (UDP and TCP, one port) for one
/// test zone, built with hickory-server. Dropping it stops it.
pub struct TestDns {
    /// Where it listens (put it in `mta.dns_servers`).
    pub addr: std::net::SocketAddr,
    _server: hickory_server::Server<hickory_server::zone_handler::Catalog>,
}

impl TestDns {
    /// Serves `zone` (e.g. `"relay-a.test"`) with `records` as
    /// `(name relative to the zone or "@", record)`. Names not listed get
    /// NXDOMAIN, since the server is authoritative for the whole zone.
    pub async fn start(zone: &str, records: &[(&str, DnsRecord)]) -> TestDns {
        use hickory_proto::rr::rdata::{A, MX, SOA, TXT};
        use hickory_proto::rr::{LowerName, Name, RData, Record};
        use hickory_server::store::in_memory::InMemoryZoneHandler;
        use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

        let origin = Name::from_ascii(format!("{zone}.")).unwrap();
        let mut handler: InMemoryZoneHandler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_ascii(format!("ns.{zone}.")).unwrap(),
            Name::from_ascii(format!("hostmaster.{zone}.")).unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        assert!(handler.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1));
        for (name, record) in records {
            let owner = if *name == "@" {
                origin.clone()
            } else {
                Name::from_ascii(format!("{name}.{zone}.")).unwrap()
            };
            let data = match record {
                DnsRecord::Mx(preference, exchange) => {
                    let exchange = if exchange == "." {
                        Name::root()
                    } else {
                        Name::from_ascii(format!("{}.", exchange.trim_end_matches('.'))).unwrap()
                    };
                    RData::MX(MX::new(*preference, exchange))
                }
                DnsRecord::A(ip) => RData::A(A(*ip)),
                DnsRecord::Txt(text) => RData::TXT(TXT::new(
                    text.as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect(),
                )),
            };
            assert!(handler.upsert_mut(Record::from_rdata(owner, 60, data), 1));
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![std::sync::Arc::new(handler)]);
        // UDP and TCP on one port number: the TCP port may belong to another
        // test at that moment, so try fresh UDP ports until both are ours.
        let mut attempts = 0;
        let (udp, tcp, addr) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(_) if attempts < 50 => attempts += 1,
                Err(e) => panic!("no port free for both UDP and TCP: {e}"),
            }
        };
        let mut server = hickory_server::Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, std::time::Duration::from_secs(5), 4096);
        TestDns {
            addr,
            _server: server,
        }
    }
}

/// What a [`SmtpSink`] answers at the end of a message's data.
#[derive(Debug, Clone)]
pub enum SinkReply {
    /// This reply line, e.g. `"250 2.0.0 ok"`.
    Say(String),
    /// Say nothing and keep the connection open (a hung peer).
    Hang,
    /// Close the connection without a word.
    Drop,
}

/// One transaction a [`SmtpSink`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    /// The MAIL command line as sent (parameters included).
    pub mail: String,
    /// The reverse path without brackets (`""` for `<>`).
    pub from: String,
    /// The RCPT command lines the sink accepted.
    pub rcpts: Vec<String>,
    /// The accepted recipients, without brackets.
    pub to: Vec<String>,
    /// The data as received, dot-stuffing undone, without the final `.`.
    pub data: Vec<u8>,
    /// What the sink answered at the end of the data.
    pub answered: String,
    /// Whether the transaction ran over TLS (after STARTTLS).
    pub tls: bool,
    /// Which connection carried it (0 for the first the sink accepted).
    pub session: usize,
}

/// How a [`SmtpSink`] behaves.
pub struct SinkScript {
    /// EHLO extensions announced after the greeting line.
    pub extensions: Vec<String>,
    /// The reply to `RCPT TO:<address>`, given the address.
    pub rcpt: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// The reply at the end of data number `n` (0-based, over all sessions).
    pub data_end: Box<dyn Fn(usize) -> SinkReply + Send + Sync>,
    /// When set, STARTTLS is offered and accepted with this (see [`sink_tls`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Refuse EHLO with 502, like an SMTP server without extensions, so the
    /// client must fall back to HELO (RFC 5321 §4.1.4).
    pub refuse_ehlo: bool,
}

impl Default for SinkScript {
    fn default() -> Self {
        SinkScript {
            extensions: [
                "PIPELINING",
                "SIZE 10000000",
                "8BITMIME",
                "DSN",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            rcpt: Box::new(|_| "250 2.1.5 ok".into()),
            data_end: Box::new(|_| SinkReply::Say("250 2.0.0 queued".into())),
            tls: None,
            refuse_ehlo: false,
        }
    }
}

/// A scriptable SMTP server in the test, standing in for a remote MX.
pub struct SmtpSink {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<SinkMessage>>>,
    sessions: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    groups: std::sync::Arc<std::sync::Mutex<Vec<CommandGroup>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Commands a [`SmtpSink`] found waiting together: the first line, and
/// every line already buffered behind it (RFC 2920 pipelining shows as
/// groups of several commands; a client waiting for each reply sends
/// groups of one). Message content is not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandGroup {
    /// The connection (0 for the first the sink accepted).
    pub session: usize,
    /// The command lines, without CRLF.
    pub commands: Vec<String>,
}

impl CommandGroup {
    /// The command verbs, upper case (`MAIL`, `RCPT`, …).
    pub fn verbs(&self) -> Vec<String> {
        self.commands
            .iter()
            .map(|c| {
                c.split([' ', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase()
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// Listens on `ip:port` (port 0 for any).
    pub async fn bind(ip: &str, port: u16, script: SinkScript) -> SmtpSink {
        let listener =
            tokio::net::TcpListener::bind((ip.parse::<std::net::IpAddr>().unwrap(), port))
                .await
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sessions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let groups = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = std::sync::Arc::new(script);
        let data_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, s, g) = (received.clone(), sessions.clone(), groups.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let session = s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = SinkSeen {
                    session,
                    received: r.clone(),
                    groups: g.clone(),
                    data_count: data_count.clone(),
                };
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = sink_session(stream, &script, &seen).await;
                });
            }
        });
        SmtpSink {
            addr,
            received,
            sessions,
            groups,
            task,
        }
    }

    /// The transactions received so far.
    pub fn received(&self) -> Vec<SinkMessage> {
        self.received.lock().unwrap().clone()
    }

    /// How many connections were accepted.
    pub fn sessions(&self) -> usize {
        self.sessions.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The commands received, as they arrived together (see [`CommandGroup`]).
    pub fn command_groups(&self) -> Vec<CommandGroup> {
        self.groups.lock().unwrap().clone()
    }
}

/// What one sink session records into.
struct SinkSeen {
    session: usize,
    received: std::sync::Arc<std::sync::Mutex<Vec<SinkMessage>>>,
    groups: std::sync::Arc<std::sync::Mutex<Vec<CommandGroup>>>,
    data_count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn path_of(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(0);
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    line[start..end].to_string()
}

/// Where a sink session ended.
enum SinkEnd<S> {
    /// The session is over.
    Closed,
    /// The client asked for STARTTLS and was told 220: hand the stream over.
    StartTls(S),
}

async fn sink_session(
    stream: tokio::net::TcpStream,
    script: &SinkScript,
    seen: &SinkSeen,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut stream = stream;
    stream.write_all(b"220 sink.test ESMTP\r\n").await?;
    if let SinkEnd::StartTls(tcp) = sink_commands(stream, script, seen, false).await? {
        let acceptor = script
            .tls
            .clone()
            .expect("STARTTLS is only answered when configured");
        let tls = acceptor.accept(tcp).await?;
        sink_commands(tls, script, seen, true).await?;
    }
    Ok(())
}

async fn sink_commands<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    script: &SinkScript,
    seen: &SinkSeen,
    encrypted: bool,
) -> std::io::Result<SinkEnd<S>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (received, data_count) = (&*seen.received, &*seen.data_count);
    let mut io = tokio::io::BufReader::new(stream);
    let mut current: Option<SinkMessage> = None;
    let mut in_group = false;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(SinkEnd::Closed);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        {
            let mut groups = seen.groups.lock().unwrap();
            let last = groups.iter_mut().rev().find(|g| g.session == seen.session);
            match last {
                Some(g) if in_group => g.commands.push(line.clone()),
                _ => groups.push(CommandGroup {
                    session: seen.session,
                    commands: vec![line.clone()],
                }),
            }
        }
        // More already buffered: it came with this line.
        in_group = !io.buffer().is_empty();
        let upper = line.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") && script.refuse_ehlo {
            "502 5.5.2 EHLO not implemented\r\n".to_string()
        } else if upper.starts_with("EHLO") {
            let mut lines = vec!["sink.test".to_string()];
            lines.extend(script.extensions.iter().cloned());
            if script.tls.is_some() && !encrypted {
                lines.push("STARTTLS".into());
            }
            let n = lines.len();
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| format!("250{}{l}\r\n", if i + 1 == n { ' ' } else { '-' }))
                .collect::<String>()
        } else if upper == "STARTTLS" && script.tls.is_some() && !encrypted {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            return Ok(SinkEnd::StartTls(io.into_inner()));
        } else if upper.starts_with("HELO")
            || upper.starts_with("RSET")
            || upper.starts_with("NOOP")
        {
            "250 ok\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            current = Some(SinkMessage {
                mail: line.clone(),
                from: path_of(&line),
                rcpts: Vec::new(),
                to: Vec::new(),
                data: Vec::new(),
                answered: String::new(),
                tls: encrypted,
                session: seen.session,
            });
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let address = path_of(&line);
            let answer = (script.rcpt)(&address);
            if answer.starts_with('2')
                && let Some(m) = current.as_mut()
            {
                m.rcpts.push(line.clone());
                m.to.push(address);
            }
            format!("{answer}\r\n")
        } else if upper == "DATA" {
            match current.as_ref() {
                Some(m) if !m.to.is_empty() => {
                    io.get_mut().write_all(b"354 go ahead\r\n").await?;
                    let mut data = Vec::new();
                    loop {
                        let mut l = Vec::new();
                        if io.read_until(b'\n', &mut l).await? == 0 {
                            return Ok(SinkEnd::Closed);
                        }
                        if l == b".\r\n" {
                            break;
                        }
                        if l.starts_with(b"..") {
                            l.remove(0);
                        }
                        data.extend_from_slice(&l);
                    }
                    let n = data_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut m = current.take().unwrap();
                    m.data = data;
                    match (script.data_end)(n) {
                        SinkReply::Say(s) => {
                            m.answered = s.clone();
                            received.lock().unwrap().push(m);
                            format!("{s}\r\n")
                        }
                        SinkReply::Hang => {
                            m.answered = "(hung)".into();
                            received.lock().unwrap().push(m);
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            return Ok(SinkEnd::Closed);
                        }
                        SinkReply::Drop => {
                            m.answered = "(dropped)".into();
                            received.lock().unwrap().push(m);
                            return Ok(SinkEnd::Closed);
                        }
                    }
                }
                _ => "554 5.5.1 no valid recipients\r\n".into(),
            }
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(SinkEnd::Closed);
        } else {
            "502 5.5.2 not implemented\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// A TLS acceptor with a fresh self-signed certificate for `hostname`, for
/// a sink that offers STARTTLS; keep the directory alive as long as the sink.
pub fn sink_tls(hostname: &str) -> (tokio_rustls::TlsAcceptor, tempfile::TempDir) {
    mailroom_net::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = mailroom_net::tls::ensure_self_signed(dir.path(), hostname).unwrap();
    (mailroom_net::tls::acceptor(&cert, &key).unwrap(), dir)
}

/// Points the relay at a test DNS server (`dns`) and remote MX hosts on
/// `port`, with retries after a second and short session timeouts.
pub fn relay_to(config: &mut Config, dns: std::net::SocketAddr, port: u16, data_timeout_secs: u64) {
    config.mta.dns_servers = vec![dns];
    config.mta.outbound_port = port;
    config.mta.first_retry_secs = 1;
    config.mta.connect_timeout_secs = 5;
    config.mta.command_timeout_secs = 5;
    config.mta.data_timeout_secs = data_timeout_secs;
}

/// Binds a sink on 127.0.0.2 at a free port, so the test can put more sinks
/// on other loopback addresses at the same port (`mta.outbound_port` is one
/// number for every MX).
pub async fn first_sink(script: SinkScript) -> SmtpSink {
    SmtpSink::bind("127.0.0.2", 0, script).await
}

/// Waits until `check` holds, polling (background workers do the work).
pub async fn wait_for<F: AsyncFnMut() -> bool>(
    what: &str,
    limit: std::time::Duration,
    mut check: F,
) {
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Declares, for each named `async fn name(&Running)`, a module with two
/// tests running it against a fresh stack: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let running = $crate::start($crate::Backend::Sqlite).await.unwrap();
                super::$name(&running).await;
                running.stack.stop(std::time::Duration::from_secs(5)).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(running) = $crate::start($crate::Backend::Postgres).await else { return };
                super::$name(&running).await;
                running.stack.stop(std::time::Duration::from_secs(5)).await;
            }
        }
    )+};
}

/// Delivers `message` to `recipient` through the stack's MDA (gRPC
/// `Delivery.Deliver`), as the queue would; `queue_id` keeps deliveries
/// apart for idempotency.
pub async fn deliver_message(running: &Running, queue_id: i64, recipient: &str, message: &[u8]) {
    use mailroom_rpc::delivery::{DeliverRequest, Outcome};
    let outcome = delivery_client(running)
        .await
        .deliver(DeliverRequest {
            queue_id,
            sender: "sender@remote.test".into(),
            recipients: vec![recipient.to_string()],
            message: message.to_vec(),
            authentication_results: String::new(),
            quarantine: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome.outcomes[0].outcome,
        Outcome::Delivered as i32,
        "{:?}",
        outcome.outcomes[0]
    );
}

/// How long a real client or peer may run before it is killed and its test
/// fails: no tool can hang the test run.
pub const TOOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs a real client or peer (a tool `.ci/run` installs) to its end and
/// returns its output, stdout then stderr; panics with that output unless it
/// exits with one of `codes` within [`TOOL_DEADLINE`]. The tool gets no
/// stdin and its own process group, and the whole group is killed at the
/// deadline, so a tool waiting for a key press fails the test instead of
/// hanging it.
pub fn run_tool(what: &str, cmd: &mut std::process::Command, codes: &[i32]) -> String {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not be run ({e}); .ci/run installs it"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = std::time::Instant::now() + TOOL_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the tool") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Whatever the tool left running in its group goes too (it would keep
    // the output pipes open).
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => child.wait().expect("wait for the killed tool"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
        String::from_utf8_lossy(&stderr.join().unwrap_or_default())
    );
    assert!(
        !timed_out,
        "{what} did not finish within {TOOL_DEADLINE:?} and was killed:\n{text}"
    );
    assert!(
        status.code().is_some_and(|c| codes.contains(&c)),
        "{what} failed ({status:?}):\n{text}"
    );
    text
}

/// Runs the Python script `tests/interop/<script>` with `args` through
/// [`run_tool`] (exit status 0), off the async runtime; its output.
pub async fn run_python(script: &'static str, args: Vec<String>) -> String {
    let path = format!("{}/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    tokio::task::spawn_blocking(move || {
        run_tool(
            &format!("python3 {script}"),
            std::process::Command::new("python3").arg(path).args(args),
            &[0],
        )
    })
    .await
    .unwrap()
}

/// What one `mailroom mail …` command did.
#[derive(Debug)]
pub struct MailOutcome {
    /// Its exit code.
    pub code: u8,
    /// What it printed on stdout.
    pub stdout: Vec<u8>,
    /// What it printed on stderr.
    pub stderr: String,
}

impl MailOutcome {
    /// Stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with stderr unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "failed: {}", self.stderr);
        self
    }
}

/// Runs `mailroom <argv>` (a `mail` command) in-process with `stdin`, the
/// environment `env` and, when `interactive`, as if on a terminal.
pub async fn mail_command(
    argv: Vec<String>,
    stdin: &[u8],
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
    interactive: bool,
) -> MailOutcome {
    use clap::Parser;
    let cli = mailroom::Cli::try_parse_from(std::iter::once("mailroom".to_string()).chain(argv))
        .unwrap_or_else(|e| panic!("{e}"));
    let mailroom::cli::Command::Mail(args) = cli.command else {
        panic!("not a mail command")
    };
    let mut input = stdin;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut io = mailroom::mail_cli::MailIo {
        stdin: &mut input,
        stdout: &mut stdout,
        stderr: &mut stderr,
        env,
        interactive,
        progress: false,
    };
    let code = mailroom::mail_cli::run(&args, &mut io).await;
    MailOutcome {
        code,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Sends `a NOOP` and a LOGIN with a wrong password; returns what the
/// server said.
pub async fn imap_noop_and_failed_login(imap: std::net::SocketAddr) -> String {
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(imap).unwrap();
        let mut lines = BufReader::new(s.try_clone().unwrap());
        let mut greeting = String::new();
        lines.read_line(&mut greeting).unwrap();
        s.write_all(b"a NOOP\r\nb LOGIN bob@example.test wrong\r\n")
            .unwrap();
        let mut out = String::new();
        while !out.contains("b NO") {
            let mut l = String::new();
            if lines.read_line(&mut l).unwrap() == 0 {
                break;
            }
            out.push_str(&l);
        }
        out
    })
    .await
    .unwrap();
    assert!(text.contains("b NO [AUTHENTICATIONFAILED]"), "{text}");
    text
}

/// `GET url` with curl: the status code and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    let url = url.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_tool(
            "curl",
            std::process::Command::new("curl").args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                &url,
            ]),
            &[0],
        )
    })
    .await
    .unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// The body of a test that stands for a service process: runs `mailroom
/// <args>` as the binary does, the arguments taken from the environment
/// variable `var` (separated by U+001F), and exits with its status; does
/// nothing when `var` is unset (the test run by `--ignored`). Tests that
/// run services as processes of their own re-execute their own binary to
/// run only that test.
pub fn serve_from_env(var: &str) {
    let Ok(args) = std::env::var(var) else {
        return;
    };
    let cli = <mailroom::Cli as clap::Parser>::parse_from(
        std::iter::once("mailroom").chain(args.split('\u{1f}')),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(mailroom::run(cli));
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// Reads a service process's standard output to its end on a thread of
/// its own (so the pipe never fills) and waits up to 60 s for the banner's
/// last line, which says the ports are bound; whether it came.
pub async fn banner_printed(stdout: std::process::ChildStdout) -> bool {
    let (started, banner) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut started = Some(started);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Admin token:")
                && let Some(s) = started.take()
            {
                let _ = s.send(());
            }
        }
    });
    let up = tokio::time::timeout(std::time::Duration::from_secs(60), banner).await;
    matches!(up, Ok(Ok(())))
}

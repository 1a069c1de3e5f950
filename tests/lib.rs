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
    let (store, db) = match backend {
        Backend::Sqlite => TestDb::sqlite().await,
        Backend::Postgres => TestDb::postgres().await?,
    };
    store.close().await;
    let data_dir = tempfile::tempdir().unwrap();
    let stack = mailroom::start(test_config(data_dir.path(), &db.url), None)
        .await
        .expect("the stack starts");
    let admin_url = format!("http://{}", stack.addr("admin").unwrap());
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

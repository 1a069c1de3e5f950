//! SMTP server sessions for two services that share one engine:
//!
//! * **Submission** (MSA, RFC 6409; ports 587 and 2525 with STARTTLS, 465
//!   with implicit TLS per RFC 8314): AUTH is required before MAIL, the
//!   sender (envelope and `From:`) must belong to the authenticated account,
//!   any recipient may be addressed, and the MSA adds `Message-ID`/`Date` when
//!   missing.
//! * **Inbound** (MTA, port 25): no AUTH; recipients are accepted only for
//!   our own domains and existing users, so the server is never an open relay;
//!   each message's sender is checked (SPF, DKIM, DMARC, see
//!   `mailroom-sender-auth`) unless it comes from a trusted relay, and the
//!   `Authentication-Results` goes on top of it before it is queued.
//!
//! In both modes an `Authentication-Results` field claiming our host name as
//! authserv-id is removed from what arrives (RFC 8601 §5).
//!
//! Syntax comes from `mailroom-smtp-proto` (no parsing here); this crate is
//! the I/O and the policy. One session is one task; see [`session`] for the
//! state machine and its invariants.
//!
//! The durability contract: `250` after DATA/BDAT is written only after
//! `Queue.Enqueue` returned, i.e. after the database commit. Any failure to
//! enqueue is a `451 4.3.0`, and the client keeps the message; when the
//! store is out of disk space it is a `452 4.3.1` (RFC 3463 §3.4,
//! insufficient system storage).

use std::sync::Arc;
use std::time::Duration;

use mailroom_net::{CancellationToken, Connection, MailStream, Refusal, Session};
use mailroom_rpc::internal::{AttachCredential, Credential, Role};
use mailroom_rpc::queue::queue_client::QueueClient;
use mailroom_rpc::queue::queue_server::Queue;
use mailroom_sasl::SaslConfig;
use mailroom_smtp_proto::Reply;
use mailroom_store::Store;
use tokio::io::AsyncWriteExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod auth;
#[doc(hidden)]
pub mod fuzz;
mod message;
pub mod session;

pub use message::{received_header, rfc5322_date};

/// Which service a listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Message submission by authenticated users (MSA).
    Submission,
    /// Mail from other servers for our domains (MTA port 25).
    Inbound,
}

impl Mode {
    /// The role this service has towards the Queue (see
    /// `mailroom_rpc::internal`): only submission may relay.
    pub fn role(self) -> Role {
        match self {
            Mode::Submission => Role::Msa,
            Mode::Inbound => Role::Inbound,
        }
    }
}

/// Limits and policy of a session; defaults are close to Postfix's.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Our host name, in the greeting, EHLO reply and `Received:` headers.
    pub hostname: String,
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub max_message_size: usize,
    /// Recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// Errors (5xx replies to bad commands) before the session is closed.
    pub max_errors: usize,
    /// How long the server waits for a command.
    pub command_timeout: Duration,
    /// How long a whole DATA or BDAT transfer may take.
    pub data_timeout: Duration,
    /// Slowest acceptable transfer, bytes per second, checked after the first 30 s.
    pub min_data_rate: u64,
    /// Allow AUTH without TLS from loopback addresses (local scripts, tests).
    pub allow_plaintext_auth_on_loopback: bool,
    /// Wait after each failed AUTH (grows with each failure in a session).
    pub auth_failure_delay: Duration,
    /// Failed AUTHs in one session before it is closed.
    pub max_auth_failures: usize,
    /// Failed AUTHs from one IP within `auth_failure_window` before AUTH is refused outright.
    pub max_auth_failures_per_ip: usize,
    /// The window of the per-IP AUTH failure count.
    pub auth_failure_window: Duration,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            hostname: "localhost".into(),
            max_message_size: 25 << 20,
            max_recipients: 1000,
            max_line_length: 2048,
            max_errors: 20,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            min_data_rate: 1024,
            allow_plaintext_auth_on_loopback: true,
            auth_failure_delay: Duration::from_secs(1),
            max_auth_failures: 3,
            max_auth_failures_per_ip: 10,
            auth_failure_window: Duration::from_secs(900),
        }
    }
}

pub use mailroom_net::AuthThrottle;

/// Everything sessions share: settings, store, queue client, throttles.
#[derive(Debug)]
pub struct SmtpServer {
    pub(crate) mode: Mode,
    pub(crate) settings: SmtpSettings,
    pub(crate) store: Store,
    pub(crate) queue: QueueHandle,
    pub(crate) sasl: SaslConfig,
    pub(crate) throttle: Arc<AuthThrottle>,
    /// Inbound only: SPF/DKIM/DMARC checks (`None`: not checked).
    pub(crate) sender_auth: Option<SenderAuth>,
}

/// Sender authentication of an inbound server (see `mailroom-sender-auth`).
#[derive(Debug, Clone)]
pub struct SenderAuth {
    /// Runs the checks.
    pub checker: Arc<mailroom_sender_auth::Checker>,
    /// What failures do, per recipient domain, and whose mail is not
    /// checked (domains with checks off, trusted relays).
    pub policies: Arc<mailroom_sender_auth::Policies>,
}

/// Where accepted messages go: the MTA's `Queue` service.
#[derive(Clone)]
pub enum QueueHandle {
    /// Over gRPC, when the MTA runs in another process; every call carries
    /// this service's role credential.
    Remote(QueueClient<InterceptedService<Channel, AttachCredential>>),
    /// The Queue implementation of this process, called directly: the same
    /// code and the same durability contract, without encoding the message
    /// into HTTP/2 frames and back on every acceptance.
    Local(Arc<dyn Queue>),
}

impl QueueHandle {
    /// A gRPC client on `channel`, presenting `credential`.
    pub fn remote(channel: Channel, credential: Credential) -> Self {
        QueueHandle::Remote(
            QueueClient::with_interceptor(channel, AttachCredential(credential))
                .max_encoding_message_size(mailroom_smtp_proto_max()),
        )
    }
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueHandle::Remote(_) => "QueueHandle::Remote",
            QueueHandle::Local(_) => "QueueHandle::Local",
        })
    }
}

impl SmtpServer {
    /// A server for `mode` that hands accepted messages to `queue`.
    pub fn new(
        mode: Mode,
        settings: SmtpSettings,
        store: Store,
        queue: QueueHandle,
        throttle: Arc<AuthThrottle>,
    ) -> Self {
        SmtpServer {
            mode,
            settings,
            store,
            queue,
            sasl: SaslConfig::default(),
            throttle,
            sender_auth: None,
        }
    }

    /// Checks the sender authentication of what arrives (inbound mode; a
    /// submission server ignores it: its users are authenticated).
    pub fn with_sender_auth(mut self, sender_auth: SenderAuth) -> Self {
        self.sender_auth = Some(sender_auth);
        self
    }
}

fn mailroom_smtp_proto_max() -> usize {
    256 << 20
}

impl Session for SmtpServer {
    async fn serve(&self, conn: Connection, shutdown: CancellationToken) {
        session::run(self, conn, shutdown).await;
    }

    async fn refuse(&self, mut stream: MailStream, why: Refusal) {
        let text = match why {
            Refusal::TooManyConnections => "too many connections, try again later",
            Refusal::TooManyFromAddress => {
                "too many connections from your address, try again later"
            }
        };
        let reply = Reply::new(421, "4.7.0", format!("{} {text}", self.settings.hostname));
        let _ = stream.write_all(&reply.to_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

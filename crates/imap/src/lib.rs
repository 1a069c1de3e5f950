//! IMAP server sessions: IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501) over
//! the mailboxes of `mailroom-store`, on ports 143 (STARTTLS) and 993
//! (implicit TLS, RFC 8314).
//!
//! Protocol syntax comes from `imap-codec`: its `Fragmentizer` frames
//! commands (lines and literals, in bounded memory) and its `CommandCodec`
//! parses them; FETCH responses are written with its `ResponseCodec`. A few
//! RFC 9051 syntax forms the codec does not parse yet (LIST selection and
//! RETURN options, SEARCH RETURN) are lifted off the command line by
//! [`preparse`] before the codec sees it.
//!
//! One session is one task; [`session`] holds the state machine and the
//! table of commands allowed in each state. What a session knows about its
//! selected mailbox lives in [`selected`]; the message-number rules of
//! RFC 9051 §7.5.1 (when EXPUNGE may be sent) are enforced there.
//!
//! Policy:
//! * LOGIN and AUTHENTICATE need TLS, except from loopback when
//!   `allow_plaintext_auth_on_loopback` is set; before that the server
//!   advertises LOGINDISABLED and no AUTH= mechanisms;
//! * failed logins are slowed down, the session is closed after
//!   `max_auth_failures`, and an IP with too many recent failures across all
//!   its connections is refused before its credentials are checked;
//! * sessions that stay idle are closed (`idle_timeout` before login,
//!   `authenticated_idle_timeout` after, at least 30 minutes per RFC 9051
//!   §5.4); IDLE itself is ended after `authenticated_idle_timeout` too.

use std::sync::Arc;
use std::time::Duration;

use mailroom_net::{CancellationToken, Connection, MailStream, Refusal, Session};
use mailroom_sasl::SaslConfig;
use mailroom_store::Store;
use tokio::io::AsyncWriteExt;

mod acl;
mod append;
mod auth;
pub mod compress;
mod fetch;
#[doc(hidden)]
pub mod fuzz;
mod metadata;
pub mod names;
pub mod notify;
mod objectid;
pub mod preparse;
mod search;
pub mod selected;
pub mod session;
mod sort;
mod specialuse;
mod thread;

pub use mailroom_net::AuthThrottle;

/// Limits and policy of a session.
#[derive(Debug, Clone)]
pub struct ImapSettings {
    /// Our host name, in the greeting.
    pub hostname: String,
    /// How long a session may be idle before login.
    pub idle_timeout: Duration,
    /// How long a logged-in session may be idle (RFC 9051 §5.4: at least 30 minutes).
    pub authenticated_idle_timeout: Duration,
    /// Allow logins without TLS from loopback addresses.
    pub allow_plaintext_auth_on_loopback: bool,
    /// Wait after each failed login (grows with each failure in a session).
    pub auth_failure_delay: Duration,
    /// Failed logins in one session before it is closed.
    pub max_auth_failures: usize,
    /// Failed logins from one IP within `auth_failure_window` before logins are refused outright.
    pub max_auth_failures_per_ip: usize,
    /// The window of the per-IP failure count.
    pub auth_failure_window: Duration,
    /// Largest message APPEND accepts, in bytes (also bounds any literal).
    pub max_message_size: u32,
    /// Longest command line (without literals), in bytes.
    pub max_line_length: u32,
    /// Most mailboxes a session may watch with NOTIFY ([`notify`]).
    pub max_notify_mailboxes: usize,
}

impl Default for ImapSettings {
    fn default() -> Self {
        ImapSettings {
            hostname: "localhost".into(),
            idle_timeout: Duration::from_secs(60),
            authenticated_idle_timeout: Duration::from_secs(30 * 60),
            allow_plaintext_auth_on_loopback: true,
            auth_failure_delay: Duration::from_secs(1),
            max_auth_failures: 3,
            max_auth_failures_per_ip: 10,
            auth_failure_window: Duration::from_secs(900),
            max_message_size: 50 * 1024 * 1024,
            max_line_length: 64 * 1024,
            max_notify_mailboxes: 1000,
        }
    }
}

/// Everything sessions share: settings, store, throttle.
#[derive(Debug)]
pub struct ImapServer {
    pub(crate) settings: ImapSettings,
    pub(crate) store: Store,
    pub(crate) sasl: SaslConfig,
    pub(crate) throttle: Arc<AuthThrottle>,
}

impl ImapServer {
    /// A server over `store`.
    pub fn new(settings: ImapSettings, store: Store, throttle: Arc<AuthThrottle>) -> Self {
        ImapServer {
            settings,
            store,
            sasl: SaslConfig::default(),
            throttle,
        }
    }
}

impl Session for ImapServer {
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
        // RFC 9051 §7.1.5: BYE as the greeting refuses the connection.
        let _ = stream
            .write_all(format!("* BYE [UNAVAILABLE] {text}\r\n").as_bytes())
            .await;
        let _ = stream.shutdown().await;
    }
}

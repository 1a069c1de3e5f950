//! POP3 server sessions (RFC 1939) with the extensions real downloaders use:
//! CAPA, TOP, UIDL, USER, SASL (RFC 5034: PLAIN and SCRAM-SHA-256), STLS
//! (RFC 2595), RESP-CODES and AUTH-RESP-CODE (RFC 2449, RFC 3206),
//! PIPELINING, EXPIRE NEVER and IMPLEMENTATION.
//!
//! Listeners come in two kinds, as for SMTP submission: cleartext with STLS
//! (port 110) and implicit TLS (port 995, RFC 8314). One session is one task;
//! see [`session`] for the state machine and its invariants.
//!
//! Policy:
//! * logins (USER/PASS and AUTH) need TLS, except from loopback when
//!   `allow_plaintext_auth_on_loopback` is set;
//! * failed logins are slowed down, the session is closed after
//!   `max_auth_failures`, and an IP with too many recent failures across all
//!   its connections is answered `-ERR [SYS/TEMP]` without its credentials
//!   being checked;
//! * one session per maildrop (`-ERR [IN-USE]`), see
//!   [`mailroom_store::Store::lock_maildrop`].

use std::sync::Arc;
use std::time::Duration;

use mailroom_net::{CancellationToken, Connection, MailStream, Refusal, Session};
use mailroom_sasl::SaslConfig;
use mailroom_store::Store;
use tokio::io::AsyncWriteExt;

mod auth;
pub mod command;
#[doc(hidden)]
pub mod fuzz;
pub mod session;

/// Limits and policy of a session.
#[derive(Debug, Clone)]
pub struct Pop3Settings {
    /// Our host name, in the greeting.
    pub hostname: String,
    /// How long a session may be idle (RFC 1939 §3: at least 10 minutes).
    pub idle_timeout: Duration,
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
}

impl Default for Pop3Settings {
    fn default() -> Self {
        Pop3Settings {
            hostname: "localhost".into(),
            idle_timeout: Duration::from_secs(600),
            allow_plaintext_auth_on_loopback: true,
            auth_failure_delay: Duration::from_secs(1),
            max_auth_failures: 3,
            max_auth_failures_per_ip: 10,
            auth_failure_window: Duration::from_secs(900),
        }
    }
}

pub use mailroom_net::AuthThrottle;

/// Everything sessions share: settings, store, throttle.
#[derive(Debug)]
pub struct Pop3Server {
    pub(crate) settings: Pop3Settings,
    pub(crate) store: Store,
    pub(crate) sasl: SaslConfig,
    pub(crate) throttle: Arc<AuthThrottle>,
}

impl Pop3Server {
    /// A server over `store`.
    pub fn new(settings: Pop3Settings, store: Store, throttle: Arc<AuthThrottle>) -> Self {
        Pop3Server {
            settings,
            store,
            sasl: SaslConfig::default(),
            throttle,
        }
    }
}

impl Session for Pop3Server {
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
        // RFC 2449 §8.1.2 / RFC 3206 §4: SYS/TEMP for a transient condition.
        let _ = stream
            .write_all(format!("-ERR [SYS/TEMP] {text}\r\n").as_bytes())
            .await;
        let _ = stream.shutdown().await;
    }
}

//! Everything between a listening socket and a protocol session.
//!
//! * [`Listener`]: a bound TCP socket that knows its service and TLS mode
//!   (plain, STARTTLS, implicit TLS), so `mailroom serve` can print what it
//!   listens on and each protocol crate receives ready-made connections.
//! * [`serve`]: the accept loop. It enforces the global and per-IP
//!   connection caps *before* spending anything on a client, performs the
//!   implicit-TLS handshake under a timeout, and runs each session as a task
//!   tracked by [`Shutdown`], so a drain can wait for it.
//! * [`tls`]: rustls configuration from PEM files, and the self-signed
//!   certificate of the embedded default.
//! * [`MailStream`]: a plain or TLS stream with in-place STARTTLS upgrade.
//!
//! Invariant: the accept loop never awaits a client. Anything that could
//! block on one (handshake, refusal message) runs in its own task, so one
//! slow client cannot stop others from being accepted.

mod limits;
mod listener;
mod shutdown;
mod stream;
pub mod tls;

pub use limits::{AuthThrottle, ConnectionLimiter, ConnectionPermit, Refusal};
pub use listener::{Connection, Listener, ServeContext, Session, TlsMode, serve};
pub use shutdown::Shutdown;
pub use stream::{MailStream, TlsInfo};
pub use tokio_util::sync::CancellationToken;

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 included): the
/// address class that the "plaintext login on loopback" exemptions of
/// SMTP submission, IMAP and POP3 allow.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

//! Logins: LOGIN (RFC 9051 §6.2.3) and AUTHENTICATE (RFC 9051 §6.2.2 with
//! SASL-IR, RFC 4959) over the exchanges of `mailroom-sasl`: PLAIN and
//! SCRAM-SHA-256.
//!
//! Policy: logins over TLS, or from loopback when the exemption is
//! configured (`NO [PRIVACYREQUIRED]` otherwise; LOGINDISABLED is
//! advertised). Each failure is counted for the session and for the
//! client's IP and followed by a delay that grows with the session's
//! failures; after `max_auth_failures` the session is closed with BYE, and
//! an IP over its limit is refused (`NO [UNAVAILABLE]`) before any
//! credential is checked.

use mailroom_login::{Answer, Challenger, Failures, Login, Verdict};
use mailroom_net::CancellationToken;
use mailroom_sasl::{Mechanism, SaslError, encode_challenge};
use mailroom_store::Account;

use crate::ImapServer;
use crate::session::{End, Input, Io, State};

/// The tagged answer to a failed exchange.
fn reply_for(e: &SaslError) -> &'static str {
    match e {
        SaslError::Cancelled => "BAD authentication cancelled",
        SaslError::Malformed(_) => "BAD cannot decode the authentication response",
        SaslError::UnsupportedMechanism => "NO [CANNOT] unsupported authentication mechanism",
        SaslError::OutOfSequence => "NO [UNAVAILABLE] temporary authentication failure",
        _ => "NO [AUTHENTICATIONFAILED] authentication failed",
    }
}

/// The failure policy of this server's settings.
fn failures(server: &ImapServer) -> Failures {
    let s = &server.settings;
    Failures {
        delay: s.auth_failure_delay,
        max_per_session: s.max_auth_failures,
        max_per_ip: s.max_auth_failures_per_ip,
        window: s.auth_failure_window,
    }
}

/// What must hold before credentials are looked at. `false` when a
/// refusal was written.
fn may_try(server: &ImapServer, io: &mut Io, state: &State, tag: &str) -> bool {
    if !server.auth_permitted(state) {
        io.line(&format!(
            "{tag} NO [PRIVACYREQUIRED] plaintext authentication disallowed: use STARTTLS first"
        ));
        return false;
    }
    if failures(server).blocked(&server.throttle, state.peer.ip()) {
        io.line(&format!(
            "{tag} NO [UNAVAILABLE] too many failed logins from your address, try again later"
        ));
        return false;
    }
    true
}

/// `LOGIN user password`.
pub(crate) async fn login(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    user: &str,
    password: &str,
) -> Option<End> {
    if !may_try(server, io, state, tag) {
        return None;
    }
    match mailroom_login::password(&server.store, user, password).await {
        Login::Account(account) => {
            logged_in(server, io, state, tag, account);
            None
        }
        Login::Failed(e) => fail(server, io, state, tag, e).await,
        Login::Unavailable(_) | Login::Ended(_) => {
            io.line(&format!(
                "{tag} NO [UNAVAILABLE] temporary authentication failure"
            ));
            None
        }
    }
}

/// Challenges are `+ base64` continuations; answers are lines (RFC 9051
/// §6.2.2).
struct ImapChallenger<'a> {
    io: &'a mut Io,
    idle: std::time::Duration,
    shutdown: &'a CancellationToken,
}

impl Challenger for ImapChallenger<'_> {
    type End = End;

    async fn challenge(&mut self, data: &[u8]) -> Result<Answer, End> {
        self.io.line(&format!("+ {}", encode_challenge(data)));
        Ok(match self.io.next(self.idle, self.shutdown).await? {
            Input::Message(line) => Answer::Line(strip_crlf(&line).to_vec()),
            Input::Refused { .. } => Answer::TooLong,
        })
    }
}

/// `AUTHENTICATE mechanism [initial-response]`.
pub(crate) async fn authenticate(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    mechanism: &str,
    initial: Option<Vec<u8>>,
    shutdown: &CancellationToken,
) -> Option<End> {
    if !may_try(server, io, state, tag) {
        return None;
    }
    // LOGIN exists in mailroom-sasl for SMTP clients; IMAP offers what CAPABILITY says.
    let mech = match Mechanism::from_name(mechanism) {
        Ok(m) if m != Mechanism::Login => m,
        _ => {
            io.line(&format!(
                "{tag} {}",
                reply_for(&SaslError::UnsupportedMechanism)
            ));
            return None;
        }
    };
    // The codec already decoded the base64 initial response ("=" is empty).
    let idle = server.settings.idle_timeout;
    let mut challenger = ImapChallenger { io, idle, shutdown };
    let login =
        mailroom_login::sasl(&server.store, &server.sasl, mech, initial, &mut challenger).await;
    match login {
        Login::Account(account) => {
            logged_in(server, io, state, tag, account);
            None
        }
        Login::Failed(e) => fail(server, io, state, tag, e).await,
        Login::Unavailable(_) => {
            io.line(&format!(
                "{tag} NO [UNAVAILABLE] temporary authentication failure"
            ));
            None
        }
        Login::Ended(end) => Some(end),
    }
}

fn strip_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Records the login and answers with the capabilities of the new state
/// (RFC 9051 §6.2.2: a CAPABILITY response code saves a round trip).
fn logged_in(server: &ImapServer, io: &mut Io, state: &mut State, tag: &str, account: Account) {
    tracing::info!(account = %account.address, ip = %state.peer.ip(), "IMAP login");
    state.account = Some(account);
    state.phase = crate::session::Phase::Authenticated;
    let caps = crate::session::capabilities(server, state, false);
    io.line(&format!("{tag} OK [CAPABILITY {caps}] logged in"));
}

/// Answers a failed login, slowing the client down and counting the failure.
async fn fail(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    tag: &str,
    e: SaslError,
) -> Option<End> {
    let ip = state.peer.ip();
    let verdict = failures(server)
        .failed(&server.throttle, ip, &mut state.auth_failures, &e)
        .await;
    io.line(&format!("{tag} {}", reply_for(&e)));
    match verdict {
        Verdict::Close => Some(
            io.close_with("* BYE too many authentication failures, closing")
                .await,
        ),
        Verdict::Answer => None,
    }
}

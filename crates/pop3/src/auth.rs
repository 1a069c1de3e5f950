//! Logins: USER/PASS (RFC 1939 §7) and AUTH (RFC 5034) over the SASL
//! exchanges of `mailroom-sasl`, with the response codes of RFC 2449 §8 and
//! RFC 3206 (`[AUTH]` for bad credentials, `[SYS/TEMP]` for anything the
//! client should retry later).
//!
//! Policy: logins over TLS, or from loopback when the exemption is
//! configured (`-ERR [AUTH]` otherwise, as Dovecot answers). Each failure is
//! counted for the session and for the client's IP, followed by a delay that
//! grows with the session's failures; after `max_auth_failures` the session
//! is closed, and an IP over its limit is refused before any credential is
//! checked.

use mailroom_login::{Answer, Challenger, Failures, Login, Verdict};
use mailroom_net::CancellationToken;
use mailroom_sasl::{Mechanism, SaslError, decode_client_response, encode_challenge};

use crate::Pop3Server;
use crate::session::{End, Io, MAX_SASL_LINE, State, enter_transaction};

/// The POP3 answer to a failed exchange (the table in `mailroom-sasl`'s
/// `SaslError` docs, RFC 5034 §4).
fn reply_for(e: &SaslError) -> &'static str {
    match e {
        SaslError::Cancelled => "-ERR authentication cancelled",
        SaslError::Malformed(_) => "-ERR cannot decode the authentication response",
        SaslError::UnsupportedMechanism => "-ERR unsupported authentication mechanism",
        SaslError::OutOfSequence => "-ERR [SYS/TEMP] temporary authentication failure",
        _ => "-ERR [AUTH] authentication failed",
    }
}

/// The failure policy of this server's settings.
fn failures(server: &Pop3Server) -> Failures {
    let s = &server.settings;
    Failures {
        delay: s.auth_failure_delay,
        max_per_session: s.max_auth_failures,
        max_per_ip: s.max_auth_failures_per_ip,
        window: s.auth_failure_window,
    }
}

/// Checks what must hold before credentials are looked at: TLS policy and
/// the per-IP throttle. `false` when a refusal was written.
fn may_try(server: &Pop3Server, io: &mut Io, state: &State) -> bool {
    if !server.auth_permitted(state) {
        io.err("[AUTH] plaintext authentication disallowed: use STLS first");
        return false;
    }
    if failures(server).blocked(&server.throttle, state.peer.ip()) {
        io.err("[SYS/TEMP] too many failed logins from your address, try again later");
        return false;
    }
    true
}

/// `PASS` after `USER name`.
pub(crate) async fn pass(
    server: &Pop3Server,
    io: &mut Io,
    state: &mut State,
    name: &str,
    password: &str,
) -> Option<End> {
    if !may_try(server, io, state) {
        return None;
    }
    match mailroom_login::password(&server.store, name, password).await {
        Login::Account(account) => {
            enter_transaction(server, io, state, account).await;
            None
        }
        Login::Failed(e) => fail(server, io, state, e).await,
        Login::Unavailable(_) | Login::Ended(_) => {
            io.err("[SYS/TEMP] temporary authentication failure");
            None
        }
    }
}

/// Challenges are `+ base64` lines, answers lines of at most
/// `MAX_SASL_LINE` (RFC 5034 §4).
struct Pop3Challenger<'a> {
    io: &'a mut Io,
    shutdown: &'a CancellationToken,
}

impl Challenger for Pop3Challenger<'_> {
    type End = End;

    async fn challenge(&mut self, data: &[u8]) -> Result<Answer, End> {
        self.io.line(&format!("+ {}", encode_challenge(data)));
        Ok(
            match self.io.read_line(MAX_SASL_LINE, self.shutdown).await? {
                Some(line) => Answer::Line(line),
                None => Answer::TooLong,
            },
        )
    }
}

/// `AUTH mechanism [initial-response]` (RFC 5034 §4).
pub(crate) async fn sasl(
    server: &Pop3Server,
    io: &mut Io,
    state: &mut State,
    mechanism: &str,
    initial: Option<String>,
    shutdown: &CancellationToken,
) -> Option<End> {
    if !may_try(server, io, state) {
        return None;
    }
    // LOGIN exists in mailroom-sasl for SMTP clients; POP3 offers what CAPA says.
    let mech = match Mechanism::from_name(mechanism) {
        Ok(m) if m != Mechanism::Login => m,
        _ => {
            io.line(reply_for(&SaslError::UnsupportedMechanism));
            return None;
        }
    };
    let initial = match initial
        .map(|ir| decode_client_response(ir.as_bytes()))
        .transpose()
    {
        Ok(ir) => ir,
        Err(e) => {
            io.line(reply_for(&e));
            return None;
        }
    };
    let mut challenger = Pop3Challenger { io, shutdown };
    let login =
        mailroom_login::sasl(&server.store, &server.sasl, mech, initial, &mut challenger).await;
    match login {
        Login::Account(account) => {
            enter_transaction(server, io, state, account).await;
            None
        }
        Login::Failed(e) => fail(server, io, state, e).await,
        Login::Unavailable(_) => {
            io.err("[SYS/TEMP] temporary authentication failure");
            None
        }
        Login::Ended(end) => Some(end),
    }
}

/// Answers a failed login, slowing the client down and counting the failure.
async fn fail(server: &Pop3Server, io: &mut Io, state: &mut State, e: SaslError) -> Option<End> {
    let ip = state.peer.ip();
    match failures(server)
        .failed(&server.throttle, ip, &mut state.auth_failures, &e)
        .await
    {
        Verdict::Close => Some(
            io.close_with("-ERR [AUTH] authentication failed; too many failures, closing")
                .await,
        ),
        Verdict::Answer => {
            io.line(reply_for(&e));
            None
        }
    }
}

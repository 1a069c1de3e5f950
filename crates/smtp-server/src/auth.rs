//! SMTP AUTH (RFC 4954) over the SASL exchanges of `mailroom-sasl`.
//!
//! Policy: submission only; over TLS, or from loopback when the exemption
//! is configured (otherwise `538 5.7.11`). Failures are slowed down (the
//! delay grows with each failure in the session), the session is closed after
//! `max_auth_failures`, and an IP with too many recent failures across all
//! its connections gets `454 4.7.0` without its credentials being checked.

use mailroom_login::{Answer, Challenger, Failures, Login, Verdict};
use mailroom_sasl::{Mechanism, SaslError, decode_client_response, encode_challenge};
use mailroom_smtp_proto::Reply;

use crate::SmtpServer;
use crate::session::{End, Io, State, read_line};

fn reply_for(e: &SaslError) -> Reply {
    let (code, status, text) = e.smtp_reply();
    Reply::new(code, status, text)
}

/// Runs one AUTH command. Returns `Some(End)` when the session must end.
pub(crate) async fn authenticate(
    server: &SmtpServer,
    io: &mut Io,
    state: &mut State,
    mechanism: &str,
    initial_response: Option<String>,
) -> Option<End> {
    if server.mode != crate::Mode::Submission {
        io.reply(&Reply::new(
            503,
            "5.5.1",
            "AUTH is not available on this port",
        ));
        return None;
    }
    if !server.auth_permitted(state) {
        // RFC 4954 §6: 538 when the mechanism needs an encrypted session.
        io.reply(&Reply::new(
            538,
            "5.7.11",
            "encryption required: use STARTTLS first",
        ));
        return None;
    }
    if state.account.is_some() {
        io.reply(&Reply::new(503, "5.5.1", "already authenticated"));
        return None;
    }
    if state.has_transaction() {
        io.reply(&Reply::new(
            503,
            "5.5.1",
            "AUTH is not allowed during a mail transaction",
        ));
        return None;
    }
    if failures(server).blocked(&server.throttle, state.peer.ip()) {
        io.reply(&Reply::new(
            454,
            "4.7.0",
            "too many failed authentications; try again later",
        ));
        return None;
    }
    let mech = match Mechanism::from_name(mechanism) {
        Ok(m) => m,
        Err(e) => {
            io.reply(&reply_for(&e));
            return None;
        }
    };
    let initial = match initial_response
        .map(|ir| decode_client_response(ir.as_bytes()))
        .transpose()
    {
        Ok(ir) => ir,
        Err(e) => {
            io.reply(&reply_for(&e));
            return None;
        }
    };
    let mut challenger = SmtpChallenger { io, server };
    let login =
        mailroom_login::sasl(&server.store, &server.sasl, mech, initial, &mut challenger).await;
    match login {
        Login::Account(account) => {
            tracing::info!(account = %account.address, mechanism = mech.name(), "authenticated");
            state.account = Some(account.address.to_string());
            io.reply(&Reply::new(235, "2.7.0", "authentication successful"));
            None
        }
        Login::Failed(e) => fail(server, io, state, e).await,
        Login::Unavailable(_) => {
            io.reply(&Reply::new(
                454,
                "4.7.0",
                "temporary authentication failure",
            ));
            None
        }
        Login::Ended(end) => Some(end),
    }
}

/// Challenges are `334 base64` replies; answers are lines (RFC 4954 §4).
struct SmtpChallenger<'a> {
    io: &'a mut Io,
    server: &'a SmtpServer,
}

impl Challenger for SmtpChallenger<'_> {
    type End = End;

    async fn challenge(&mut self, data: &[u8]) -> Result<Answer, End> {
        self.io
            .raw(format!("334 {}\r\n", encode_challenge(data)).as_bytes());
        read_line(self.io, &self.server.settings)
            .await
            .map(Answer::Line)
    }
}

/// The failure policy of this server's settings.
fn failures(server: &SmtpServer) -> Failures {
    let s = &server.settings;
    Failures {
        delay: s.auth_failure_delay,
        max_per_session: s.max_auth_failures,
        max_per_ip: s.max_auth_failures_per_ip,
        window: s.auth_failure_window,
    }
}

/// Answers a failed AUTH, slowing the client down and counting the failure.
async fn fail(server: &SmtpServer, io: &mut Io, state: &mut State, e: SaslError) -> Option<End> {
    let ip = state.peer.ip();
    let verdict = failures(server)
        .failed(&server.throttle, ip, &mut state.auth_failures, &e)
        .await;
    io.reply(&reply_for(&e));
    match verdict {
        Verdict::Close => Some(
            io.close_with(Reply::new(
                421,
                "4.7.0",
                "too many failed authentications, closing",
            ))
            .await,
        ),
        Verdict::Answer => None,
    }
}

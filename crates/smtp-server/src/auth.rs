//! SMTP AUTH (RFC 4954) over the SASL exchanges of `mailroom-sasl`.
//!
//! Policy: submission only; over TLS, or from loopback when the exemption
//! is configured (otherwise `538 5.7.11`). Failures are slowed down (the
//! delay grows with each failure in the session), the session is closed after
//! `max_auth_failures`, and an IP with too many recent failures across all
//! its connections gets `454 4.7.0` without its credentials being checked.

use mailroom_address::Address;
use mailroom_sasl::{
    Mechanism, SaslError, ServerExchange, Step, decode_client_response, encode_challenge,
};
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
    let s = &server.settings;
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
    let ip = state.peer.ip();
    if server
        .throttle
        .is_blocked(ip, s.max_auth_failures_per_ip, s.auth_failure_window)
    {
        tracing::warn!(%ip, "AUTH refused: too many recent failures from this address");
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
    let (mut exchange, mut step) = ServerExchange::start(mech, initial, &server.sasl);
    loop {
        step = match step {
            Step::Challenge(data) => {
                io.raw(format!("334 {}\r\n", encode_challenge(&data)).as_bytes());
                match read_line(io, s).await {
                    Ok(line) => exchange.respond_line(&line),
                    Err(end) => return Some(end),
                }
            }
            Step::NeedCredentials(request) => {
                match server.store.answer_sasl(&mut exchange, request).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(error = %e, "credential check failed");
                        io.reply(&Reply::new(
                            454,
                            "4.7.0",
                            "temporary authentication failure",
                        ));
                        return None;
                    }
                }
            }
            Step::Success {
                authcid,
                authzid,
                final_data,
            } => {
                let Ok(account) = Address::parse(&authcid) else {
                    return fail(server, io, state, SaslError::AuthenticationFailed).await;
                };
                // Acting as someone else is not offered: an authzid must name the same account.
                if let Some(z) = authzid.filter(|z| !z.is_empty())
                    && Address::parse(&z).ok().as_ref() != Some(&account)
                {
                    return fail(server, io, state, SaslError::AuthenticationFailed).await;
                }
                if let Some(data) = final_data {
                    io.raw(format!("334 {}\r\n", encode_challenge(&data)).as_bytes());
                    match read_line(io, s).await {
                        Ok(line) if line.trim_ascii() == b"*" => {
                            io.reply(&reply_for(&SaslError::Cancelled));
                            return None;
                        }
                        Ok(_) => {}
                        Err(end) => return Some(end),
                    }
                }
                tracing::info!(account = %account, mechanism = mech.name(), "authenticated");
                state.account = Some(account.to_string());
                io.reply(&Reply::new(235, "2.7.0", "authentication successful"));
                return None;
            }
            Step::Failure(e) => return fail(server, io, state, e).await,
        };
    }
}

/// Answers a failed AUTH, slowing the client down and counting the failure.
async fn fail(server: &SmtpServer, io: &mut Io, state: &mut State, e: SaslError) -> Option<End> {
    let s = &server.settings;
    if matches!(
        e,
        SaslError::Cancelled | SaslError::Malformed(_) | SaslError::UnsupportedMechanism
    ) {
        io.reply(&reply_for(&e));
        return None;
    }
    state.auth_failures += 1;
    server
        .throttle
        .record_failure(state.peer.ip(), s.auth_failure_window);
    tracing::warn!(ip = %state.peer.ip(), failures = state.auth_failures, "authentication failed");
    tokio::time::sleep(s.auth_failure_delay * state.auth_failures as u32).await;
    if state.auth_failures >= s.max_auth_failures {
        io.reply(&reply_for(&e));
        return Some(
            io.close_with(Reply::new(
                421,
                "4.7.0",
                "too many failed authentications, closing",
            ))
            .await,
        );
    }
    io.reply(&reply_for(&e));
    None
}

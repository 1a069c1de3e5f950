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

use mailroom_address::Address;
use mailroom_net::CancellationToken;
use mailroom_sasl::{
    Mechanism, SaslError, ServerExchange, Step, decode_client_response, encode_challenge,
};
use mailroom_store::Account;

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

/// Checks what must hold before credentials are looked at: TLS policy and
/// the per-IP throttle. `false` when a refusal was written.
fn may_try(server: &Pop3Server, io: &mut Io, state: &State) -> bool {
    let s = &server.settings;
    if !server.auth_permitted(state) {
        io.err("[AUTH] plaintext authentication disallowed: use STLS first");
        return false;
    }
    let ip = state.peer.ip();
    if server
        .throttle
        .is_blocked(ip, s.max_auth_failures_per_ip, s.auth_failure_window)
    {
        tracing::warn!(%ip, "POP3 login refused: too many recent failures from this address");
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
    let account = match Address::parse(name) {
        Ok(address) => match server.store.verify_password(&address, password).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "password check failed");
                io.err("[SYS/TEMP] temporary authentication failure");
                return None;
            }
        },
        Err(_) => None,
    };
    match account {
        Some(account) => {
            enter_transaction(server, io, state, account).await;
            None
        }
        None => fail(server, io, state, SaslError::AuthenticationFailed).await,
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
    let (mut exchange, mut step) = ServerExchange::start(mech, initial, &server.sasl);
    loop {
        step = match step {
            Step::Challenge(data) => {
                io.line(&format!("+ {}", encode_challenge(&data)));
                match io.read_line(MAX_SASL_LINE, shutdown).await {
                    Ok(Some(line)) => exchange.respond_line(&line),
                    Ok(None) => {
                        io.line(reply_for(&SaslError::Malformed("line too long")));
                        return None;
                    }
                    Err(end) => return Some(end),
                }
            }
            Step::NeedCredentials(request) => {
                match server.store.answer_sasl(&mut exchange, request).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(error = %e, "credential check failed");
                        io.err("[SYS/TEMP] temporary authentication failure");
                        return None;
                    }
                }
            }
            Step::Success {
                authcid,
                authzid,
                final_data,
            } => {
                let Ok(address) = Address::parse(&authcid) else {
                    return fail(server, io, state, SaslError::AuthenticationFailed).await;
                };
                // Acting as someone else is not offered: an authzid must name the same account.
                if let Some(z) = authzid.filter(|z| !z.is_empty())
                    && Address::parse(&z).ok().as_ref() != Some(&address)
                {
                    return fail(server, io, state, SaslError::AuthenticationFailed).await;
                }
                if let Some(data) = final_data {
                    // RFC 5034 §4: success data goes in a last challenge,
                    // which the client answers with an empty line.
                    io.line(&format!("+ {}", encode_challenge(&data)));
                    match io.read_line(MAX_SASL_LINE, shutdown).await {
                        Ok(Some(line)) if line.trim_ascii() == b"*" => {
                            io.line(reply_for(&SaslError::Cancelled));
                            return None;
                        }
                        Ok(_) => {}
                        Err(end) => return Some(end),
                    }
                }
                let account: Option<Account> = match server.store.get_account(&address).await {
                    Ok(a) => a.filter(|a| !a.disabled),
                    Err(e) => {
                        tracing::error!(error = %e, "account lookup failed");
                        io.err("[SYS/TEMP] temporary authentication failure");
                        return None;
                    }
                };
                let Some(account) = account else {
                    return fail(server, io, state, SaslError::AuthenticationFailed).await;
                };
                enter_transaction(server, io, state, account).await;
                return None;
            }
            Step::Failure(e) => return fail(server, io, state, e).await,
        };
    }
}

/// Answers a failed login, slowing the client down and counting the failure.
async fn fail(server: &Pop3Server, io: &mut Io, state: &mut State, e: SaslError) -> Option<End> {
    let s = &server.settings;
    if matches!(
        e,
        SaslError::Cancelled | SaslError::Malformed(_) | SaslError::UnsupportedMechanism
    ) {
        io.line(reply_for(&e));
        return None;
    }
    state.auth_failures += 1;
    server
        .throttle
        .record_failure(state.peer.ip(), s.auth_failure_window);
    tracing::warn!(ip = %state.peer.ip(), failures = state.auth_failures, "POP3 login failed");
    tokio::time::sleep(s.auth_failure_delay * state.auth_failures as u32).await;
    if state.auth_failures >= s.max_auth_failures {
        return Some(
            io.close_with("-ERR [AUTH] authentication failed; too many failures, closing")
                .await,
        );
    }
    io.line(reply_for(&e));
    None
}

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

use mailroom_address::Address;
use mailroom_net::CancellationToken;
use mailroom_sasl::{Mechanism, SaslError, ServerExchange, Step, encode_challenge};
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

/// What must hold before credentials are looked at. `false` when a
/// refusal was written.
fn may_try(server: &ImapServer, io: &mut Io, state: &State, tag: &str) -> bool {
    let s = &server.settings;
    if !server.auth_permitted(state) {
        io.line(&format!(
            "{tag} NO [PRIVACYREQUIRED] plaintext authentication disallowed: use STARTTLS first"
        ));
        return false;
    }
    let ip = state.peer.ip();
    if server
        .throttle
        .is_blocked(ip, s.max_auth_failures_per_ip, s.auth_failure_window)
    {
        tracing::warn!(%ip, "IMAP login refused: too many recent failures from this address");
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
    let account = match Address::parse(user) {
        Ok(address) => match server.store.verify_password(&address, password).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "password check failed");
                io.line(&format!(
                    "{tag} NO [UNAVAILABLE] temporary authentication failure"
                ));
                return None;
            }
        },
        Err(_) => None,
    };
    match account {
        Some(account) => {
            logged_in(server, io, state, tag, account);
            None
        }
        None => fail(server, io, state, tag, SaslError::AuthenticationFailed).await,
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
    let (mut exchange, mut step) = ServerExchange::start(mech, initial, &server.sasl);
    let idle = server.settings.idle_timeout;
    loop {
        step = match step {
            Step::Challenge(data) => {
                io.line(&format!("+ {}", encode_challenge(&data)));
                match io.next(idle, shutdown).await {
                    Ok(Input::Message(line)) => {
                        let line = strip_crlf(&line);
                        exchange.respond_line(line)
                    }
                    Ok(Input::Refused { .. }) => {
                        io.line(&format!(
                            "{tag} {}",
                            reply_for(&SaslError::Malformed("line too long"))
                        ));
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
                        io.line(&format!(
                            "{tag} NO [UNAVAILABLE] temporary authentication failure"
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
                let Ok(address) = Address::parse(&authcid) else {
                    return fail(server, io, state, tag, SaslError::AuthenticationFailed).await;
                };
                if let Some(z) = authzid.filter(|z| !z.is_empty())
                    && Address::parse(&z).ok().as_ref() != Some(&address)
                {
                    return fail(server, io, state, tag, SaslError::AuthenticationFailed).await;
                }
                if let Some(data) = final_data {
                    // RFC 9051 §6.2.2: success data in a last continuation,
                    // answered by an empty line.
                    io.line(&format!("+ {}", encode_challenge(&data)));
                    match io.next(idle, shutdown).await {
                        Ok(Input::Message(line)) if strip_crlf(&line) == b"*" => {
                            io.line(&format!("{tag} {}", reply_for(&SaslError::Cancelled)));
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
                        io.line(&format!(
                            "{tag} NO [UNAVAILABLE] temporary authentication failure"
                        ));
                        return None;
                    }
                };
                let Some(account) = account else {
                    return fail(server, io, state, tag, SaslError::AuthenticationFailed).await;
                };
                logged_in(server, io, state, tag, account);
                return None;
            }
            Step::Failure(e) => return fail(server, io, state, tag, e).await,
        };
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
    let s = &server.settings;
    if matches!(
        e,
        SaslError::Cancelled | SaslError::Malformed(_) | SaslError::UnsupportedMechanism
    ) {
        io.line(&format!("{tag} {}", reply_for(&e)));
        return None;
    }
    state.auth_failures += 1;
    server
        .throttle
        .record_failure(state.peer.ip(), s.auth_failure_window);
    tracing::warn!(ip = %state.peer.ip(), failures = state.auth_failures, "IMAP login failed");
    tokio::time::sleep(s.auth_failure_delay * state.auth_failures as u32).await;
    if state.auth_failures >= s.max_auth_failures {
        io.line(&format!("{tag} {}", reply_for(&e)));
        return Some(
            io.close_with("* BYE too many authentication failures, closing")
                .await,
        );
    }
    io.line(&format!("{tag} {}", reply_for(&e)));
    None
}

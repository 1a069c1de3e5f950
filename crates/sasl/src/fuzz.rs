//! Fuzzing harness, shared by the cargo-fuzz target `sasl` in `fuzz/` and
//! by the stable test over its seed corpus (`tests/tests/fuzz_corpus.rs`).
//! Panics when an invariant breaks. Not part of the supported API.

use std::sync::OnceLock;

use crate::client::ScramClient;
use crate::exchange::{CredentialRequest, Mechanism, SaslConfig, ServerExchange, Step};
use crate::{SaslError, ScramCredentials, decode_client_response, saslprep};

/// The RFC 7677 §3 example, so that a seed replaying it reaches success.
const USER: &str = "user";
const PASSWORD: &str = "pencil";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const SALT: &[u8] = b"[m\x99h\x9d\x125\x8e\xec\xa0K\x14\x126\xfa\x81";

fn credentials() -> ScramCredentials {
    static CREDENTIALS: OnceLock<ScramCredentials> = OnceLock::new();
    CREDENTIALS
        .get_or_init(|| ScramCredentials::derive_with(PASSWORD, SALT, 4096).expect("derive"))
        .clone()
}

/// One SASL exchange per input. The first byte chooses the mechanism
/// (low two bits), whether the client's messages come base64-encoded as
/// lines (bit 2) or decoded, whether the first is an initial response
/// (bit 3), whether the user exists (bit 4) and whether a PLAIN/LOGIN
/// password is right (bit 5); bit 6 runs the SCRAM client instead, on
/// the server's messages. The rest is the messages, separated by LF.
///
/// Invariants: no panic; an exchange ends (`Success` or `Failure`) within
/// the messages given and is then finished, refusing anything more as out
/// of sequence; PLAIN and LOGIN succeed only with the right password, and
/// SCRAM never succeeds for a user that does not exist.
pub fn exchange(input: &[u8]) {
    let [flags, rest @ ..] = input else {
        return;
    };
    let mut messages = rest.split(|&b| b == b'\n');
    if flags & 0x40 != 0 {
        return client(messages);
    }
    let mechanism = match flags & 3 {
        0 => Mechanism::Plain,
        1 => Mechanism::Login,
        _ => Mechanism::ScramSha256,
    };
    let lines = flags & 0x04 != 0;
    let known_user = flags & 0x10 != 0;
    let password_ok = flags & 0x20 != 0;
    let config = SaslConfig::new(b"fuzz").with_mock_iterations(4096);
    let initial = (flags & 0x08 != 0)
        .then(|| messages.next().unwrap_or_default())
        .map(|m| {
            if lines {
                decode_client_response(m).ok()
            } else {
                Some(m.to_vec())
            }
        });
    let (mut exchange, mut step) = match initial {
        Some(None) => return,
        Some(Some(m)) => start(mechanism, Some(m), &config),
        None => start(mechanism, None, &config),
    };
    let mut scram_user_known = false;
    for _ in 0..16 {
        step = match step {
            Step::Challenge(_) => {
                let Some(message) = messages.next() else {
                    return;
                };
                if lines {
                    exchange.respond_line(message)
                } else {
                    exchange.respond(message)
                }
            }
            Step::NeedCredentials(CredentialRequest::Password { .. }) => {
                exchange.password_checked(password_ok)
            }
            Step::NeedCredentials(CredentialRequest::Scram { authcid, .. }) => {
                scram_user_known = known_user && authcid == USER;
                exchange.provide_scram(scram_user_known.then(credentials))
            }
            Step::Success { .. } => {
                match mechanism {
                    Mechanism::Plain | Mechanism::Login => assert!(password_ok),
                    Mechanism::ScramSha256 => assert!(scram_user_known, "mock user succeeded"),
                }
                break;
            }
            Step::Failure(_) => break,
        };
    }
    assert!(exchange.is_finished(), "no end after 16 steps");
    assert_eq!(
        exchange.respond(b"more"),
        Step::Failure(SaslError::OutOfSequence)
    );
    for message in messages {
        if let Ok(text) = std::str::from_utf8(message) {
            let _ = saslprep(text);
        }
    }
}

/// Starts an exchange with the server nonce fixed (as the RFC example
/// has it); an initial response is then the first message, which is what
/// `ServerExchange::start` does with one.
fn start(
    mechanism: Mechanism,
    initial: Option<Vec<u8>>,
    config: &SaslConfig,
) -> (ServerExchange, Step) {
    let (mut exchange, step) = ServerExchange::start(mechanism, None, config);
    exchange.set_server_nonce(SERVER_NONCE);
    match initial {
        Some(first) => {
            let step = exchange.respond(&first);
            (exchange, step)
        }
        None => (exchange, step),
    }
}

/// The SCRAM client on a hostile server's messages: server-first, then
/// server-final. An iteration count above 16384 is legal but costs the
/// fuzzer a second of PBKDF2 per run; such inputs are skipped.
fn client<'a>(mut messages: impl Iterator<Item = &'a [u8]>) {
    let Ok((mut client, first)) = ScramClient::start_with_nonce(USER, PASSWORD, CLIENT_NONCE)
    else {
        panic!("the client cannot start");
    };
    assert!(first.ends_with(CLIENT_NONCE.as_bytes()));
    let Some(server_first) = messages.next() else {
        return;
    };
    let iterations = std::str::from_utf8(server_first)
        .ok()
        .and_then(|t| t.split(',').nth(2))
        .and_then(|i| i.strip_prefix("i="))
        .and_then(|i| i.parse::<u64>().ok());
    if iterations.is_some_and(|i| i > 16384) {
        return;
    }
    let finished_early = client.finish(b"v=").is_ok();
    assert!(!finished_early, "server-final accepted before server-first");
    if client.respond(server_first).is_ok()
        && let Some(server_final) = messages.next()
    {
        let _ = client.finish(server_final);
    }
}

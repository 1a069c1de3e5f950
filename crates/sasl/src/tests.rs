//! End-to-end exchanges through the public API, with a minimal SCRAM client.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::credentials::{hmac, sha256};
use crate::*;

const RFC7677_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC7677_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

fn rfc7677_credentials() -> ScramCredentials {
    ScramCredentials::derive_with("pencil", &STANDARD.decode(RFC7677_SALT).unwrap(), 4096).unwrap()
}

fn challenge(step: Step) -> Vec<u8> {
    match step {
        Step::Challenge(c) => c,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn failure(step: Step) -> SaslError {
    match step {
        Step::Failure(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------- SCRAM

/// RFC 7677 §3, driven through the server with the RFC's server nonce.
#[test]
fn scram_rfc7677_vector() {
    let client_first = format!("n,,n=user,r={RFC7677_CLIENT_NONCE}");
    let (mut ex, step) = Mechanism::ScramSha256.start(Some(client_first.into_bytes()));
    assert_eq!(
        step,
        Step::NeedCredentials(CredentialRequest::Scram {
            authcid: "user".into(),
            authzid: None
        })
    );
    ex.set_server_nonce(RFC7677_SERVER_NONCE);
    let server_first = challenge(ex.provide_scram(Some(rfc7677_credentials())));
    assert_eq!(
        server_first,
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let step = ex.respond(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    );
    assert_eq!(
        step,
        Step::Success {
            authcid: "user".into(),
            authzid: None,
            final_data: Some(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()),
        }
    );
    assert!(ex.is_finished());
    assert_eq!(failure(ex.respond(b"")), SaslError::OutOfSequence);
}

/// The same vector with one bit of the proof flipped must fail.
#[test]
fn scram_rfc7677_vector_tampered_proof() {
    let (mut ex, _) =
        Mechanism::ScramSha256.start(Some(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO".to_vec()));
    ex.set_server_nonce(RFC7677_SERVER_NONCE);
    let _ = challenge(ex.provide_scram(Some(rfc7677_credentials())));
    let step = ex.respond(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=",
    );
    assert_eq!(failure(step), SaslError::AuthenticationFailed);
}

/// A tiny SCRAM-SHA-256 client (RFC 5802 §3), independent of the server
/// code paths except for the HMAC/SHA-256 primitives.
struct Client {
    password: String,
    gs2_header: String,
    bare: String,
    client_nonce: String,
    auth_message: String,
    server_signature: [u8; 32],
}

impl Client {
    fn new(username: &str, password: &str, gs2_header: &str, client_nonce: &str) -> Self {
        let escaped = username.replace('=', "=3D").replace(',', "=2C");
        Self {
            password: password.into(),
            gs2_header: gs2_header.into(),
            bare: format!("n={escaped},r={client_nonce}"),
            client_nonce: client_nonce.into(),
            auth_message: String::new(),
            server_signature: [0; 32],
        }
    }

    fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.bare).into_bytes()
    }

    /// Parses server-first and returns (nonce, salt, iterations).
    fn parse_server_first(server_first: &[u8]) -> (String, Vec<u8>, u32) {
        let text = std::str::from_utf8(server_first).unwrap();
        let mut parts = text.split(',');
        let nonce = parts.next().unwrap().strip_prefix("r=").unwrap().to_owned();
        let salt = STANDARD
            .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iterations = parts
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(parts.next().is_none());
        (nonce, salt, iterations)
    }

    fn final_message(&mut self, server_first: &[u8], nonce_override: Option<&str>) -> Vec<u8> {
        let (nonce, salt, iterations) = Self::parse_server_first(server_first);
        assert!(
            nonce.starts_with(&self.client_nonce),
            "server nonce must extend ours"
        );
        assert!(nonce.len() >= self.client_nonce.len() + 24);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
            self.password.as_bytes(),
            &salt,
            iterations,
            &mut salted,
        );
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let without_proof = format!(
            "c={},r={}",
            STANDARD.encode(&self.gs2_header),
            nonce_override.unwrap_or(&nonce)
        );
        self.auth_message = format!(
            "{},{},{}",
            self.bare,
            std::str::from_utf8(server_first).unwrap(),
            without_proof
        );
        let signature = hmac(&stored_key, &[self.auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, &[b"Server Key"]);
        self.server_signature = hmac(&server_key, &[self.auth_message.as_bytes()]);
        format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
    }

    fn verify_server_final(&self, data: &[u8]) -> bool {
        data == format!("v={}", STANDARD.encode(self.server_signature)).as_bytes()
    }
}

struct Store {
    user: &'static str,
    credentials: ScramCredentials,
}

impl Store {
    fn new(user: &'static str, password: &str) -> Self {
        Self {
            user,
            credentials: ScramCredentials::derive_with(password, b"fixed-test-salt!", 64).unwrap(),
        }
    }

    fn lookup(&self, step: Step) -> Option<ScramCredentials> {
        match step {
            Step::NeedCredentials(CredentialRequest::Scram { authcid, .. }) => {
                (authcid == self.user).then(|| self.credentials.clone())
            }
            other => panic!("expected a SCRAM credential request, got {other:?}"),
        }
    }
}

fn config() -> SaslConfig {
    SaslConfig::new(b"test secret").with_mock_iterations(64)
}

/// Runs a whole exchange through base64 lines like a protocol layer does;
/// returns the final step and the server-first challenge.
fn run_scram(store: &Store, client: &mut Client, initial_response: bool) -> (Step, Vec<u8>) {
    let (mut ex, mut step) = if initial_response {
        ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &config())
    } else {
        let (mut ex, step) = ServerExchange::start(Mechanism::ScramSha256, None, &config());
        assert_eq!(challenge(step), b"");
        let step = ex.respond_line(format!("{}\r\n", encode_challenge(&client.first())).as_bytes());
        (ex, step)
    };
    let creds = store.lookup(step);
    step = ex.provide_scram(creds);
    let server_first = challenge(step);
    let line = encode_challenge(&client.final_message(&server_first, None));
    (ex.respond_line(line.as_bytes()), server_first)
}

#[test]
fn scram_client_simulation_success() {
    let store = Store::new("alice@example.org", "s3cret pass");
    for initial_response in [true, false] {
        let mut client = Client::new(
            "alice@example.org",
            "s3cret pass",
            "n,,",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        let (step, _) = run_scram(&store, &mut client, initial_response);
        match step {
            Step::Success {
                authcid,
                authzid,
                final_data,
            } => {
                assert_eq!(authcid, "alice@example.org");
                assert_eq!(authzid, None);
                assert!(client.verify_server_final(&final_data.unwrap()));
            }
            other => panic!("expected success, got {other:?}"),
        }
    }
}

#[test]
fn scram_y_flag_authzid_and_escaped_name() {
    let store = Store::new("we,ird=name", "pw");
    let mut client = Client::new("we,ird=name", "pw", "y,a=boss=2Cinc,", "abcdefgh");
    let (step, _) = run_scram(&store, &mut client, true);
    match step {
        Step::Success {
            authcid,
            authzid,
            final_data,
        } => {
            assert_eq!(authcid, "we,ird=name");
            assert_eq!(authzid.as_deref(), Some("boss,inc"));
            assert!(client.verify_server_final(&final_data.unwrap()));
        }
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn scram_saslprep_password_matches() {
    // The stored keys are derived from the prepared password; a client that
    // prepares "pass\u{A0}word" sends "pass word".
    let store = Store::new("bob", "pass\u{00A0}word\u{00AD}");
    let mut client = Client::new("bob", "pass word", "n,,", "nonce123");
    let (step, _) = run_scram(&store, &mut client, true);
    assert!(matches!(step, Step::Success { .. }), "{step:?}");
}

#[test]
fn scram_wrong_password_and_unknown_user_fail_at_the_same_step() {
    let store = Store::new("alice", "right");
    let mut wrong = Client::new("alice", "wrong", "n,,", "nonce-one");
    let (step, wrong_first) = run_scram(&store, &mut wrong, true);
    assert_eq!(failure(step), SaslError::AuthenticationFailed);

    let mut unknown = Client::new("mallory", "right", "n,,", "nonce-two");
    let (step, unknown_first) = run_scram(&store, &mut unknown, true);
    assert_eq!(failure(step), SaslError::AuthenticationFailed);

    // The mock server-first looks like a real one: same shape and iteration
    // count, salt of the same length, stable for the same name, different
    // per name and per secret.
    let (_, real_salt, real_i) = Client::parse_server_first(&wrong_first);
    let (_, mock_salt, mock_i) = Client::parse_server_first(&unknown_first);
    assert_eq!(real_i, mock_i);
    assert_eq!(real_salt.len(), mock_salt.len());
    let mut again = Client::new("mallory", "x", "n,,", "nonce-three");
    let (_, again_first) = run_scram(&store, &mut again, true);
    assert_eq!(Client::parse_server_first(&again_first).1, mock_salt);
    let mut other = Client::new("mallory2", "x", "n,,", "nonce-four");
    let (_, other_first) = run_scram(&store, &mut other, true);
    assert_ne!(Client::parse_server_first(&other_first).1, mock_salt);
    let other_secret = SaslConfig::new(b"another secret").with_mock_iterations(64);
    let (mut ex, step) =
        ServerExchange::start(Mechanism::ScramSha256, Some(again.first()), &other_secret);
    assert!(store.lookup(step).is_none());
    let first = challenge(ex.provide_scram(None));
    assert_ne!(Client::parse_server_first(&first).1, mock_salt);
}

#[test]
fn scram_tampered_nonce_is_refused() {
    let store = Store::new("alice", "right");
    let cfg = config();
    for tamper in ["truncated", "extended", "other-client-part"] {
        let mut client = Client::new("alice", "right", "n,,", "clientnonce");
        let (mut ex, step) =
            ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &cfg);
        let server_first = challenge(ex.provide_scram(store.lookup(step)));
        let (nonce, _, _) = Client::parse_server_first(&server_first);
        let bad = match tamper {
            "truncated" => nonce[..nonce.len() - 1].to_owned(),
            "extended" => format!("{nonce}x"),
            _ => nonce.replacen("clientnonce", "clientnoncf", 1),
        };
        let msg = client.final_message(&server_first, Some(&bad));
        assert_eq!(
            failure(ex.respond(&msg)),
            SaslError::AuthenticationFailed,
            "{tamper}"
        );
    }
}

#[test]
fn scram_channel_binding_mismatch_is_refused() {
    // The client said "y" (could bind) in client-first, but c= claims "n":
    // a downgrade an attacker could attempt (RFC 5802 §6).
    let store = Store::new("alice", "right");
    let mut client = Client::new("alice", "right", "y,,", "cn");
    let (mut ex, step) =
        ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &config());
    let server_first = challenge(ex.provide_scram(store.lookup(step)));
    client.gs2_header = "n,,".into();
    let msg = client.final_message(&server_first, None);
    assert_eq!(failure(ex.respond(&msg)), SaslError::AuthenticationFailed);
}

#[test]
fn scram_refuses_channel_binding_request() {
    let (ex, step) = Mechanism::ScramSha256.start(Some(b"p=tls-exporter,,n=user,r=abc".to_vec()));
    assert_eq!(failure(step), SaslError::ChannelBindingNotSupported);
    assert!(ex.is_finished());
    assert!(Mechanism::from_name("SCRAM-SHA-256-PLUS").is_err());
}

#[test]
fn scram_refuses_mandatory_extension() {
    let (_, step) = Mechanism::ScramSha256.start(Some(b"n,,m=ext,n=user,r=abc".to_vec()));
    assert_eq!(failure(step), SaslError::UnsupportedExtension);
}

/// A 24-character fixed server nonce part (what the random one has).
const SN: &str = "SERVERNONCESERVERNONCE24";

#[test]
fn scram_malformed_client_final() {
    let store = Store::new("alice", "right");
    let cfg = config();
    let mut client = Client::new("alice", "right", "n,,", "cn");
    let (mut probe, step) =
        ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &cfg);
    probe.set_server_nonce(SN);
    let server_first = challenge(probe.provide_scram(store.lookup(step)));
    let good = String::from_utf8(client.final_message(&server_first, None)).unwrap();
    let (without_proof, proof) = good.rsplit_once(",p=").unwrap();
    // The good message is accepted: the variants below fail for their defect.
    assert!(matches!(
        probe.respond(good.as_bytes()),
        Step::Success { .. }
    ));

    let cases = [
        String::new(),
        without_proof.to_owned(),
        format!("r=cn{SN},c=biws,p={proof}"),
        format!("c=biws,p={proof}"),
        format!("c=biws,r=cn{SN},p=!!!{proof}"),
        format!("c=biws,r=cn{SN},p=AAAA"),
        format!("c=bi*s,r=cn{SN},p={proof}"),
        format!("c=biws,r=cn{SN},p={proof},x=1"),
        format!("c=biws,r=cn{SN},,p={proof}"),
        format!("c=biws,r=cn{SN},p={}", &proof[..proof.len() - 1]),
        format!("n=biws,r=cn{SN},p={proof}"),
        format!("c=biws,r=cn\u{0}{SN},p=\u{ff}"),
    ];
    for case in &cases {
        let (mut ex, step) =
            ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &cfg);
        ex.set_server_nonce(SN);
        let _ = challenge(ex.provide_scram(store.lookup(step)));
        assert!(
            matches!(
                failure(ex.respond(case.as_bytes())),
                SaslError::Malformed(_)
            ),
            "accepted {case:?}"
        );
    }
    // Invalid UTF-8 and bad base64 on the wire.
    let (mut ex, step) = ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &cfg);
    let _ = challenge(ex.provide_scram(store.lookup(step)));
    assert!(matches!(
        failure(ex.respond(b"c=biws,r=\xff,p=x")),
        SaslError::Malformed(_)
    ));
    let (mut ex, step) = ServerExchange::start(Mechanism::ScramSha256, Some(client.first()), &cfg);
    let _ = challenge(ex.provide_scram(store.lookup(step)));
    assert!(matches!(
        failure(ex.respond_line(b"not base64!")),
        SaslError::Malformed(_)
    ));
    assert!(ex.is_finished());
}

#[test]
fn scram_malformed_client_first() {
    for bad in [
        &b""[..],
        b"n,,r=abc,n=user",
        b"n,,n=user",
        b"n,,n=a=b,r=x",
        b"biws",
    ] {
        let (_, step) = Mechanism::ScramSha256.start(Some(bad.to_vec()));
        assert!(
            matches!(failure(step), SaslError::Malformed(_)),
            "accepted {bad:?}"
        );
    }
}

#[test]
fn scram_cancel_and_out_of_sequence() {
    let (mut ex, step) = Mechanism::ScramSha256.start(None);
    assert_eq!(challenge(step), b"");
    assert_eq!(failure(ex.respond_line(b"*\r\n")), SaslError::Cancelled);
    assert!(ex.is_finished());

    let (mut ex, _) = Mechanism::ScramSha256.start(Some(b"n,,n=user,r=abc".to_vec()));
    assert_eq!(failure(ex.password_checked(true)), SaslError::OutOfSequence);
    let (mut ex, _) = Mechanism::ScramSha256.start(Some(b"n,,n=user,r=abc".to_vec()));
    assert_eq!(failure(ex.respond(b"c=biws")), SaslError::OutOfSequence);
    let (mut ex, _) = Mechanism::ScramSha256.start(None);
    assert_eq!(failure(ex.provide_scram(None)), SaslError::OutOfSequence);
}

// ---------------------------------------------------------------- PLAIN

#[test]
fn plain_with_initial_response() {
    let (mut ex, step) = Mechanism::Plain.start(Some(b"\0tim\0tanstaaftanstaaf".to_vec()));
    assert_eq!(
        step,
        Step::NeedCredentials(CredentialRequest::Password {
            authcid: "tim".into(),
            authzid: None,
            password: "tanstaaftanstaaf".into(),
        })
    );
    assert_eq!(
        ex.password_checked(true),
        Step::Success {
            authcid: "tim".into(),
            authzid: None,
            final_data: None
        }
    );
    assert!(ex.is_finished());
    assert_eq!(failure(ex.password_checked(true)), SaslError::OutOfSequence);
}

#[test]
fn plain_after_empty_challenge_with_authzid() {
    let (mut ex, step) = Mechanism::Plain.start(None);
    assert_eq!(challenge(step), b"");
    // "Ursel\0Kurt\0xipj3plmq" as a client line.
    let line = format!("{}\r\n", encode_challenge(b"Ursel\0Kurt\0xipj3plmq"));
    let step = ex.respond_line(line.as_bytes());
    assert!(matches!(
        &step,
        Step::NeedCredentials(CredentialRequest::Password { authcid, authzid: Some(z), password })
            if authcid == "Kurt" && z == "Ursel" && password == "xipj3plmq"
    ));
    assert_eq!(
        ex.password_checked(true),
        Step::Success {
            authcid: "Kurt".into(),
            authzid: Some("Ursel".into()),
            final_data: None
        }
    );
}

#[test]
fn plain_wrong_password() {
    let (mut ex, _) = Mechanism::Plain.start(Some(b"\0tim\0wrong".to_vec()));
    assert_eq!(
        failure(ex.password_checked(false)),
        SaslError::AuthenticationFailed
    );
    assert!(ex.is_finished());
}

#[test]
fn plain_malformed_and_cancel() {
    for bad in [
        &b""[..],
        b"tim\0pw",
        b"\0tim\0",
        b"\0\0pw",
        b"a\0b\0c\0d",
        b"\0t\xffm\0pw",
    ] {
        let (ex, step) = Mechanism::Plain.start(Some(bad.to_vec()));
        assert!(
            matches!(failure(step), SaslError::Malformed(_)),
            "accepted {bad:?}"
        );
        assert!(ex.is_finished());
    }
    // `AUTH PLAIN =` is an empty initial response, which PLAIN cannot use.
    let (_, step) = Mechanism::Plain.start(Some(decode_client_response(b"=").unwrap()));
    assert!(matches!(failure(step), SaslError::Malformed(_)));

    let (mut ex, _) = Mechanism::Plain.start(None);
    assert_eq!(failure(ex.respond_line(b"*")), SaslError::Cancelled);
    let (mut ex, _) = Mechanism::Plain.start(None);
    assert!(matches!(
        failure(ex.respond_line(b"%%%")),
        SaslError::Malformed(_)
    ));
}

#[test]
fn password_request_debug_redacts() {
    let (_, step) = Mechanism::Plain.start(Some(b"\0tim\0tanstaaftanstaaf".to_vec()));
    let text = format!("{step:?}");
    assert!(text.contains("tim"));
    assert!(!text.contains("tanstaaf"));
}

// ---------------------------------------------------------------- LOGIN

#[test]
fn login_full_prompted_flow() {
    let (mut ex, step) = Mechanism::Login.start(None);
    assert_eq!(encode_challenge(&challenge(step)), "VXNlcm5hbWU6"); // "Username:"
    let step = ex.respond_line(b"dGlt\r\n"); // "tim"
    assert_eq!(encode_challenge(&challenge(step)), "UGFzc3dvcmQ6"); // "Password:"
    let step = ex.respond_line(b"dGFuc3RhYWZ0YW5zdGFhZg==\r\n");
    assert_eq!(
        step,
        Step::NeedCredentials(CredentialRequest::Password {
            authcid: "tim".into(),
            authzid: None,
            password: "tanstaaftanstaaf".into(),
        })
    );
    assert_eq!(
        ex.password_checked(true),
        Step::Success {
            authcid: "tim".into(),
            authzid: None,
            final_data: None
        }
    );
}

#[test]
fn login_with_initial_username() {
    let (mut ex, step) = Mechanism::Login.start(Some(b"tim".to_vec()));
    assert_eq!(challenge(step), b"Password:");
    let step = ex.respond(b"pw");
    assert!(matches!(
        step,
        Step::NeedCredentials(CredentialRequest::Password { .. })
    ));
    assert_eq!(
        failure(ex.password_checked(false)),
        SaslError::AuthenticationFailed
    );
}

#[test]
fn login_malformed_and_cancel() {
    let (_, step) = Mechanism::Login.start(Some(Vec::new()));
    assert!(matches!(failure(step), SaslError::Malformed(_)));
    let (mut ex, _) = Mechanism::Login.start(None);
    assert!(matches!(failure(ex.respond(b"")), SaslError::Malformed(_)));
    let (mut ex, _) = Mechanism::Login.start(Some(b"tim".to_vec()));
    assert!(matches!(failure(ex.respond(b"")), SaslError::Malformed(_)));
    let (mut ex, _) = Mechanism::Login.start(Some(b"tim".to_vec()));
    assert!(matches!(
        failure(ex.respond(b"p\xffw")),
        SaslError::Malformed(_)
    ));
    let (mut ex, _) = Mechanism::Login.start(None);
    assert_eq!(failure(ex.respond_line(b"*\r\n")), SaslError::Cancelled);
    let (mut ex, _) = Mechanism::Login.start(Some(b"tim".to_vec()));
    assert_eq!(failure(ex.respond_line(b"*")), SaslError::Cancelled);
    assert_eq!(failure(ex.respond(b"pw")), SaslError::OutOfSequence);
}

// ---------------------------------------------------------------- names

#[test]
fn mechanism_names() {
    assert_eq!(
        Mechanism::ALL,
        [Mechanism::ScramSha256, Mechanism::Plain, Mechanism::Login]
    );
    for m in Mechanism::ALL {
        assert_eq!(Mechanism::from_name(m.name()), Ok(m));
        assert_eq!(Mechanism::from_name(&m.name().to_ascii_lowercase()), Ok(m));
        assert_eq!(m.to_string().parse::<Mechanism>(), Ok(m));
    }
    assert_eq!(
        Mechanism::from_name("scram-sha-256"),
        Ok(Mechanism::ScramSha256)
    );
    for bad in [
        "",
        "CRAM-MD5",
        "SCRAM-SHA-1",
        "PLAIN ",
        "XOAUTH2",
        "SCRAM-SHA-256-PLUS",
    ] {
        assert_eq!(
            Mechanism::from_name(bad),
            Err(SaslError::UnsupportedMechanism)
        );
    }
    assert!(Mechanism::Plain.exposes_password());
    assert!(Mechanism::Login.exposes_password());
    assert!(!Mechanism::ScramSha256.exposes_password());
}

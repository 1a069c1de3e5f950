//! SCRAM-SHA-256 server messages (RFC 5802 §5 and §7, RFC 7677), without
//! channel binding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;

use crate::SaslError;
use crate::credentials::{ScramCredentials, hmac, sha256};
use crate::framing::MAX_MESSAGE_LEN;

/// Random bytes in the server nonce part: 18 bytes, 24 base64 characters,
/// 144 bits of unpredictability.
const SERVER_NONCE_BYTES: usize = 18;

/// What the server keeps from client-first-message (RFC 5802 §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientFirst {
    /// `gs2-header` verbatim (e.g. `n,,`), compared with `c=` later.
    pub gs2_header: String,
    pub authzid: Option<String>,
    pub authcid: String,
    pub client_nonce: String,
    /// `client-first-message-bare` verbatim: part of AuthMessage.
    pub bare: String,
}

/// State between server-first-message and client-final-message.
#[derive(Clone)]
pub(crate) struct Pending {
    pub first: ClientFirst,
    pub server_first: String,
    pub nonce: String,
    pub credentials: ScramCredentials,
    /// True when the user does not exist and `credentials` are fabricated:
    /// the proof must fail even in the astronomically unlikely case that it
    /// matches the fake StoredKey.
    pub mock: bool,
}

fn malformed(why: &'static str) -> SaslError {
    SaslError::Malformed(why)
}

/// RFC 5802 §7 `printable = %x21-2B / %x2D-7E` (no comma).
fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21..=0x2B | 0x2D..=0x7E))
}

/// Decodes an RFC 5802 §7 `saslname`: `=2C` is `,`, `=3D` is `=`, any other
/// `=` is an error, and so are NUL and an empty name.
pub(crate) fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() {
        return Err(malformed("empty saslname"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['=', '\0']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(malformed("invalid escape in saslname"));
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `attr-val = ALPHA "=" value` with a non-empty value, for optional
/// extensions that we accept and ignore (RFC 5802 §5.1).
fn is_extension(part: &str) -> bool {
    let b = part.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

/// Parses client-first-message (RFC 5802 §7):
/// `gs2-header [reserved-mext ","] username "," nonce ["," extensions]`.
pub(crate) fn parse_client_first(message: &[u8]) -> Result<ClientFirst, SaslError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(malformed("SCRAM client-first-message too long"));
    }
    let text = std::str::from_utf8(message).map_err(|_| malformed("SCRAM message is not UTF-8"))?;

    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, after_flag) = text
        .split_once(',')
        .ok_or(malformed("missing gs2 header"))?;
    match flag {
        // RFC 5802 §6: "n" (client cannot bind) and "y" (client could, but
        // thinks the server cannot: true, we advertise no -PLUS) are fine.
        "n" | "y" => {}
        _ if flag.starts_with("p=") => return Err(SaslError::ChannelBindingNotSupported),
        _ => return Err(malformed("invalid gs2 channel-binding flag")),
    }
    let (authzid, bare) = after_flag
        .split_once(',')
        .ok_or(malformed("incomplete gs2 header"))?;
    let authzid = match authzid {
        "" => None,
        _ => Some(decode_saslname(
            authzid
                .strip_prefix("a=")
                .ok_or(malformed("invalid authzid in gs2 header"))?,
        )?),
    };
    let gs2_header = text[..text.len() - bare.len()].to_owned();

    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or_default();
    // RFC 5802 §5.1: a server that does not support the "m" extension MUST
    // fail authentication if it is present.
    if first.starts_with("m=") {
        return Err(SaslError::UnsupportedExtension);
    }
    let username = first
        .strip_prefix("n=")
        .ok_or(malformed("first attribute is not n="))?;
    let authcid = decode_saslname(username)?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(malformed("second attribute is not r="))?;
    if !is_printable_nonce(nonce) {
        return Err(malformed("client nonce is empty or not printable"));
    }
    if !attrs.all(is_extension) {
        return Err(malformed("invalid extension in client-first-message"));
    }
    Ok(ClientFirst {
        gs2_header,
        authzid,
        authcid,
        client_nonce: nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

/// A fresh server nonce part: printable, comma-free (base64 alphabet).
pub(crate) fn random_server_nonce() -> String {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// Builds server-first-message (RFC 5802 §7):
/// `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
pub(crate) fn server_first(
    first: ClientFirst,
    server_nonce: &str,
    credentials: ScramCredentials,
    mock: bool,
) -> Pending {
    let nonce = format!("{}{server_nonce}", first.client_nonce);
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&credentials.salt),
        credentials.iterations
    );
    Pending {
        first,
        server_first,
        nonce,
        credentials,
        mock,
    }
}

/// Compares without an early exit, so timing does not tell an attacker how
/// many leading bytes of its forged proof were right.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks client-final-message (RFC 5802 §7):
/// `c=<b64 gs2 header>,r=<nonce>[,extensions],p=<b64 proof>` and on success
/// returns server-final-message `v=<b64 ServerSignature>`.
pub(crate) fn verify_client_final(pending: &Pending, message: &[u8]) -> Result<Vec<u8>, SaslError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(malformed("SCRAM client-final-message too long"));
    }
    let text = std::str::from_utf8(message).map_err(|_| malformed("SCRAM message is not UTF-8"))?;
    // The proof is always last, and base64 contains no comma.
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or(malformed("missing p= proof"))?;
    let mut attrs = without_proof.split(',');
    let binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(malformed("first attribute is not c="))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(malformed("second attribute is not r="))?;
    if !attrs.all(is_extension) {
        return Err(malformed("invalid extension in client-final-message"));
    }
    let binding = STANDARD
        .decode(binding)
        .map_err(|_| malformed("c= is not base64"))?;
    let proof: [u8; 32] = STANDARD
        .decode(proof)
        .map_err(|_| malformed("p= is not base64"))?
        .try_into()
        .map_err(|_| malformed("p= is not 32 bytes"))?;

    // Without channel binding, c= is just the gs2 header (RFC 5802 §7
    // `cbind-input`); a mismatch means the header was tampered with (e.g. a
    // "y" downgraded to "n") or the authzid changed between messages.
    if binding != pending.first.gs2_header.as_bytes() {
        return Err(SaslError::AuthenticationFailed);
    }
    // RFC 5802 §5.1: the nonce must be exactly the combined nonce we sent.
    if nonce != pending.nonce {
        return Err(SaslError::AuthenticationFailed);
    }

    // RFC 5802 §3.
    let auth_message = format!(
        "{},{},{}",
        pending.first.bare, pending.server_first, without_proof
    );
    let creds = &pending.credentials;
    let client_signature = hmac(&creds.stored_key, &[auth_message.as_bytes()]);
    let mut client_key = [0u8; 32];
    for (k, (p, s)) in client_key
        .iter_mut()
        .zip(proof.iter().zip(&client_signature))
    {
        *k = p ^ s;
    }
    let proof_ok = constant_time_eq(&sha256(&client_key), &creds.stored_key);
    // Computed whatever the outcome so success and failure cost the same.
    let server_signature = hmac(&creds.server_key, &[auth_message.as_bytes()]);
    if !proof_ok || pending.mock {
        return Err(SaslError::AuthenticationFailed);
    }
    Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslname_escapes() {
        assert_eq!(decode_saslname("user").unwrap(), "user");
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("=3D=2C").unwrap(), "=,");
        assert_eq!(decode_saslname("jürgen").unwrap(), "jürgen");
        for bad in ["", "a=", "a=2", "a=2c", "a=3d", "a=41", "=", "a\0b", "a=3"] {
            assert!(decode_saslname(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn client_first_parsing() {
        let cf = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(cf.gs2_header, "n,,");
        assert_eq!(cf.authcid, "user");
        assert_eq!(cf.authzid, None);
        assert_eq!(cf.client_nonce, "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(cf.bare, "n=user,r=rOprNGfwEbeRWgbNEkqO");

        let cf = parse_client_first(b"y,a=ad=3Dmin,n=a=2Cb,r=abc,x=ext").unwrap();
        assert_eq!(cf.gs2_header, "y,a=ad=3Dmin,");
        assert_eq!(cf.authzid.as_deref(), Some("ad=min"));
        assert_eq!(cf.authcid, "a,b");
        assert_eq!(cf.bare, "n=a=2Cb,r=abc,x=ext");
    }

    #[test]
    fn client_first_refusals() {
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=user,r=abc"),
            Err(SaslError::ChannelBindingNotSupported)
        );
        assert_eq!(
            parse_client_first(b"p=tls-exporter,,n=user,r=abc"),
            Err(SaslError::ChannelBindingNotSupported)
        );
        assert_eq!(
            parse_client_first(b"n,,m=x,n=user,r=abc"),
            Err(SaslError::UnsupportedExtension)
        );
        for bad in [
            &b""[..],
            b"n",
            b"n,",
            b"x,,n=user,r=abc",
            b"N,,n=user,r=abc",
            b"n,b=x,n=user,r=abc",
            b"n,a=,n=user,r=abc",
            b"n,,",
            b"n,,r=abc,n=user",
            b"n,,n=user",
            b"n,,n=,r=abc",
            b"n,,n=us=er,r=abc",
            b"n,,n=user,r=",
            b"n,,n=user,r=a b",
            b"n,,n=user,r=abc,",
            b"n,,n=user,r=abc,1=x",
            b"n,,n=user,r=abc,x=",
            b"n,,n=user,x=1,r=abc",
            b"n,,user,r=abc",
            b"n,,n=us\xffer,r=abc",
        ] {
            assert!(
                matches!(parse_client_first(bad), Err(SaslError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
        let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE_LEN));
        assert!(matches!(
            parse_client_first(long.as_bytes()),
            Err(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn server_nonce_shape() {
        let a = random_server_nonce();
        assert_eq!(a.len(), 24);
        assert!(is_printable_nonce(&a));
        assert_ne!(a, random_server_nonce());
    }

    /// The `mock` flag alone must make a correct proof fail: even if fake
    /// credentials happened to match, an unknown user never gets in.
    #[test]
    fn mock_flag_forces_failure() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = ScramCredentials::derive_with("pencil", &salt, 4096).unwrap();
        let final_msg: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let real = server_first(
            first.clone(),
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            creds.clone(),
            false,
        );
        assert!(verify_client_final(&real, final_msg).is_ok());
        let mock = server_first(first, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", creds, true);
        assert_eq!(
            verify_client_final(&mock, final_msg),
            Err(SaslError::AuthenticationFailed)
        );
    }

    #[test]
    fn constant_time_eq_works() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}

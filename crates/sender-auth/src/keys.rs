//! DKIM keys: generation, selector names and the DNS records to publish.
//!
//! Every domain gets two keys by default, RSA-2048 (RFC 8301 §3.2: at least
//! 1024 bits, 2048 recommended) and Ed25519 (RFC 8463), because some
//! receivers still verify only RSA. Selectors are named by year and a
//! letter per generation (`2026a-rsa`, `2026a-ed`), so a rotation gets new
//! names and both records can be published side by side.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;

/// The `a=` value of RSA keys.
pub const RSA_SHA256: &str = "rsa-sha256";
/// The `a=` value of Ed25519 keys.
pub const ED25519_SHA256: &str = "ed25519-sha256";

/// A new key pair.
pub struct GeneratedKey {
    /// [`RSA_SHA256`] or [`ED25519_SHA256`].
    pub algorithm: &'static str,
    /// PKCS#8 DER.
    pub private_key: Vec<u8>,
    /// The bytes of the record's `p=` (SubjectPublicKeyInfo DER for RSA,
    /// the raw 32-byte key for Ed25519, RFC 8463 §4.2).
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A new RSA-2048 key.
pub fn generate_rsa() -> Result<GeneratedKey, String> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| "RSA key generation failed")?;
    let private: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| "cannot encode the RSA key")?;
    let public: PublicKeyX509Der<'static> = pair
        .public_key()
        .as_der()
        .map_err(|_| "cannot encode the RSA public key")?;
    Ok(GeneratedKey {
        algorithm: RSA_SHA256,
        private_key: private.as_ref().to_vec(),
        public_key: public.as_ref().to_vec(),
    })
}

/// A new Ed25519 key.
pub fn generate_ed25519() -> Result<GeneratedKey, String> {
    let pkcs8 = mail_auth::common::crypto::Ed25519Key::generate_pkcs8()
        .map_err(|e| format!("Ed25519 key generation failed: {e}"))?;
    let key = mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&pkcs8)
        .map_err(|e| format!("Ed25519 key generation failed: {e}"))?;
    Ok(GeneratedKey {
        algorithm: ED25519_SHA256,
        public_key: key.public_key(),
        private_key: pkcs8,
    })
}

/// The next free pair of selectors for `year`: `<year><letter>-rsa` and
/// `<year><letter>-ed`, the first letter neither is taken with.
pub fn next_selectors(year: i32, taken: &[String]) -> Option<(String, String)> {
    ('a'..='z').find_map(|letter| {
        let rsa = format!("{year}{letter}-rsa");
        let ed = format!("{year}{letter}-ed");
        (!taken.contains(&rsa) && !taken.contains(&ed)).then_some((rsa, ed))
    })
}

impl GeneratedKey {
    /// The private key as stored: PKCS#8 PEM.
    pub fn private_pem(&self) -> String {
        to_pem(&self.private_key)
    }

    /// The record's `p=` value.
    pub fn public_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.public_key)
    }
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// PKCS#8 DER as PEM (RFC 7468 §10).
pub fn to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("{PEM_BEGIN}\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

/// PKCS#8 PEM back to DER.
pub fn from_pem(pem: &str) -> Result<Vec<u8>, String> {
    let body = pem
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|s| s.strip_suffix(PEM_END))
        .ok_or("not a PKCS#8 PEM private key")?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad PEM: {e}"))
}

/// The TXT record value for a key (RFC 6376 §3.6.1, RFC 8463 §4.2), given
/// its `p=` value (base64).
pub fn dkim_record(algorithm: &str, public_key: &str) -> String {
    let k = if algorithm == ED25519_SHA256 {
        "ed25519"
    } else {
        "rsa"
    };
    format!("v=DKIM1; k={k}; p={public_key}")
}

/// A zone-file line publishing `value` at `name`, split into strings of at
/// most 255 bytes (RFC 1035 §3.3.14; resolvers join them, RFC 7208 §3.3).
pub fn zone_line(name: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{}. IN TXT {}",
        name.trim_end_matches('.'),
        strings.join(" ")
    )
}

/// Where the record of `selector` for `domain` lives.
pub fn record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_named_by_year_and_generation() {
        assert_eq!(
            next_selectors(2026, &[]),
            Some(("2026a-rsa".into(), "2026a-ed".into()))
        );
        let taken = vec!["2026a-rsa".to_string(), "2026b-ed".to_string()];
        assert_eq!(
            next_selectors(2026, &taken),
            Some(("2026c-rsa".into(), "2026c-ed".into()))
        );
    }

    #[test]
    fn generated_keys_have_the_published_shapes() {
        let ed = generate_ed25519().unwrap();
        assert_eq!(ed.public_key.len(), 32);
        assert!(
            dkim_record(ed.algorithm, &ed.public_base64()).starts_with("v=DKIM1; k=ed25519; p=")
        );
        assert_eq!(from_pem(&ed.private_pem()).unwrap(), ed.private_key);
        let rsa = generate_rsa().unwrap();
        // SubjectPublicKeyInfo of a 2048-bit key is 294 bytes.
        assert_eq!(rsa.public_key.len(), 294);
        let record = dkim_record(rsa.algorithm, &rsa.public_base64());
        assert_eq!(from_pem(&rsa.private_pem()).unwrap(), rsa.private_key);
        let line = zone_line("2026a-rsa._domainkey.example.test", &record);
        assert!(
            line.starts_with("2026a-rsa._domainkey.example.test. IN TXT \"v=DKIM1; k=rsa; p=MIIB")
        );
        assert_eq!(line.matches('"').count(), 4, "two strings: {line}");
    }
}

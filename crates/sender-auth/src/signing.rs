//! DKIM signing of mail from our domains (RFC 6376 §5; Ed25519 per RFC 8463).
//!
//! Invariants:
//! * relaxed/relaxed canonicalisation, no `l=` (a body-length limit lets
//!   anyone append to a signed message), `x=` a configured time ahead;
//! * the signed header fields are [`SIGNED_HEADERS`]; those in
//!   [`OVERSIGNED`] are listed once more than they occur, so no such field
//!   can be added after signing (RFC 6376 §8.15); fields named but absent
//!   are listed too (signing their absence);
//! * a message is signed once with every active key of the author domain
//!   (RSA and Ed25519 by default) and each signature is computed over the
//!   message without the others, so their order does not matter.

use std::time::Duration;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::keys::{ED25519_SHA256, RSA_SHA256};

/// The header fields signed when present (and their absence when not).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
];

/// The fields listed once more than they occur.
pub const OVERSIGNED: &[&str] = &["From", "Subject", "To", "Cc", "Reply-To"];

/// One key to sign with.
#[derive(Clone, Copy)]
pub struct SigningKey<'a> {
    /// `d=`.
    pub domain: &'a str,
    /// `s=`.
    pub selector: &'a str,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: &'a str,
    /// PKCS#8 PEM.
    pub private_key_pem: &'a str,
}

impl std::fmt::Debug for SigningKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The `h=` template: every field once, the oversigned ones twice. The
/// signer lists each occurrence it finds and then every template entry it
/// found nothing for; a second entry of a name is never "found" (the first
/// takes all occurrences), so it is listed once more, i.e. oversigned.
fn header_template() -> Vec<&'static str> {
    SIGNED_HEADERS
        .iter()
        .chain(OVERSIGNED.iter())
        .copied()
        .collect()
}

/// The `DKIM-Signature` fields (folded, CRLF-terminated) for `message`, one
/// per key, to put on top of it.
pub fn sign(message: &[u8], keys: &[SigningKey<'_>], expiry: Duration) -> Result<String, String> {
    let mut out = String::new();
    for key in keys {
        let fail = |e: mail_auth::Error| {
            format!(
                "DKIM signing with {} for {} failed: {e}",
                key.selector, key.domain
            )
        };
        let der = crate::keys::from_pem(key.private_key_pem)
            .map_err(|e| format!("DKIM key {} of {}: {e}", key.selector, key.domain))?;
        let signature = match key.algorithm {
            RSA_SHA256 => {
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.as_slice()));
                let k = RsaKey::<Sha256>::from_key_der(der).map_err(fail)?;
                signer(DkimSigner::from_key(k), key, expiry)
                    .sign(message)
                    .map_err(fail)?
            }
            ED25519_SHA256 => {
                let k = Ed25519Key::from_pkcs8_der(&der).map_err(fail)?;
                signer(DkimSigner::from_key(k), key, expiry)
                    .sign(message)
                    .map_err(fail)?
            }
            other => return Err(format!("unknown DKIM algorithm {other:?}")),
        };
        out.push_str(&signature.to_header());
    }
    Ok(out)
}

fn signer<T: mail_auth::common::crypto::SigningKey>(
    builder: DkimSigner<T>,
    key: &SigningKey<'_>,
    expiry: Duration,
) -> DkimSigner<T, mail_auth::dkim::Done> {
    let signer = builder
        .domain(key.domain)
        .selector(key.selector)
        .headers(header_template())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    if expiry.is_zero() {
        signer
    } else {
        signer.expiration(expiry.as_secs())
    }
}

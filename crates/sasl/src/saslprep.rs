//! SASLprep (RFC 4013), the subset that does not need Unicode tables.
//!
//! SCRAM hashes the *prepared* password (RFC 5802 §2.2, required for
//! SCRAM-SHA-256 by RFC 7677 §4), so the server must prepare a password
//! exactly as clients do when it derives the stored keys, or users whose
//! password contains e.g. a no-break space could never log in with SCRAM.
//!
//! Implemented: the mapping step (RFC 4013 §2.1: non-ASCII spaces of
//! RFC 3454 table C.1.2 become U+0020, "commonly mapped to nothing" code
//! points of table B.1 are removed) and the full prohibited-output check
//! (RFC 4013 §2.3: tables C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7,
//! C.8, C.9), all of which are small code-point ranges.
//!
//! Left out, because they need the Unicode character database and the crate
//! may not depend on one: NFKC normalisation (RFC 4013 §2.2), the bidi rule
//! (RFC 3454 §6) and the unassigned-code-point check for stored strings
//! (RFC 4013 §2.5). Consequence: ASCII passwords and passwords already in
//! NFKC (most passwords typed on ordinary keyboards) are prepared exactly
//! as a conforming client prepares them; a password whose NFKC form differs
//! (full-width letters, ligatures, decomposed accents) gets keys that a
//! conforming client will not match, so that user can log in with PLAIN or
//! LOGIN but not with SCRAM.

use std::fmt;

/// A password contains a code point SASLprep forbids (RFC 4013 §2.3).
///
/// Such a password could never be typed identically by a conforming client,
/// so refusing it when it is *set* is kinder than accepting it and failing
/// every SCRAM login later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslprepError {
    /// The first prohibited code point found, for the error message.
    pub prohibited: char,
}

impl fmt::Display for SaslprepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "password contains U+{:04X}, which SASLprep (RFC 4013) prohibits",
            u32::from(self.prohibited)
        )
    }
}

impl std::error::Error for SaslprepError {}

/// Prepares a password with SASLprep (RFC 4013) before SCRAM key derivation.
///
/// See the module documentation for the parts of the profile that are not
/// implemented. The empty string is a valid result; whether an empty password
/// is acceptable is policy, decided by the caller.
pub fn saslprep(input: &str) -> Result<String, SaslprepError> {
    // RFC 4013 §2.1: map. B.1 removal first, so that U+200B (listed in both
    // B.1 and C.1.2) disappears, as other implementations do.
    let mapped: String = input
        .chars()
        .filter(|&c| !mapped_to_nothing(c))
        .map(|c| if non_ascii_space(c) { ' ' } else { c })
        .collect();
    // RFC 4013 §2.3: prohibited output.
    if let Some(c) = mapped.chars().find(|&c| prohibited(c)) {
        return Err(SaslprepError { prohibited: c });
    }
    Ok(mapped)
}

/// RFC 3454 table C.1.2 (non-ASCII space characters).
fn non_ascii_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200B}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// RFC 3454 table B.1 (commonly mapped to nothing).
fn mapped_to_nothing(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{1806}'
            | '\u{180B}'..='\u{180D}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
    )
}

/// RFC 4013 §2.3: RFC 3454 tables C.1.2, C.2.1, C.2.2, C.3, C.4, C.5
/// (surrogates cannot occur in a Rust `str`), C.6, C.7, C.8 and C.9.
fn prohibited(c: char) -> bool {
    let cp = u32::from(c);
    non_ascii_space(c)
        // C.2.1 ASCII control characters.
        || cp <= 0x1F
        || cp == 0x7F
        // C.2.2 non-ASCII control characters.
        || (0x80..=0x9F).contains(&cp)
        || matches!(
            cp,
            0x06DD | 0x070F | 0x180E | 0x200C | 0x200D | 0x2028 | 0x2029 | 0xFEFF
        )
        || (0x2060..=0x2063).contains(&cp)
        || (0x206A..=0x206F).contains(&cp)
        || (0xFFF9..=0xFFFC).contains(&cp)
        || (0x1D173..=0x1D17A).contains(&cp)
        // C.3 private use.
        || (0xE000..=0xF8FF).contains(&cp)
        || (0xF_0000..=0xF_FFFD).contains(&cp)
        || (0x10_0000..=0x10_FFFD).contains(&cp)
        // C.4 non-character code points.
        || (0xFDD0..=0xFDEF).contains(&cp)
        || (cp & 0xFFFE) == 0xFFFE
        // C.6 inappropriate for plain text.
        || (0xFFF9..=0xFFFD).contains(&cp)
        // C.7 inappropriate for canonical representation.
        || (0x2FF0..=0x2FFB).contains(&cp)
        // C.8 change display properties or deprecated.
        || matches!(cp, 0x0340 | 0x0341 | 0x200E | 0x200F)
        || (0x202A..=0x202E).contains(&cp)
        // C.9 tagging characters.
        || cp == 0xE0001
        || (0xE0020..=0xE007F).contains(&cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4013_examples() {
        // RFC 4013 §3 examples that do not need NFKC.
        assert_eq!(saslprep("I\u{00AD}X").unwrap(), "IX");
        assert_eq!(saslprep("user").unwrap(), "user");
        assert_eq!(saslprep("USER").unwrap(), "USER");
        assert_eq!(
            saslprep("\u{0007}"),
            Err(SaslprepError {
                prohibited: '\u{0007}'
            })
        );
    }

    #[test]
    fn maps_spaces_and_removes_invisibles() {
        assert_eq!(saslprep("a\u{00A0}b").unwrap(), "a b");
        assert_eq!(saslprep("a\u{3000}b\u{2003}c").unwrap(), "a b c");
        assert_eq!(saslprep("pass\u{00AD}word").unwrap(), "password");
        assert_eq!(saslprep("\u{FEFF}pw\u{200B}\u{200D}").unwrap(), "pw");
        assert_eq!(saslprep("").unwrap(), "");
        assert_eq!(saslprep("pâss wörd €").unwrap(), "pâss wörd €");
    }

    #[test]
    fn refuses_prohibited() {
        for c in [
            '\0',
            '\t',
            '\n',
            '\u{7F}',
            '\u{85}',
            '\u{2028}',
            '\u{E000}',
            '\u{FDD0}',
            '\u{FFFF}',
            '\u{1FFFE}',
            '\u{200E}',
            '\u{202E}',
            '\u{E0041}',
            '\u{FFFD}',
            '\u{2FF0}',
        ] {
            let pw = format!("ab{c}cd");
            assert_eq!(
                saslprep(&pw),
                Err(SaslprepError { prohibited: c }),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }
}

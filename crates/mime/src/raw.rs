//! [`Raw`]: header bytes kept exactly as they were in the message.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes taken verbatim from a message header (unfolded, not decoded).
///
/// Header values may legally carry 8-bit bytes that are not UTF-8, so this is
/// a byte string. In JSON it is a plain string when the bytes are UTF-8 (the
/// usual case) and an array of numbers otherwise, so nothing is lost.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text, with invalid UTF-8 replaced.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

impl From<&[u8]> for Raw {
    fn from(b: &[u8]) -> Self {
        Raw(b.to_vec())
    }
}

impl From<Vec<u8>> for Raw {
    fn from(b: Vec<u8>) -> Self {
        Raw(b)
    }
}

impl From<&str> for Raw {
    fn from(s: &str) -> Self {
        Raw(s.as_bytes().to_vec())
    }
}

impl From<String> for Raw {
    fn from(s: String) -> Self {
        Raw(s.into_bytes())
    }
}

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(s) => serializer.serialize_str(s),
            Err(_) => self.0.serialize(serializer),
        }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(v.as_bytes().to_vec()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(v.into_bytes()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Raw, E> {
        Ok(Raw(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Raw(out))
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_a_string_and_other_bytes_an_array() {
        assert_eq!(
            serde_json::to_string(&Raw::from("Grüße")).unwrap(),
            "\"Grüße\""
        );
        let latin1 = Raw(vec![b'G', 0xfc, b'!']);
        let json = serde_json::to_string(&latin1).unwrap();
        assert_eq!(json, "[71,252,33]");
        assert_eq!(serde_json::from_str::<Raw>(&json).unwrap(), latin1);
        assert_eq!(
            serde_json::from_str::<Raw>("\"Grüße\"").unwrap(),
            Raw::from("Grüße")
        );
    }
}

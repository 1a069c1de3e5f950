//! The parse of a message cached at delivery, so that IMAP never re-parses
//! a message to answer ENVELOPE, SEARCH on common headers, or list views.

use mail_parser::{Address, MessageParser};
use serde_json::{Value, json};

fn addresses(a: Option<&Address<'_>>) -> Value {
    let Some(a) = a else { return Value::Null };
    Value::Array(
        a.iter()
            .map(|addr| json!({ "name": addr.name(), "address": addr.address() }))
            .collect(),
    )
}

/// A JSON summary of the message's headers (subject, from, to, cc, date,
/// message-id, attachment count), or `None` when it does not parse at all.
pub fn parse_cache(message: &[u8]) -> Option<String> {
    let parsed = MessageParser::default().parse(message)?;
    let value = json!({
        "subject": parsed.subject(),
        "from": addresses(parsed.from()),
        "to": addresses(parsed.to()),
        "cc": addresses(parsed.cc()),
        "date": parsed.date().map(|d| d.to_timestamp()),
        "message_id": parsed.message_id(),
        "attachments": parsed.attachment_count(),
    });
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_summarised() {
        let msg = b"From: Alice <alice@example.test>\r\nTo: bob@example.test, Carol <carol@example.test>\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello\r\n";
        let v: Value = serde_json::from_str(&parse_cache(msg).unwrap()).unwrap();
        assert_eq!(v["subject"], "Grüße");
        assert_eq!(v["from"][0]["address"], "alice@example.test");
        assert_eq!(v["from"][0]["name"], "Alice");
        assert_eq!(v["to"].as_array().unwrap().len(), 2);
        assert_eq!(v["message_id"], "1@example.test");
        assert_eq!(v["date"], 1795860000);
    }
}

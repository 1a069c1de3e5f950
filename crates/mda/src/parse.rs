//! The parse of a message cached at delivery, so that IMAP never re-parses
//! a message to answer ENVELOPE, BODY or BODYSTRUCTURE.

use mailroom_mime::Summary;

/// The message's [`Summary`] as JSON (computed on the message as it
/// arrived, without the per-recipient header prefix: the summary does not
/// depend on it). Every byte string reads as some message, so this is
/// always `Some`; the `Option` stays for the store's nullable column.
pub fn parse_cache(message: &[u8]) -> Option<String> {
    Some(Summary::parse(message).to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_the_summary() {
        let msg = b"From: Alice <alice@example.test>\r\nTo: bob@example.test, Carol <carol@example.test>\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello\r\n";
        let json = parse_cache(msg).unwrap();
        let summary = Summary::from_json(&json).unwrap();
        assert_eq!(summary, Summary::parse(msg));
        let e = &summary.envelope;
        assert_eq!(
            e.subject.as_ref().unwrap().as_bytes(),
            b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="
        );
        assert_eq!(e.from[0].name.as_ref().unwrap().as_bytes(), b"Alice");
        assert_eq!(e.from[0].mailbox.as_ref().unwrap().as_bytes(), b"alice");
        assert_eq!(e.from[0].host.as_ref().unwrap().as_bytes(), b"example.test");
        assert_eq!(e.to.len(), 2);
        assert_eq!(
            e.message_id.as_ref().unwrap().as_bytes(),
            b"<1@example.test>"
        );
        assert_eq!(summary.body.size, 7);
        assert_eq!(summary.body.lines, 1);
    }
}

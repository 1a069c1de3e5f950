//! ENVELOPE, BODY and BODYSTRUCTURE as they go on the wire, and the stored
//! JSON.

mod common;

use common::*;
use imap_types::fetch::MessageDataItem;
use mailroom_mime::Summary;

fn envelope(message: &[u8]) -> String {
    wire(MessageDataItem::Envelope(
        Summary::parse(message).envelope(),
    ))
}

fn body(message: &[u8]) -> String {
    wire(MessageDataItem::Body(
        Summary::parse(message).body_structure(false),
    ))
}

fn bodystructure(message: &[u8]) -> String {
    wire(MessageDataItem::BodyStructure(
        Summary::parse(message).body_structure(true),
    ))
}

#[test]
fn rfc9051_envelope_example() {
    assert_eq!(
        envelope(SIMPLE.as_bytes()),
        concat!(
            r#"ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev2 WG mtg summary and minutes" "#,
            r#"(("Terry Gray" NIL "gray" "cac.washington.edu")) "#,
            r#"(("Terry Gray" NIL "gray" "cac.washington.edu")) "#,
            r#"(("Terry Gray" NIL "gray" "cac.washington.edu")) "#,
            r#"((NIL NIL "imap" "cac.washington.edu")) "#,
            r#"((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) "#,
            r#"NIL NIL "<B27397-0100000@cac.washington.edu>")"#,
        )
    );
}

#[test]
fn simple_text_plain() {
    assert_eq!(
        body(SIMPLE.as_bytes()),
        r#"BODY ("TEXT" "PLAIN" ("charset" "US-ASCII") NIL NIL "7bit" 39 2)"#
    );
    assert_eq!(
        bodystructure(SIMPLE.as_bytes()),
        r#"BODYSTRUCTURE ("TEXT" "PLAIN" ("charset" "US-ASCII") NIL NIL "7bit" 39 2 NIL NIL NIL NIL)"#
    );
}

#[test]
fn multipart_alternative() {
    assert_eq!(
        bodystructure(ALT.as_bytes()),
        concat!(
            r#"BODYSTRUCTURE ("#,
            r#"("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "quoted-printable" 29 1 NIL NIL NIL NIL)"#,
            r#"("TEXT" "HTML" ("charset" "utf-8") NIL NIL "base64" 28 0 NIL NIL NIL NIL)"#,
            r#" "ALTERNATIVE" ("boundary" "XX") NIL NIL NIL)"#,
        )
    );
    assert_eq!(
        body(ALT.as_bytes()),
        concat!(
            r#"BODY (("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "quoted-printable" 29 1)"#,
            r#"("TEXT" "HTML" ("charset" "utf-8") NIL NIL "base64" 28 0) "ALTERNATIVE")"#,
        )
    );
}

#[test]
fn multipart_mixed_with_attachment_and_forwarded_message() {
    assert_eq!(
        bodystructure(MIXED.as_bytes()),
        concat!(
            r#"BODYSTRUCTURE ("#,
            r#"("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 43 1 NIL NIL NIL NIL)"#,
            r#"("MESSAGE" "RFC822" NIL NIL "forwarded" "7bit" 112 "#,
            r#"("Tue, 8 Feb 1994 10:00:00 +0000" "Inner" (("Dave" NIL "dave" "example.org")) "#,
            r#"(("Dave" NIL "dave" "example.org")) (("Dave" NIL "dave" "example.org")) NIL NIL NIL NIL NIL) "#,
            r#"("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 25 1 NIL NIL NIL NIL) 5 NIL NIL NIL NIL)"#,
            r#"("APPLICATION" "PDF" ("name" "report.pdf") "<report@example.com>" NIL "base64" 20 "#,
            r#"NIL ("attachment" ("filename" "report.pdf")) ("en" "de") NIL)"#,
            r#" "MIXED" ("boundary" "outer") NIL NIL NIL)"#,
        )
    );
    assert_eq!(
        body(MIXED.as_bytes()),
        concat!(
            r#"BODY (("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 43 1)"#,
            r#"("MESSAGE" "RFC822" NIL NIL "forwarded" "7bit" 112 "#,
            r#"("Tue, 8 Feb 1994 10:00:00 +0000" "Inner" (("Dave" NIL "dave" "example.org")) "#,
            r#"(("Dave" NIL "dave" "example.org")) (("Dave" NIL "dave" "example.org")) NIL NIL NIL NIL NIL) "#,
            r#"("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 25 1) 5)"#,
            r#"("APPLICATION" "PDF" ("name" "report.pdf") "<report@example.com>" NIL "base64" 20) "MIXED")"#,
        )
    );
}

#[test]
fn group_addresses_and_encoded_words_stay_raw() {
    assert_eq!(
        envelope(MIXED.as_bytes()),
        concat!(
            r#"ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800" "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and a report" "#,
            r#"(("Alice Example" NIL "alice" "example.com")) "#,
            r#"(("Alice Example" NIL "alice" "example.com")) "#,
            r#"(("Alice Example" NIL "alice" "example.com")) "#,
            r#"((NIL NIL "Team" NIL)(NIL NIL "bob" "example.com")("Carol" NIL "carol" "example.com")(NIL NIL NIL NIL)) "#,
            r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) "#,
            r#"NIL "<earlier@example.com>" "<mixed@example.com>")"#,
        )
    );
}

#[test]
fn missing_headers_are_nil() {
    assert_eq!(
        envelope(BARE.as_bytes()),
        r#"ENVELOPE (NIL "only" NIL NIL NIL NIL NIL NIL NIL NIL)"#
    );
    assert_eq!(
        envelope(b"\r\nno header at all\r\n"),
        "ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    );
    assert_eq!(
        bodystructure(b"\r\nno header at all\r\n"),
        r#"BODYSTRUCTURE ("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 18 1 NIL NIL NIL NIL)"#
    );
    // An empty Subject is an empty string, not NIL; empty Sender and
    // Reply-To default to From.
    assert_eq!(
        envelope(b"Subject:\r\nFrom: a@b.test\r\nSender:\r\n\r\n"),
        r#"ENVELOPE (NIL "" ((NIL NIL "a" "b.test")) ((NIL NIL "a" "b.test")) ((NIL NIL "a" "b.test")) NIL NIL NIL NIL NIL)"#
    );
}

#[test]
fn non_ascii_header_bytes_become_literals() {
    let message = "From: Jörg <j@example.com>\r\nSubject: Grüße \"x\"\r\n\r\n".as_bytes();
    assert_eq!(
        envelope(message),
        "ENVELOPE (NIL {11}\r\nGrüße \"x\" ((\"Jörg\" NIL \"j\" \"example.com\")) \
         ((\"Jörg\" NIL \"j\" \"example.com\")) ((\"Jörg\" NIL \"j\" \"example.com\")) NIL NIL NIL NIL NIL)"
            .replace("\"Jörg\"", "{5}\r\nJörg")
    );
}

#[test]
fn edge_structures() {
    // A boundary that never occurs: one empty text/plain part is reported.
    assert_eq!(
        bodystructure(b"Content-Type: multipart/mixed; boundary=nope\r\n\r\nno parts\r\n"),
        concat!(
            r#"BODYSTRUCTURE (("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)"#,
            r#" "MIXED" ("boundary" "nope") NIL NIL NIL)"#,
        )
    );
    // RFC 2231 parameters are joined and decoded (RFC 9051 §7.5.2); the
    // non-ASCII result is sent as a literal.
    let message = concat!(
        "Content-Type: application/octet-stream\r\n",
        "Content-Disposition: attachment;\r\n",
        " filename*0*=UTF-8''Gr%C3%BC;\r\n",
        " filename*1*=%C3%9Fe.txt\r\n",
        "\r\n",
        "data"
    );
    assert_eq!(
        bodystructure(message.as_bytes()),
        "BODYSTRUCTURE (\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"7bit\" 4 NIL \
         (\"attachment\" (\"filename\" {11}\r\nGrüße.txt)) NIL NIL)"
    );
}

#[test]
fn the_header_prefix_changes_nothing() {
    for message in [SIMPLE, ALT, MIXED, BARE] {
        let plain = Summary::parse(message.as_bytes());
        assert_eq!(Summary::parse(&stored(message)), plain);
        assert_eq!(
            bodystructure(&stored(message)),
            bodystructure(message.as_bytes())
        );
        assert_eq!(envelope(&stored(message)), envelope(message.as_bytes()));
    }
}

#[test]
fn json_round_trip() {
    for message in [SIMPLE, ALT, MIXED, BARE] {
        let summary = Summary::parse(message.as_bytes());
        assert_eq!(Summary::from_json(&summary.to_json()), Some(summary));
    }
    assert_eq!(
        Summary::parse(SIMPLE.as_bytes()).to_json(),
        concat!(
            r#"{"e":{"d":"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)","s":"IMAP4rev2 WG mtg summary and minutes","#,
            r#""f":[{"n":"Terry Gray","m":"gray","h":"cac.washington.edu"}],"#,
            r#""t":[{"m":"imap","h":"cac.washington.edu"}],"#,
            r#""c":[{"m":"minutes","h":"CNRI.Reston.VA.US"},{"n":"John Klensin","m":"KLENSIN","h":"MIT.EDU"}],"#,
            r#""m":"<B27397-0100000@cac.washington.edu>"},"#,
            r#""b":{"t":"text","s":"plain","p":[["charset","US-ASCII"]],"z":39,"l":2}}"#,
        )
    );
    assert_eq!(Summary::from_json("{\"e\":1}"), None);
    // What the MDA stored before this crate existed is not a summary: the
    // caller re-parses the message.
    let old_cache = r#"{"subject":"Hi","from":[{"name":"A","address":"a@b.test"}],"to":null,"cc":null,"date":1,"message_id":"1@b.test","attachments":0}"#;
    assert_eq!(Summary::from_json(old_cache), None);
    // 8-bit that is not UTF-8 survives the round trip.
    let latin1 = b"Subject: Gr\xfc\xdfe\r\n\r\n";
    let summary = Summary::parse(latin1);
    assert_eq!(Summary::from_json(&summary.to_json()), Some(summary));
}

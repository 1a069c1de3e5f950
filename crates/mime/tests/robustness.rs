//! Odd input: bare LF line ends, deep nesting, random garbage.

mod common;

use common::*;
use imap_types::fetch::{MessageDataItem, Section};
use mailroom_mime::{
    Summary, binary_section, body_contains, header_values, section, sent_date, text_contains,
};

#[test]
fn bare_lf_line_ends() {
    let message = ALT.replace("\r\n", "\n");
    let raw = message.as_bytes();
    assert_eq!(
        wire(MessageDataItem::BodyStructure(
            Summary::parse(raw).body_structure(true)
        )),
        concat!(
            r#"BODYSTRUCTURE ("#,
            r#"("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "quoted-printable" 28 1 NIL NIL NIL NIL)"#,
            r#"("TEXT" "HTML" ("charset" "utf-8") NIL NIL "base64" 28 0 NIL NIL NIL NIL)"#,
            r#" "ALTERNATIVE" ("boundary" "XX") NIL NIL NIL)"#,
        )
    );
    assert_eq!(
        section(raw, Some(&Section::Part(part(&[1])))).unwrap(),
        b"Gr=C3=BC=C3=9Fe aus =\nBerlin"
    );
    assert_eq!(
        section(raw, Some(&Section::HeaderFields(None, names(&["subject"])))).unwrap(),
        b"Subject: alternatives\n\n"
    );
    assert_eq!(
        binary_section(raw, &[1]).unwrap(),
        "Grüße aus Berlin".as_bytes()
    );
}

#[test]
fn deep_nesting_is_cut_off_and_still_stored() {
    let mut message = String::new();
    for level in 0..100 {
        message.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n"
        ));
    }
    message.push_str("\r\ndeep\r\n");
    let summary = Summary::parse(message.as_bytes());
    assert_eq!(
        Summary::from_json(&summary.to_json()),
        Some(summary.clone())
    );
    let mut depth = 0;
    let mut part = &summary.body;
    while let mailroom_mime::Content::Multipart(children) = &part.content {
        depth += 1;
        part = &children[0];
    }
    assert_eq!(depth, 32);
    assert_eq!(part.media_type, "multipart");
}

/// A small deterministic generator (xorshift), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_never_panics() {
    const PIECES: &[&str] = &[
        "\r\n",
        "\n",
        "\r",
        ": ",
        "From: ",
        "To: a:b;,<@x:y@z>, \"q\\\" (c(d)e) ",
        "Subject: =?utf-8?b?w7w=?= ",
        "Content-Type: multipart/mixed; boundary=b",
        "Content-Type: message/rfc822",
        "Content-Type: text/plain; charset=\"utf-8",
        "Content-Transfer-Encoding: base64",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Disposition: attachment; filename*0*=x'y'%FF",
        "--b",
        "--b--",
        " ",
        "\t",
        "=",
        "=C3=",
        "\0",
        "\u{fc}",
        "[",
        "(",
        ")",
        "<",
        ">",
        "\"",
        ";",
        ",",
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..3000 {
        let mut message = Vec::new();
        for _ in 0..(rng.next() % 40) {
            let piece = PIECES[(rng.next() % PIECES.len() as u64) as usize];
            message.extend_from_slice(piece.as_bytes());
            if rng.next().is_multiple_of(7) {
                message.push((rng.next() % 256) as u8);
            }
        }
        let summary = Summary::parse(&message);
        assert_eq!(
            Summary::from_json(&summary.to_json()),
            Some(summary.clone())
        );
        wire_bytes(MessageDataItem::Envelope(summary.envelope()));
        wire_bytes(MessageDataItem::BodyStructure(summary.body_structure(true)));
        wire_bytes(MessageDataItem::Body(summary.body_structure(false)));
        for p in [&[1][..], &[1, 1], &[2], &[1, 2, 1]] {
            let _ = section(&message, Some(&Section::Part(part(p))));
            let _ = section(&message, Some(&Section::Mime(part(p))));
            let _ = section(&message, Some(&Section::Text(Some(part(p)))));
            let _ = binary_section(&message, p);
        }
        let _ = section(
            &message,
            Some(&Section::HeaderFieldsNot(None, names(&["to"]))),
        );
        let _ = header_values(&message, "subject");
        let _ = body_contains(&message, "x");
        let _ = text_contains(&message, "ü");
        let _ = sent_date(&message);
    }
}

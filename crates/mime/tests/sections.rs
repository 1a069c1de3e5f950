//! BODY[section] and BINARY[section] on the stored message (prefix
//! included).

mod common;

use common::*;
use imap_types::fetch::Section;
use mailroom_mime::{BinaryError, binary_section, binary_size, section};

fn body(message: &[u8], s: Section<'static>) -> Option<String> {
    section(message, Some(&s)).map(|b| String::from_utf8(b).unwrap())
}

#[test]
fn whole_message_header_and_text() {
    let raw = stored(MIXED);
    assert_eq!(section(&raw, None), Some(raw.clone()));
    let header_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        body(&raw, Section::Header(None)).unwrap().as_bytes(),
        &raw[..header_end]
    );
    assert_eq!(
        body(&raw, Section::Text(None)).unwrap().as_bytes(),
        &raw[header_end..]
    );
    assert!(
        body(&raw, Section::Header(None))
            .unwrap()
            .starts_with(PREFIX)
    );
}

#[test]
fn part_numbers() {
    let raw = stored(MIXED);
    assert_eq!(
        body(&raw, Section::Part(part(&[1]))).unwrap(),
        "See the report and the forwarded message.\r\n"
    );
    assert_eq!(
        body(&raw, Section::Part(part(&[2]))).unwrap(),
        concat!(
            "From: Dave <dave@example.org>\r\n",
            "Subject: Inner\r\n",
            "Date: Tue, 8 Feb 1994 10:00:00 +0000\r\n",
            "\r\n",
            "Inner body line 1\r\n",
            "line 2",
        )
    );
    assert_eq!(
        body(&raw, Section::Part(part(&[2, 1]))).unwrap(),
        "Inner body line 1\r\nline 2"
    );
    assert_eq!(
        body(&raw, Section::Part(part(&[3]))).unwrap(),
        "SGVsbG8sIFdvcmxkIQ=="
    );
    // A message that is not multipart has only part 1, its body.
    let simple = stored(SIMPLE);
    assert_eq!(
        body(&simple, Section::Part(part(&[1]))).unwrap(),
        "Hello Bob,\r\nthe minutes are attached.\r\n"
    );
    let alt = stored(ALT);
    assert_eq!(
        body(&alt, Section::Part(part(&[2]))).unwrap(),
        "PHA+SGFsbG8gV2VsdDwvcD4NCg=="
    );
}

#[test]
fn nonexistent_parts_are_none_and_inapplicable_specifiers_empty() {
    let raw = stored(MIXED);
    assert_eq!(body(&raw, Section::Part(part(&[4]))), None);
    assert_eq!(body(&raw, Section::Part(part(&[1, 1]))), None);
    assert_eq!(body(&raw, Section::Part(part(&[2, 2]))), None);
    assert_eq!(body(&raw, Section::Mime(part(&[9]))), None);
    assert_eq!(body(&raw, Section::Text(Some(part(&[5])))), None);
    assert_eq!(body(&stored(SIMPLE), Section::Part(part(&[2]))), None);
    // HEADER and TEXT of a part that is no message/rfc822.
    assert_eq!(
        body(&raw, Section::Header(Some(part(&[1])))),
        Some(String::new())
    );
    assert_eq!(
        body(&raw, Section::Text(Some(part(&[3])))),
        Some(String::new())
    );
}

#[test]
fn mime_headers() {
    let raw = stored(MIXED);
    assert_eq!(
        body(&raw, Section::Mime(part(&[3]))).unwrap(),
        concat!(
            "Content-Type: application/pdf; name=\"report.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "Content-Disposition: attachment; filename=\"report.pdf\"\r\n",
            "Content-ID: <report@example.com>\r\n",
            "Content-Language: en, de\r\n",
            "\r\n",
        )
    );
    assert_eq!(
        body(&raw, Section::Mime(part(&[2]))).unwrap(),
        "Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n"
    );
}

#[test]
fn header_fields() {
    let raw = stored(MIXED);
    assert_eq!(
        body(
            &raw,
            Section::HeaderFields(None, names(&["Subject", "FROM"]))
        )
        .unwrap(),
        concat!(
            "From: \"Alice Example\" <alice@example.com>\r\n",
            "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and a report\r\n",
            "\r\n",
        )
    );
    assert_eq!(
        body(&raw, Section::HeaderFields(None, names(&["X-None"]))).unwrap(),
        "\r\n"
    );
    // Folded lines are returned as they are.
    assert_eq!(
        body(&stored(SIMPLE), Section::HeaderFields(None, names(&["CC"]))).unwrap(),
        "cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n\r\n"
    );
    assert_eq!(
        body(
            &stored(ALT),
            Section::HeaderFieldsNot(None, names(&["mime-version", "content-type", "to"]))
        )
        .unwrap(),
        concat!(
            "Return-Path: <bounce@example.net>\r\n",
            "Delivered-To: bob@example.com\r\n",
            "From: sender@example.com\r\n",
            "Subject: alternatives\r\n",
            "\r\n",
        )
    );
}

#[test]
fn nested_message_header_and_text() {
    let raw = stored(MIXED);
    assert_eq!(
        body(&raw, Section::Text(Some(part(&[2])))).unwrap(),
        "Inner body line 1\r\nline 2"
    );
    assert_eq!(
        body(&raw, Section::Header(Some(part(&[2])))).unwrap(),
        concat!(
            "From: Dave <dave@example.org>\r\n",
            "Subject: Inner\r\n",
            "Date: Tue, 8 Feb 1994 10:00:00 +0000\r\n",
            "\r\n",
        )
    );
    assert_eq!(
        body(
            &raw,
            Section::HeaderFields(Some(part(&[2])), names(&["subject"]))
        )
        .unwrap(),
        "Subject: Inner\r\n\r\n"
    );
}

#[test]
fn binary_decodes_the_transfer_encoding() {
    let raw = stored(MIXED);
    assert_eq!(binary_section(&raw, &[3]).unwrap(), b"Hello, World!");
    assert_eq!(binary_size(&raw, &[3]), Ok(13));
    assert_eq!(
        binary_section(&raw, &[1]).unwrap(),
        b"See the report and the forwarded message.\r\n"
    );
    assert_eq!(binary_section(&raw, &[]).unwrap(), raw);
    assert_eq!(binary_section(&raw, &[7]), Err(BinaryError::NoSuchPart));
    assert_eq!(binary_section(&raw, &[0]), Err(BinaryError::NoSuchPart));

    let alt = stored(ALT);
    assert_eq!(
        binary_section(&alt, &[1]).unwrap(),
        "Grüße aus Berlin".as_bytes()
    );
    assert_eq!(binary_size(&alt, &[1]), Ok(18));
    assert_eq!(
        binary_section(&alt, &[2]).unwrap(),
        b"<p>Hallo Welt</p>\r\n"
    );

    let uu = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: X-UUencode\r\n\r\nbegin 644 x\r\n";
    assert_eq!(
        binary_section(uu, &[1]),
        Err(BinaryError::UnknownCte("x-uuencode".into()))
    );
    let broken = b"Content-Transfer-Encoding: base64\r\n\r\n*** not base64 ***\r\n";
    assert_eq!(binary_section(broken, &[1]), Err(BinaryError::Corrupt));
}

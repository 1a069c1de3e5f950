//! Test messages shared by the integration tests (included with `mod`).

#![allow(dead_code)]

use std::num::NonZeroU32;

use imap_codec::ResponseCodec;
use imap_codec::decode::Decoder;
use imap_codec::encode::Encoder;
use imap_types::core::{AString, Vec1};
use imap_types::fetch::{MessageDataItem, Part};
use imap_types::response::{Data, Response};

/// The header prefix the MDA puts before each recipient's copy.
pub const PREFIX: &str = "Return-Path: <bounce@example.net>\r\nDelivered-To: bob@example.com\r\n";

/// The RFC 9051 §7.5.2 ENVELOPE example's header, with a short body.
pub const SIMPLE: &str = concat!(
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n",
    "From: Terry Gray <gray@cac.washington.edu>\r\n",
    "Subject: IMAP4rev2 WG mtg summary and minutes\r\n",
    "To: imap@cac.washington.edu\r\n",
    "cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n",
    "Message-Id: <B27397-0100000@cac.washington.edu>\r\n",
    "MIME-Version: 1.0\r\n",
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n",
    "\r\n",
    "Hello Bob,\r\n",
    "the minutes are attached.\r\n",
);

/// multipart/alternative: quoted-printable text/plain, base64 text/html.
pub const ALT: &str = concat!(
    "From: sender@example.com\r\n",
    "To: rcpt@example.com\r\n",
    "Subject: alternatives\r\n",
    "MIME-Version: 1.0\r\n",
    "Content-Type: multipart/alternative; boundary=\"XX\"\r\n",
    "\r\n",
    "--XX\r\n",
    "Content-Type: text/plain; charset=utf-8\r\n",
    "Content-Transfer-Encoding: quoted-printable\r\n",
    "\r\n",
    "Gr=C3=BC=C3=9Fe aus =\r\n",
    "Berlin\r\n",
    "--XX\r\n",
    "Content-Type: text/html; charset=utf-8\r\n",
    "Content-Transfer-Encoding: base64\r\n",
    "\r\n",
    "PHA+SGFsbG8gV2VsdDwvcD4NCg==\r\n",
    "--XX--\r\n",
);

/// multipart/mixed: text, a forwarded message, a base64 attachment;
/// group addresses; an encoded-word Subject.
pub const MIXED: &str = concat!(
    "From: \"Alice Example\" <alice@example.com>\r\n",
    "To: Team: bob@example.com, Carol <carol@example.com>;\r\n",
    "Cc: undisclosed-recipients:;\r\n",
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and a report\r\n",
    "Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n",
    "Message-ID: <mixed@example.com>\r\n",
    "In-Reply-To: <earlier@example.com>\r\n",
    "MIME-Version: 1.0\r\n",
    "Content-Type: multipart/mixed; boundary=\"outer\"\r\n",
    "\r\n",
    "This is a multi-part message in MIME format.\r\n",
    "--outer\r\n",
    "Content-Type: text/plain; charset=us-ascii\r\n",
    "\r\n",
    "See the report and the forwarded message.\r\n",
    "\r\n",
    "--outer\r\n",
    "Content-Type: message/rfc822\r\n",
    "Content-Description: forwarded\r\n",
    "\r\n",
    "From: Dave <dave@example.org>\r\n",
    "Subject: Inner\r\n",
    "Date: Tue, 8 Feb 1994 10:00:00 +0000\r\n",
    "\r\n",
    "Inner body line 1\r\n",
    "line 2\r\n",
    "--outer\r\n",
    "Content-Type: application/pdf; name=\"report.pdf\"\r\n",
    "Content-Transfer-Encoding: base64\r\n",
    "Content-Disposition: attachment; filename=\"report.pdf\"\r\n",
    "Content-ID: <report@example.com>\r\n",
    "Content-Language: en, de\r\n",
    "\r\n",
    "SGVsbG8sIFdvcmxkIQ==\r\n",
    "--outer--\r\n",
    "epilogue\r\n",
);

/// Only a Subject: every other envelope field is NIL.
pub const BARE: &str = "Subject: only\r\n\r\nx\r\n";

/// `prefix` + `message`, as stored.
pub fn stored(message: &str) -> Vec<u8> {
    format!("{PREFIX}{message}").into_bytes()
}

/// A FETCH response with one data item as imap-codec writes it on the
/// wire, checked by decoding it again with imap-codec.
pub fn wire_bytes(item: MessageDataItem<'static>) -> Vec<u8> {
    let response = Response::Data(Data::Fetch {
        seq: NonZeroU32::new(1).unwrap(),
        items: Vec1::from(item),
    });
    let bytes = ResponseCodec::default().encode(&response).dump();
    let (rest, decoded) = ResponseCodec::default()
        .decode(&bytes)
        .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(&bytes)));
    assert!(rest.is_empty());
    assert_eq!(decoded, response);
    bytes
}

/// One FETCH data item as imap-codec writes it on the wire.
pub fn wire(item: MessageDataItem<'static>) -> String {
    let text = String::from_utf8(wire_bytes(item)).unwrap();
    text.strip_prefix("* 1 FETCH (")
        .and_then(|t| t.strip_suffix(")\r\n"))
        .unwrap()
        .to_string()
}

/// A part number.
pub fn part(numbers: &[u32]) -> Part {
    Part(
        Vec1::try_from(
            numbers
                .iter()
                .map(|&n| NonZeroU32::new(n).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    )
}

/// A header field name list.
pub fn names(list: &[&'static str]) -> Vec1<AString<'static>> {
    Vec1::try_from(
        list.iter()
            .map(|n| AString::try_from(*n).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

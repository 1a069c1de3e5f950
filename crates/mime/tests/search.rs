//! SEARCH helpers on the stored message.

mod common;

use common::*;
use mailroom_mime::{
    body_contains, header_contains, header_values, sent_date, sent_date_local, text_contains,
};

#[test]
fn header_values_are_decoded_and_unfolded() {
    let raw = stored(MIXED);
    assert_eq!(header_values(&raw, "subject"), vec!["Grüße and a report"]);
    assert_eq!(
        header_values(&stored(SIMPLE), "CC"),
        vec!["minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>"]
    );
    assert_eq!(header_values(&raw, "Delivered-To"), vec!["bob@example.com"]);
    assert_eq!(header_values(&raw, "X-Missing"), Vec::<String>::new());
    let twice = b"Received: one\r\nReceived: two\r\n\r\n";
    assert_eq!(header_values(twice, "received"), vec!["one", "two"]);
}

#[test]
fn header_search_on_an_encoded_word_subject() {
    let raw = stored(MIXED);
    assert!(header_contains(&raw, "Subject", "grüße AND"));
    assert!(header_contains(&raw, "SUBJECT", "REPORT"));
    assert!(!header_contains(&raw, "Subject", "=?UTF-8?Q?"));
    assert!(header_contains(&raw, "From", "alice example"));
    assert!(header_contains(&raw, "In-Reply-To", ""));
    assert!(!header_contains(&raw, "Bcc", ""));
    assert!(!header_contains(&raw, "Subject", "Inner"));
    // Comments inside an address (RFC 5322 §3.4.1) do not hide it.
    let commented = b"From: <user-from (comment)@ (comment) domain.org>\r\n\
                      Cc: group:;, group2: (foo) ;\r\n\r\nbody\r\n";
    assert!(header_contains(commented, "From", "user-from@domain.org"));
    assert!(header_contains(commented, "FROM", "FROM@DOMAIN"));
    assert!(header_contains(commented, "From", "comment"));
    assert!(!header_contains(commented, "Cc", "MISSING"));
    assert!(!header_contains(
        commented,
        "Subject",
        "user-from@domain.org"
    ));
}

#[test]
fn body_search_decodes_base64_quoted_printable_and_charsets() {
    let alt = stored(ALT);
    assert!(body_contains(&alt, "hallo WELT"));
    assert!(!body_contains(&alt, "PHA+SGFsbG8"));
    // Lowercasing, not full case folding: ß does not match "SS".
    assert!(!body_contains(&alt, "GRÜSSE AUS"));
    assert!(body_contains(&alt, "GRÜßE AUS"));
    assert!(body_contains(&alt, "Grüße aus Berlin"));
    assert!(!body_contains(&alt, "C3=BC"));
    assert!(!body_contains(&alt, "alternatives"));
    assert!(body_contains(&alt, ""));

    let latin1 = b"Content-Type: text/plain; charset=iso-8859-1\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nSch=F6ne Gr=FC=DFe\r\n";
    assert!(body_contains(latin1, "schöne grüße"));

    let mixed = stored(MIXED);
    assert!(body_contains(&mixed, "inner body LINE"));
    assert!(body_contains(&mixed, "forwarded message"));
    // Not text: the PDF's decoded bytes are not searched.
    assert!(!body_contains(&mixed, "Hello, World"));
    // Headers are not body.
    assert!(!body_contains(&mixed, "Alice"));
    assert!(!body_contains(&mixed, "Dave"));
}

#[test]
fn text_search_covers_headers_and_body() {
    let mixed = stored(MIXED);
    assert!(text_contains(&mixed, "alice example"));
    assert!(text_contains(&mixed, "grüße"));
    assert!(text_contains(&mixed, "inner body"));
    assert!(text_contains(&mixed, "report.pdf"));
    assert!(text_contains(&mixed, "dave@example.org"));
    assert!(!text_contains(&mixed, "nowhere to be found"));
}

#[test]
fn sent_dates() {
    let mixed = stored(MIXED);
    // Mon, 7 Feb 1994 21:52:25 -0800 = 1994-02-08T05:52:25Z
    assert_eq!(sent_date(&mixed), Some(760_686_745));
    // The same wall-clock time read as UTC: the day is 7 Feb 1994.
    assert_eq!(sent_date_local(&mixed), Some(760_657_945));
    assert_eq!(sent_date_local(&mixed).unwrap().div_euclid(86400), 8803);
    assert_eq!(sent_date(BARE.as_bytes()), None);
    assert_eq!(sent_date(b"Date: not a date\r\n\r\n"), None);
}

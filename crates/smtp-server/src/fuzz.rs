//! Fuzzing harness, shared by the cargo-fuzz target `smtp_message` in
//! `fuzz/` and by the stable test over its seed corpus
//! (`tests/tests/fuzz_corpus.rs`). Panics when an invariant breaks. Not
//! part of the supported API.

use std::net::IpAddr;

use mailroom_smtp_proto::{count_received_headers, header_section};

use crate::message::{ReceivedFrom, has_header, header_value, received_header};

/// What the server reads from a message it accepted (its header section,
/// the `Received:` count for loop detection, `Date:` and `Message-ID:`)
/// and the `Received:` field it writes with the client's EHLO name and
/// recipient in it. The input is the message; its first line is also
/// used as the EHLO name and the recipient.
///
/// Invariants: the header section is a prefix of the message; a field is
/// found by `has_header` exactly when `header_value` finds a value, which
/// holds no control character and at most 256 characters; the
/// `Received:` field is one header field (CRLF line ends, every line after
/// the first folded) whatever the client sent, and counts as one.
pub fn message(input: &[u8]) {
    let headers = header_section(input);
    assert!(input.starts_with(headers));
    let _ = count_received_headers(input);
    for name in ["Date", "Message-ID", "From"] {
        let value = header_value(input, name);
        assert_eq!(has_header(input, name), value.is_some(), "{name}");
        if let Some(value) = value {
            assert!(value.chars().count() <= 256);
            assert!(!value.chars().any(char::is_control), "{value:?}");
        }
    }

    let first = input.split(|&b| b == b'\n').next().unwrap_or_default();
    let client = String::from_utf8_lossy(first);
    let ip: IpAddr = [192, 0, 2, 1].into();
    let field = received_header(
        &ReceivedFrom {
            helo: &client,
            ip,
            by: "mx.example.org",
            esmtp: true,
            tls: None,
            authenticated: false,
            utf8: true,
            id: "id1",
            single_recipient: Some(&client),
            trace_id: Some(&client),
        },
        1_700_000_000,
    );
    let lines: Vec<&str> = field.split_inclusive('\n').collect();
    assert!(lines[0].starts_with("Received: "));
    for (i, line) in lines.iter().enumerate() {
        let body = line.strip_suffix("\r\n").expect("a CRLF line end");
        assert!(!body.contains(['\r', '\n']), "{field:?}");
        assert!(i == 0 || body.starts_with([' ', '\t']), "{field:?}");
    }
    let message = format!("{field}Subject: x\r\n\r\nbody\r\n");
    assert_eq!(count_received_headers(message.as_bytes()), 1, "{field:?}");
}

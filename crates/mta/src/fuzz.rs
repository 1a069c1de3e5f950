//! Fuzzing harness, shared by the cargo-fuzz target `dsn` in `fuzz/` and
//! by the stable test over its seed corpus (`tests/tests/fuzz_corpus.rs`).
//! Panics when an invariant breaks. Not part of the supported API.

use mailroom_store::QueueEnvelope;

use crate::dsn::{ReportKind, ReportedRecipient, envelope_for, render_kind};

/// The boundary's token: in service it is random; here it is fixed, and
/// inputs that contain the boundary are not checked.
const TOKEN: u64 = 0x5eed;

/// A delivery status notification built from what strangers control: the
/// remote server's reply, the client's ENVID, ORCPT and sender, and the
/// original message. The first byte picks the kind, RET=HDRS and
/// BODY=BINARYMIME; then come four lines (sender, ENVID, ORCPT, response)
/// and the message.
///
/// Invariants: the report is one multipart/report whose own lines all end
/// in CRLF, whose text parts hold no bare CR, LF or NUL (nothing the
/// strangers sent can add a header field or a line), whose
/// delivery-status part has one block per recipient with one `Status:`
/// of the right class each, and whose own two parts a MIME parser reads;
/// its envelope is from the null sender and asks for no report.
pub fn dsn(input: &[u8]) {
    let [flags, rest @ ..] = input else {
        return;
    };
    let mut fields = rest.splitn(5, |&b| b == b'\n');
    let mut next = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let (sender, env_id, orcpt, response) = (next(), next(), next(), next());
    let message = rest
        .splitn(5, |&b| b == b'\n')
        .nth(4)
        .unwrap_or_default()
        .to_vec();
    let kind = match flags % 3 {
        0 => ReportKind::Failure,
        1 => ReportKind::Delay {
            will_retry_until: 1_800_000_000,
        },
        _ => ReportKind::Success,
    };
    let envelope = QueueEnvelope {
        sender,
        env_id: (!env_id.is_empty()).then_some(env_id),
        ret: (flags & 0x10 != 0).then(|| "HDRS".to_string()),
        body_type: (flags & 0x20 != 0).then(|| "BINARYMIME".to_string()),
        ..Default::default()
    };
    let recipient = ReportedRecipient {
        address: "rcpt@example.net".into(),
        orcpt: (!orcpt.is_empty()).then_some(orcpt),
        notify: None,
        response,
    };
    let recipients = [&recipient, &recipient];
    let report = render_kind(
        kind,
        "mx.example.org",
        &envelope,
        &message,
        &recipients,
        1_700_000_000,
        TOKEN,
    );
    let boundary = format!("--=_mailroom-dsn-{TOKEN:016x}");
    if rest
        .windows(boundary.len())
        .any(|w| w == boundary.as_bytes())
    {
        // Only a guessed token could do this; the structure is not checked.
        return;
    }
    let returned = report
        .windows(boundary.len())
        .enumerate()
        .filter(|(_, w)| *w == boundary.as_bytes())
        .map(|(i, _)| i)
        .nth(2)
        .expect("three parts");
    let own = &report[..returned];
    assert!(clean(own), "a bare CR, LF or NUL in the report's own text");

    let status_part = String::from_utf8_lossy(own);
    let status_part = status_part
        .split("Content-Type: message/delivery-status\r\n\r\n")
        .nth(1)
        .expect("a delivery-status part");
    let blocks: Vec<&str> = status_part
        .trim_end()
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), 1 + recipients.len(), "{status_part:?}");
    let class = match kind {
        ReportKind::Failure => ['4', '5'].as_slice(),
        ReportKind::Delay { .. } => &['4'],
        ReportKind::Success => &['2'],
    };
    for block in &blocks[1..] {
        let statuses: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("Status: "))
            .collect();
        assert_eq!(statuses.len(), 1, "{block:?}");
        assert!(
            statuses[0].starts_with(class) && statuses[0].split('.').count() == 3,
            "{block:?}"
        );
        for line in block.lines() {
            assert!(line.contains(": "), "not a field: {line:?}");
        }
    }
    // Our part of the report, closed where the returned message would
    // start: mail-parser is not given the stranger's message, on which
    // its own debug assertions can fail (see docs/FUZZING.md).
    let skeleton = [own, format!("{boundary}--\r\n").as_bytes()].concat();
    let parsed = mail_parser::MessageParser::default()
        .parse(&skeleton)
        .expect("the report parses");
    assert_eq!(
        parsed.parts.len(),
        3,
        "{:?}",
        String::from_utf8_lossy(&skeleton)
    );
    let report_envelope = envelope_for(&envelope, &report);
    assert!(report_envelope.sender.is_empty());
    assert_eq!(
        report_envelope.recipients[0].notify.as_deref(),
        Some("NEVER")
    );
}

/// Every CR is followed by LF, every LF preceded by CR, and no NUL.
fn clean(text: &[u8]) -> bool {
    text.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => text.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && text[i - 1] == b'\r',
        0 => false,
        _ => true,
    })
}

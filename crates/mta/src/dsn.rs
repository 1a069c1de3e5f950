//! Delivery status notifications (RFC 3464) for recipients that failed for
//! good or expired in the queue (`Action: failed`), and delay notices for
//! recipients still being retried long after the message was queued
//! (`Action: delayed`).
//!
//! Invariants:
//! * nothing is ever sent to the null sender `<>`: a failing DSN (or any
//!   message from `<>`) is dropped, which is what stops bounce loops
//!   (RFC 5321 §4.5.5, RFC 3461 §6.2);
//! * a DSN itself is sent from `<>` (RFC 3461 §6.2), so it can never bounce;
//! * `NOTIFY` decides (RFC 3461 §4.1): `NEVER` means none; a list asks for
//!   the reports it names; no `NOTIFY` leaves the choice to the server
//!   (RFC 3461 §4.1: `FAILURE` or `FAILURE,DELAY`), and Mailroom takes
//!   `FAILURE,DELAY`, as Postfix does once its delay warnings are on;
//! * a delay notice is sent at most once per recipient (the queue records
//!   it with the attempt's result, in one transaction) and always returns
//!   only the header section: RFC 3461 §4.3's `RET` is about failures;
//! * `RET=HDRS` returns only the header section; `RET=FULL` or no `RET`
//!   returns the whole message (RFC 3461 §4.3 leaves the default to us; the
//!   full message is what Postfix returns too), except a `BINARYMIME` one,
//!   whose header section only is returned (its body could not travel in
//!   an 8BITMIME report);
//! * one DSN covers every recipient of one message that failed in one
//!   attempt (RFC 3464 §2: one report, one per-recipient group each), and
//!   one delay notice every recipient that became due for one in it.

use mailroom_store::QueueEnvelope;

/// What a report says about its recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// They failed for good (`Action: failed`).
    Failure,
    /// They are still being retried, until `will_retry_until` (Unix
    /// seconds) at the latest (`Action: delayed`, RFC 3464 §2.3.3, §2.3.8).
    Delay {
        /// When the message expires.
        will_retry_until: i64,
    },
    /// They were delivered into their mailboxes here (`Action: delivered`,
    /// RFC 3464 §2.3.3), which their `NOTIFY=SUCCESS` asked to hear.
    Success,
}

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// The address delivery was attempted to.
    pub address: String,
    /// `ORCPT` as queued (`addr-type;address`), if any.
    pub orcpt: Option<String>,
    /// `NOTIFY` as queued, if any.
    pub notify: Option<String>,
    /// The final (or, for a delay, the latest) response, starting with an RFC 3463 status
    /// (`5.1.1 mx.example[192.0.2.1] said: 550 5.1.1 no such user`).
    pub response: String,
}

/// Whether this recipient's `NOTIFY` asks for a report of a failure.
pub fn wants_failure_report(notify: Option<&str>) -> bool {
    notify_has(notify, "FAILURE")
}

/// Whether this recipient's `NOTIFY` asks for a delay notice (no `NOTIFY`
/// counts as `FAILURE,DELAY`, see the module documentation).
pub fn wants_delay_report(notify: Option<&str>) -> bool {
    notify_has(notify, "DELAY")
}

fn notify_has(notify: Option<&str>, word: &str) -> bool {
    match notify {
        None => true,
        Some(n) => n.split(',').any(|w| w.trim().eq_ignore_ascii_case(word)),
    }
}

/// The RFC 3463 status at the start of `response`, or a generic one of the
/// report's kind (5.0.0 for a failure, 4.0.0 for a delay). A 4.x.x stays
/// as it is in a failure: an expired message is reported with the
/// persistent transient status that made it give up (RFC 3463 §3.5: "4.4.7
/// Delivery time expired" is only meaningful as a persistent transient
/// error), as Postfix does. A delay is always a 4.x.x (RFC 3464 §2.3.4).
fn status_of(response: &str, kind: ReportKind) -> String {
    let parsed = response
        .split_whitespace()
        .next()
        .and_then(mailroom_smtp_proto::EnhancedStatus::parse);
    match kind {
        ReportKind::Failure => parsed
            .filter(|s| s.class == 5 || s.class == 4)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "5.0.0".to_string()),
        ReportKind::Delay { .. } => parsed
            .filter(|s| s.class == 4)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "4.0.0".to_string()),
        ReportKind::Success => parsed
            .filter(|s| s.class == 2)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "2.0.0".to_string()),
    }
}

/// `smtp; <reply>` when a remote server said it, else our own words.
fn diagnostic_of(response: &str) -> String {
    match response.split_once(" said: ") {
        Some((_, reply)) => format!("smtp; {}", one_line(reply)),
        None => format!("X-Mailroom; {}", one_line(response)),
    }
}

/// Header-safe text: no CR, LF or other controls.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The header section of a message (up to the first empty line).
fn header_section(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}

/// Whether a DSN is due for `envelope` and these `failed` recipients.
pub fn recipients_to_report<'a>(
    envelope: &QueueEnvelope,
    failed: &'a [ReportedRecipient],
) -> Vec<&'a ReportedRecipient> {
    if envelope.sender.is_empty() {
        return Vec::new();
    }
    failed
        .iter()
        .filter(|r| wants_failure_report(r.notify.as_deref()))
        .collect()
}

/// Whether a "delivered" report may go to `envelope`'s sender about a
/// recipient with this `NOTIFY`: only when it names SUCCESS (RFC 3461 §4.1:
/// without NOTIFY no success report is asked for), never to `<>`.
pub fn success_report_wanted(envelope: &QueueEnvelope, notify: Option<&str>) -> bool {
    !envelope.sender.is_empty() && notify.is_some() && notify_has(notify, "SUCCESS")
}

/// Whether a delay notice may go to `envelope`'s sender about a recipient
/// with this `NOTIFY`: never to `<>`, and only when `NOTIFY` allows it.
pub fn delay_report_wanted(envelope: &QueueEnvelope, notify: Option<&str>) -> bool {
    !envelope.sender.is_empty() && wants_delay_report(notify)
}

fn rfc822_date(unix: i64) -> String {
    mail_builder::headers::date::Date::new(unix).to_rfc822()
}

/// Renders the RFC 3464 failure report for `failed` (already filtered by
/// [`recipients_to_report`]). `reporting_mta` is our host name, `now` the
/// Unix time for `Date:`, `token` makes the boundary and Message-ID unique.
pub fn render(
    reporting_mta: &str,
    envelope: &QueueEnvelope,
    message: &[u8],
    failed: &[&ReportedRecipient],
    now: i64,
    token: u64,
) -> Vec<u8> {
    render_kind(
        ReportKind::Failure,
        reporting_mta,
        envelope,
        message,
        failed,
        now,
        token,
    )
}

/// Renders a report of `kind` (see [`render`] for the other arguments).
pub fn render_kind(
    kind: ReportKind,
    reporting_mta: &str,
    envelope: &QueueEnvelope,
    message: &[u8],
    recipients: &[&ReportedRecipient],
    now: i64,
    token: u64,
) -> Vec<u8> {
    let boundary = format!("=_mailroom-dsn-{token:016x}");
    // RFC 3461 §4.3: RET is about failure reports; the others carry the header section.
    // A binary original (RFC 3030 BINARYMIME) is never returned whole: its
    // bare CRs, LFs and NULs could only travel in a BINARYMIME report, which
    // the sender's server may not take; its header section can.
    let binary = envelope
        .body_type
        .as_deref()
        .is_some_and(|b| b.eq_ignore_ascii_case("BINARYMIME"));
    let headers_only = match kind {
        ReportKind::Delay { .. } | ReportKind::Success => true,
        ReportKind::Failure => {
            binary
                || envelope
                    .ret
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case("HDRS"))
        }
    };
    let date = rfc822_date(now);
    let (subject, action, explanation) = match kind {
        ReportKind::Failure => (
            "Undelivered Mail Returned to Sender".to_string(),
            "failed",
            "Your message could not be delivered to one or more recipients.\r\n\
             It has been returned below.\r\n"
                .to_string(),
        ),
        ReportKind::Delay { will_retry_until } => (
            "Delayed Mail (still being retried)".to_string(),
            "delayed",
            format!(
                "Your message could not be delivered yet to one or more recipients.\r\n\
                 It will be retried until {}.\r\n\
                 You do not need to send it again; its header section is below.\r\n",
                rfc822_date(will_retry_until)
            ),
        ),
        ReportKind::Success => (
            "Successful Mail Delivery Report".to_string(),
            "delivered",
            "Your message was delivered to the recipients below, as you asked\r\n\
             to be told. Its header section is below.\r\n"
                .to_string(),
        ),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <dsn.{token:016x}@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n",
        one_line(&envelope.sender)
    ));
    // 1. The human-readable part (RFC 3464 §2, RFC 6522 §3).
    out.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         This is the mail system at {reporting_mta}.\r\n\
         \r\n\
         {explanation}\
         \r\n"
    ));
    for r in recipients {
        out.push_str(&format!(
            "<{}>: {}\r\n",
            one_line(&r.address),
            one_line(&r.response)
        ));
    }
    out.push_str("\r\n");
    // 2. The machine-readable part (RFC 3464 §2.2, §2.3).
    out.push_str(&format!(
        "--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n"
    ));
    if let Some(id) = &envelope.env_id {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(id)));
    }
    for r in recipients {
        out.push_str("\r\n");
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            one_line(&r.address)
        ));
        if let Some((addr_type, address)) = r.orcpt.as_deref().and_then(|o| o.split_once(';')) {
            out.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                one_line(addr_type),
                one_line(address)
            ));
        }
        out.push_str(&format!("Action: {action}\r\n"));
        out.push_str(&format!("Status: {}\r\n", status_of(&r.response, kind)));
        // RFC 3464 §2.3.5: the remote MTA, when one answered.
        if r.response.contains(" said: ")
            && let Some(host) = r
                .response
                .split_whitespace()
                .nth(1)
                .and_then(|h| h.split('[').next())
        {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(host)));
        }
        out.push_str(&format!(
            "Diagnostic-Code: {}\r\n",
            diagnostic_of(&r.response)
        ));
        if let ReportKind::Delay { will_retry_until } = kind {
            out.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                rfc822_date(will_retry_until)
            ));
        }
    }
    out.push_str("\r\n");
    // 3. The returned message or its header section (RFC 3462 / RFC 6522).
    let mut bytes = out.into_bytes();
    if headers_only {
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(header_section(message));
    } else {
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(message);
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The envelope of a DSN for `envelope`'s sender: from `<>`, NOTIFY=NEVER
/// so no server ever reports on the report.
pub fn envelope_for(envelope: &QueueEnvelope, report: &[u8]) -> QueueEnvelope {
    QueueEnvelope {
        sender: String::new(),
        recipients: vec![mailroom_store::QueueRecipient {
            address: envelope.sender.clone(),
            orcpt: None,
            notify: Some("NEVER".into()),
        }],
        env_id: None,
        ret: None,
        body_type: report
            .iter()
            .any(|b| *b >= 0x80)
            .then(|| "8BITMIME".to_string()),
        smtputf8: envelope.smtputf8,
        requiretls: false,
        authenticated_as: None,
        client_ip: None,
        trace_context: envelope.trace_context.clone(),
        quarantine: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ret: Option<&str>) -> QueueEnvelope {
        QueueEnvelope {
            sender: "alice@example.test".into(),
            env_id: Some("ENV-42".into()),
            ret: ret.map(str::to_string),
            ..Default::default()
        }
    }

    fn failed(notify: Option<&str>) -> ReportedRecipient {
        ReportedRecipient {
            address: "bob@remote.test".into(),
            orcpt: Some("rfc822;Bob@Remote.test".into()),
            notify: notify.map(str::to_string),
            response: "5.1.1 mx.remote.test[127.0.0.2] said: 550 5.1.1 no such user".into(),
        }
    }

    const MESSAGE: &[u8] = b"From: alice@example.test\r\nSubject: hi\r\n\r\nsecret body\r\n";

    #[test]
    fn the_report_has_the_three_parts_and_the_per_recipient_fields() {
        let f = failed(None);
        let dsn = render(
            "mx.example.test",
            &env(None),
            MESSAGE,
            &[&f],
            1_700_000_000,
            7,
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("To: <alice@example.test>\r\n"));
        assert!(text.contains(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n"
        ));
        assert!(text.contains("Original-Envelope-Id: ENV-42\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; bob@remote.test\r\n"));
        assert!(text.contains("Original-Recipient: rfc822; Bob@Remote.test\r\n"));
        assert!(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Remote-MTA: dns; mx.remote.test\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains("Content-Type: message/rfc822\r\n\r\nFrom: alice@example.test"));
        assert!(text.contains("secret body"));
        assert!(text.ends_with("--=_mailroom-dsn-0000000000000007--\r\n"));
        // Every line ends with CRLF.
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn a_binary_original_is_returned_as_its_header_section_only() {
        let f = failed(None);
        let mut envelope = env(None);
        envelope.body_type = Some("BINARYMIME".into());
        let message = b"From: alice@example.test\r\nSubject: bin\r\n\r\n\0\rraw\nbytes";
        let dsn = render(
            "mx.example.test",
            &envelope,
            message,
            &[&f],
            1_700_000_000,
            7,
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.test"));
        assert!(!text.contains("raw"));
        assert!(!dsn.contains(&0));
        assert!(!text.replace("\r\n", "").contains(['\n', '\r']));
    }

    #[test]
    fn a_delay_notice_says_delayed_until_when_and_returns_only_the_headers() {
        let mut f = failed(Some("FAILURE,DELAY"));
        f.response = "4.2.1 mx.remote.test[127.0.0.2] said: 450 4.2.1 mailbox busy".into();
        let text = String::from_utf8(render_kind(
            ReportKind::Delay {
                will_retry_until: 1_700_432_000,
            },
            "mx.example.test",
            &env(Some("FULL")),
            MESSAGE,
            &[&f],
            1_700_000_000,
            9,
        ))
        .unwrap();
        assert!(
            text.contains("Subject: Delayed Mail (still being retried)\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.2.1\r\n"),
            "{text}"
        );
        assert!(text.contains("Diagnostic-Code: smtp; 450 4.2.1 mailbox busy\r\n"));
        let until = mail_builder::headers::date::Date::new(1_700_432_000).to_rfc822();
        assert!(
            text.contains(&format!("Will-Retry-Until: {until}\r\n")),
            "{text}"
        );
        assert!(text.contains(&format!("It will be retried until {until}.")));
        assert!(
            text.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.test"),
            "{text}"
        );
        assert!(!text.contains("secret body"), "RET=FULL is about failures");
        // A delay is a transient status even when the reply had none.
        f.response = "connection refused".into();
        let text = String::from_utf8(render_kind(
            ReportKind::Delay {
                will_retry_until: 0,
            },
            "mx",
            &env(None),
            MESSAGE,
            &[&f],
            0,
            1,
        ))
        .unwrap();
        assert!(text.contains("Status: 4.0.0\r\n"), "{text}");
    }

    #[test]
    fn notify_decides_delay_notices_too() {
        assert!(wants_delay_report(None), "no NOTIFY: FAILURE,DELAY");
        assert!(wants_delay_report(Some("SUCCESS,DELAY")));
        assert!(!wants_delay_report(Some("FAILURE")));
        assert!(!wants_delay_report(Some("NEVER")));
        let mut bounce = env(None);
        assert!(delay_report_wanted(&bounce, None));
        bounce.sender.clear();
        assert!(!delay_report_wanted(&bounce, None), "never to <>");
    }

    #[test]
    fn ret_hdrs_returns_only_the_header_section() {
        let f = failed(None);
        let text =
            String::from_utf8(render("mx", &env(Some("HDRS")), MESSAGE, &[&f], 0, 1)).unwrap();
        assert!(text.contains(
            "Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.test\r\nSubject: hi\r\n"
        ));
        assert!(!text.contains("secret body"));
    }

    #[test]
    fn expiry_reports_the_persistent_transient_status_and_our_own_diagnostic() {
        let mut f = failed(None);
        f.response = "4.4.7 message expired in the queue; last error: 4.4.1 cannot connect".into();
        let text = String::from_utf8(render("mx", &env(None), MESSAGE, &[&f], 0, 1)).unwrap();
        assert!(text.contains("Status: 4.4.7\r\n"), "{text}");
        assert!(text.contains("Diagnostic-Code: X-Mailroom; 4.4.7 message expired"));
        assert!(!text.contains("Remote-MTA"));
    }

    #[test]
    fn notify_and_the_null_sender_decide_whether_to_report() {
        let all = [
            failed(None),
            failed(Some("NEVER")),
            failed(Some("SUCCESS,DELAY")),
            failed(Some("FAILURE")),
        ];
        let picked = recipients_to_report(&env(None), &all);
        assert_eq!(picked.len(), 2);
        let mut bounce = env(None);
        bounce.sender.clear();
        assert!(
            recipients_to_report(&bounce, &all).is_empty(),
            "never to <>"
        );
    }

    #[test]
    fn a_report_is_sent_from_the_null_sender_and_asks_for_no_report() {
        let e = envelope_for(&env(None), b"ascii");
        assert_eq!(e.sender, "");
        assert_eq!(e.recipients[0].address, "alice@example.test");
        assert_eq!(e.recipients[0].notify.as_deref(), Some("NEVER"));
    }
}

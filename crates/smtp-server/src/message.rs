//! What the server adds to a message it accepts: `Received:` (RFC 5321
//! §4.4, with the RFC 3848 protocol names), and for submission the `Date:`
//! and `Message-ID:` a client left out (RFC 6409 §8.2, §8.3).

use std::net::IpAddr;

use mailroom_net::TlsInfo;

/// A date in RFC 5322 format (`Sat, 28 Nov 2026 10:00:00 +0000`).
pub fn rfc5322_date(unix: i64) -> String {
    mail_builder::headers::date::Date::new(unix).to_rfc822()
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Facts about a session that go into its `Received:` header.
pub struct ReceivedFrom<'a> {
    /// What the client said in EHLO/HELO.
    pub helo: &'a str,
    /// The client's IP.
    pub ip: IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// Whether EHLO (not HELO) was used.
    pub esmtp: bool,
    /// TLS parameters, when encrypted.
    pub tls: Option<&'a TlsInfo>,
    /// Whether the client authenticated.
    pub authenticated: bool,
    /// Whether SMTPUTF8 was used.
    pub utf8: bool,
    /// An identifier for the session, for tracing a message through logs.
    pub id: &'a str,
    /// The recipient, when there is exactly one (RFC 5321 §4.4 "for").
    pub single_recipient: Option<&'a str>,
    /// The message's trace id, when traces are exported: a comment after
    /// the id, so an operator goes from a message to its trace.
    pub trace_id: Option<&'a str>,
}

/// Removes characters that could break a header line out of a client-supplied value.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The `Received:` header line (folded, CRLF-terminated).
pub fn received_header(r: &ReceivedFrom<'_>, unix: i64) -> String {
    // RFC 3848: SMTP, ESMTP, then S (TLS) and A (authenticated); UTF8 prefix per RFC 6531.
    let mut with = String::from(if r.esmtp { "ESMTP" } else { "SMTP" });
    if r.tls.is_some() {
        with.push('S');
    }
    if r.authenticated {
        with.push('A');
    }
    if r.utf8 {
        with = format!("UTF8{with}");
    }
    let ip = match r.ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let mut h = format!(
        "Received: from {} ([{ip}])\r\n\tby {} (Mailroom) with {with} id {}",
        clean(r.helo),
        r.by,
        r.id
    );
    if let Some(trace) = r.trace_id {
        h.push_str(&format!(" (trace {})", clean(trace)));
    }
    if let Some(tls) = r.tls {
        h.push_str(&format!(
            "\r\n\t(version={} cipher={})",
            tls.version, tls.cipher
        ));
    }
    if let Some(rcpt) = r.single_recipient {
        h.push_str(&format!("\r\n\tfor <{}>", clean(rcpt)));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(unix)));
    h
}

/// Whether the header section of `message` has a field named `name`.
pub(crate) fn has_header(message: &[u8], name: &str) -> bool {
    let headers = mailroom_smtp_proto::header_section(message);
    headers.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// The value of the first header field named `name` (unfolded, trimmed,
/// at most 256 characters), e.g. the Message-ID for the message's span.
pub(crate) fn header_value(message: &[u8], name: &str) -> Option<String> {
    let headers = mailroom_smtp_proto::header_section(message);
    let text = String::from_utf8_lossy(headers);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    while let Some(line) = lines.next() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !field.eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = value.trim().to_string();
        for more in lines.by_ref() {
            if !more.starts_with([' ', '\t']) {
                break;
            }
            value.push(' ');
            value.push_str(more.trim());
        }
        return Some(clean(value.trim()).chars().take(256).collect());
    }
    None
}

/// A fresh Message-ID for `hostname`.
pub(crate) fn message_id(hostname: &str) -> String {
    format!(
        "<{:016x}{:08x}@{hostname}>",
        rand::random::<u64>(),
        unix_now() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_names_the_protocol_and_tls() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        let h = received_header(
            &ReceivedFrom {
                helo: "client.example\r\nX-Evil: 1",
                ip: "192.0.2.7".parse().unwrap(),
                by: "mx.example.test",
                esmtp: true,
                tls: Some(&tls),
                authenticated: true,
                utf8: false,
                id: "abc",
                single_recipient: Some("bob@example.test"),
                trace_id: None,
            },
            0,
        );
        assert_eq!(
            h,
            "Received: from client.example  X-Evil: 1 ([192.0.2.7])\r\n\tby mx.example.test (Mailroom) with ESMTPSA id abc\r\n\t\
             (version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384)\r\n\tfor <bob@example.test>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn received_names_the_trace_in_a_comment() {
        let h = received_header(
            &ReceivedFrom {
                helo: "client.example",
                ip: "192.0.2.7".parse().unwrap(),
                by: "mx.example.test",
                esmtp: true,
                tls: None,
                authenticated: false,
                utf8: false,
                id: "abc",
                single_recipient: None,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            },
            0,
        );
        assert!(
            h.contains("with ESMTP id abc (trace 4bf92f3577b34da6a3ce929d0e0e4736);"),
            "{h}"
        );
    }

    #[test]
    fn a_header_value_is_unfolded_and_taken_from_the_header_section() {
        let m = b"Subject: x\r\nmessage-id:\r\n <a@b>\r\nX: y\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(header_value(m, "Message-ID").as_deref(), Some("<a@b>"));
        assert_eq!(header_value(m, "Date"), None);
    }

    #[test]
    fn headers_are_found_case_insensitively_in_the_header_section_only() {
        let m = b"from: a@b\r\nMESSAGE-id: <x@y>\r\n\r\nDate: not a header\r\n";
        assert!(has_header(m, "From"));
        assert!(has_header(m, "Message-ID"));
        assert!(!has_header(m, "Date"));
    }
}

//! Messages on the client side: composing them (mail-builder), reading them
//! (mail-parser) and saving attachments.
//!
//! Invariants:
//! * composed messages carry Date and Message-ID; non-ASCII subjects and
//!   names are RFC 2047 encoded and non-ASCII attachment file names RFC 2231
//!   encoded by mail-builder; addresses with CR, LF or other control
//!   characters are refused before they reach a header (header injection);
//! * Bcc recipients are only in the envelope, never in the message;
//! * reading never fails on broken MIME: mail-parser is lenient, and a part
//!   it cannot decode is shown as what it is;
//! * [`save_attachment`] writes only directly inside the chosen directory,
//!   under a [`safe_file_name`], never over an existing file (nor through a
//!   planted symlink), choosing `name (1).ext`… when taken
//!   ([`crate::save`] has the details).

use std::path::{Path, PathBuf};

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as BuilderAddress;
use mail_builder::headers::message_id::MessageId;
use mail_parser::{MessageParser, MimeHeaders};

use crate::error::{Error, Result};

/// A mailbox as written on the command line: `addr@example.com` or
/// `Name <addr@example.com>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Display name.
    pub name: Option<String>,
    /// `local@domain`.
    pub address: String,
}

impl Mailbox {
    /// Parses one address; refuses control characters, spaces and angle
    /// brackets in the address and control characters in the name.
    pub fn parse(input: &str) -> Result<Mailbox> {
        let input = input.trim();
        let (name, address) = match (input.rfind('<'), input.strip_suffix('>')) {
            (Some(open), Some(_)) => {
                let name = input[..open].trim().trim_matches('"').trim();
                (
                    (!name.is_empty()).then(|| name.to_string()),
                    &input[open + 1..input.len() - 1],
                )
            }
            _ => (None, input),
        };
        let bad = |c: char| c.is_control() || c.is_whitespace() || "<>,;\"".contains(c);
        let valid = address
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            && !address.chars().any(bad)
            && !name
                .as_deref()
                .is_some_and(|n| n.chars().any(char::is_control));
        if !valid {
            return Err(Error::Usage(format!("invalid address {input:?}")));
        }
        Ok(Mailbox {
            name,
            address: address.to_string(),
        })
    }

    fn to_builder(&self) -> BuilderAddress<'static> {
        BuilderAddress::new_address(self.name.clone(), self.address.clone())
    }
}

/// A file to attach.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The name the recipient sees.
    pub file_name: String,
    /// MIME type.
    pub content_type: String,
    /// The bytes.
    pub content: Vec<u8>,
}

impl Attachment {
    /// Reads a file; the type is guessed from its extension.
    pub fn from_file(path: &Path) -> Result<Attachment> {
        let content = std::fs::read(path)
            .map_err(|e| Error::File(format!("cannot read {}: {e}", path.display())))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        Ok(Attachment {
            content_type: guess_type(&file_name).to_string(),
            file_name,
            content,
        })
    }
}

/// A MIME type from a file extension; `application/octet-stream` when unknown.
pub fn guess_type(file_name: &str) -> &'static str {
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "text" => "text/plain",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ics" => "text/calendar",
        "eml" => "message/rfc822",
        _ => "application/octet-stream",
    }
}

/// Everything a new message needs.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// Author.
    pub from: Option<Mailbox>,
    /// To recipients.
    pub to: Vec<Mailbox>,
    /// Cc recipients.
    pub cc: Vec<Mailbox>,
    /// Bcc recipients: envelope only.
    pub bcc: Vec<Mailbox>,
    /// Subject (any Unicode).
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Attached files.
    pub attachments: Vec<Attachment>,
    /// Message-ID of the message replied to.
    pub in_reply_to: Option<String>,
    /// References chain of a reply.
    pub references: Vec<String>,
}

impl Draft {
    /// Every envelope recipient: To, Cc and Bcc, without duplicates.
    pub fn recipients(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.to.iter().chain(&self.cc).chain(&self.bcc) {
            if !out.iter().any(|a| a.eq_ignore_ascii_case(&m.address)) {
                out.push(m.address.clone());
            }
        }
        out
    }

    /// Builds the message (CRLF line endings, Date and Message-ID set).
    pub fn compose(&self) -> Result<Vec<u8>> {
        let from = self.from.as_ref().ok_or_else(|| {
            Error::Usage("no sender: give --from or set from in the profile".into())
        })?;
        let domain = from
            .address
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d);
        let mut builder = MessageBuilder::new()
            .from(from.to_builder())
            .subject(self.subject.clone())
            .message_id(MessageId::new(new_message_id(domain)))
            .date(mail_builder::headers::date::Date::now());
        let list = |mailboxes: &[Mailbox]| {
            BuilderAddress::new_list(mailboxes.iter().map(Mailbox::to_builder).collect())
        };
        if !self.to.is_empty() {
            builder = builder.to(list(&self.to));
        }
        if !self.cc.is_empty() {
            builder = builder.cc(list(&self.cc));
        }
        if let Some(id) = &self.in_reply_to {
            builder = builder.in_reply_to(MessageId::new(id.clone()));
        }
        if !self.references.is_empty() {
            builder = builder.references(MessageId::new_list(self.references.iter().cloned()));
        }
        builder = builder.text_body(normalise_newlines(&self.body));
        for a in &self.attachments {
            builder = builder.attachment(
                a.content_type.clone(),
                a.file_name.clone(),
                a.content.clone(),
            );
        }
        builder
            .write_to_vec()
            .map_err(|e| Error::Usage(format!("cannot build the message: {e}")))
    }
}

fn normalise_newlines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// `<random@domain>`: 128 random bits, so it is unique without a clock.
fn new_message_id(domain: &str) -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let domain: String = domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    format!(
        "{id}@{}",
        if domain.is_empty() {
            "localhost"
        } else {
            &domain
        }
    )
}

/// The header fields a listing line shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Headline {
    /// Date header in RFC 3339, when readable.
    pub date: Option<String>,
    /// The first From address, `Name <addr>` or `addr`.
    pub from: String,
    /// Decoded subject.
    pub subject: String,
    /// Message-ID, without angle brackets.
    pub message_id: Option<String>,
}

fn format_address(address: Option<&mail_parser::Address<'_>>) -> String {
    let Some(first) = address.and_then(|a| a.first()) else {
        return String::new();
    };
    match (first.name(), first.address()) {
        (Some(n), Some(a)) => format!("{n} <{a}>"),
        (None, Some(a)) => a.to_string(),
        (Some(n), None) => n.to_string(),
        (None, None) => String::new(),
    }
}

fn all_addresses(address: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .map(|m| match (m.name(), m.address()) {
                    (Some(n), Some(a)) => format!("{n} <{a}>"),
                    (_, Some(a)) => a.to_string(),
                    (Some(n), None) => n.to_string(),
                    _ => String::new(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the headline from a header section (or a whole message).
pub fn headline(raw: &[u8]) -> Headline {
    let Some(message) = MessageParser::default().parse_headers(raw) else {
        return Headline::default();
    };
    Headline {
        date: message.date().map(|d| d.to_rfc3339()),
        from: format_address(message.from()),
        subject: message.subject().unwrap_or("").to_string(),
        message_id: message.message_id().map(str::to_string),
    }
}

/// An attachment as `read` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttachmentInfo {
    /// 1-based position among the attachments (what `attachments --index` takes).
    pub index: usize,
    /// The file name as the sender gave it (decoded, unsanitised).
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// A message as `read` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rendered {
    /// Headline fields.
    #[serde(flatten)]
    pub headline: Headline,
    /// To addresses.
    pub to: Vec<String>,
    /// Cc addresses.
    pub cc: Vec<String>,
    /// The text body: the text parts, or HTML reduced to text when there is
    /// none.
    pub text: String,
    /// Attachments with their sizes.
    pub attachments: Vec<AttachmentInfo>,
}

/// Parses a whole message for display. Never fails: broken MIME shows as
/// what could be read.
pub fn render(raw: &[u8]) -> Rendered {
    let parsed = MessageParser::default().parse(raw);
    let Some(message) = parsed else {
        return Rendered {
            headline: Headline::default(),
            to: Vec::new(),
            cc: Vec::new(),
            text: String::from_utf8_lossy(raw).into_owned(),
            attachments: Vec::new(),
        };
    };
    let mut text = String::new();
    for i in 0..message.text_body_count().max(1) {
        if let Some(body) = message.body_text(i) {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&body);
        }
    }
    Rendered {
        headline: headline(raw),
        to: all_addresses(message.to()),
        cc: all_addresses(message.cc()),
        text,
        attachments: attachments(&message)
            .into_iter()
            .map(|(info, _)| info)
            .collect(),
    }
}

fn attachments<'m>(message: &'m mail_parser::Message<'m>) -> Vec<(AttachmentInfo, &'m [u8])> {
    message
        .attachments()
        .enumerate()
        .map(|(i, part)| {
            let content_type = part
                .content_type()
                .map(|c| match &c.c_subtype {
                    Some(sub) => format!("{}/{sub}", c.c_type),
                    None => c.c_type.to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            let content: &[u8] = part.contents();
            (
                AttachmentInfo {
                    index: i + 1,
                    name: part
                        .attachment_name()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("attachment-{}", i + 1)),
                    content_type,
                    size: content.len(),
                },
                content,
            )
        })
        .collect()
}

/// Every attachment of a whole message with its decoded content.
pub fn extract_attachments(raw: &[u8]) -> Vec<(AttachmentInfo, Vec<u8>)> {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    attachments(&message)
        .into_iter()
        .map(|(info, content)| (info, content.to_vec()))
        .collect()
}

/// The file name a body part's MIME header (`BODY[n.MIME]`) gives it, from
/// Content-Disposition or Content-Type, RFC 2231/2047 decoded (unsanitised:
/// see [`safe_file_name`]).
pub fn part_file_name(header: &[u8]) -> Option<String> {
    let message = MessageParser::default().parse_headers(header)?;
    message.root_part().attachment_name().map(str::to_string)
}

fn mailboxes_of(address: Option<&mail_parser::Address<'_>>) -> Vec<Mailbox> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    let address = m.address()?.to_string();
                    Mailbox::parse(&address).ok().map(|mut parsed| {
                        parsed.name = m
                            .name()
                            .filter(|n| !n.chars().any(char::is_control))
                            .map(str::to_string);
                        parsed
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `prefix` + subject, unless the subject already starts with it (any
/// case, e.g. `RE:`): replies to replies do not pile up `Re: Re:`.
fn prefixed(prefix: &str, subject: &str) -> String {
    let trimmed = subject.trim_start();
    if trimmed
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    {
        trimmed.to_string()
    } else {
        format!("{prefix} {trimmed}")
    }
}

/// A reply to `original` (RFC 5322 §3.6.4): to its Reply-To or From (with
/// `all`, also its To and Cc, without `me`), `Re:` subject, In-Reply-To and
/// References set, the original text quoted under `body`.
pub fn reply_draft(original: &[u8], me: &Mailbox, all: bool, body: &str) -> Result<Draft> {
    let message = MessageParser::default()
        .parse(original)
        .ok_or_else(|| Error::protocol("the original message cannot be read"))?;
    let mut to = mailboxes_of(message.reply_to());
    if to.is_empty() {
        to = mailboxes_of(message.from());
    }
    let mut cc = Vec::new();
    if all {
        cc.extend(mailboxes_of(message.to()));
        cc.extend(mailboxes_of(message.cc()));
    }
    let is_me = |m: &Mailbox| m.address.eq_ignore_ascii_case(&me.address);
    if to.iter().all(is_me) && all {
        // Replying to one's own message: to its recipients.
        to = std::mem::take(&mut cc);
    }
    cc.retain(|m| {
        !is_me(m)
            && !to
                .iter()
                .any(|t| t.address.eq_ignore_ascii_case(&m.address))
    });
    if to.is_empty() {
        return Err(Error::Usage(
            "the original message names nobody to reply to".into(),
        ));
    }
    let mut references: Vec<String> = message
        .references()
        .as_text_list()
        .map(|l| l.iter().map(|r| r.to_string()).collect())
        .unwrap_or_default();
    let id = message.message_id().map(str::to_string);
    references.extend(id.clone());
    let shown = render(original);
    let mut text = body.trim_end().to_string();
    text.push_str(&format!(
        "\n\nOn {}, {} wrote:\n",
        shown.headline.date.as_deref().unwrap_or("an unknown date"),
        shown.headline.from
    ));
    for line in shown.text.lines() {
        text.push_str(if line.starts_with('>') { ">" } else { "> " });
        text.push_str(line);
        text.push('\n');
    }
    Ok(Draft {
        from: Some(me.clone()),
        to,
        cc,
        subject: prefixed("Re:", message.subject().unwrap_or("")),
        body: text,
        in_reply_to: id,
        references,
        ..Draft::default()
    })
}

/// A forward of `original`: `Fwd:` subject, the original's headline and
/// text under `body`, its attachments attached again. Recipients are the
/// caller's.
pub fn forward_draft(original: &[u8], me: &Mailbox, body: &str) -> Draft {
    let shown = render(original);
    let mut text = body.trim_end().to_string();
    text.push_str("\n\n---------- Forwarded message ----------\n");
    text.push_str(&format!("From: {}\n", shown.headline.from));
    if let Some(date) = &shown.headline.date {
        text.push_str(&format!("Date: {date}\n"));
    }
    text.push_str(&format!("Subject: {}\n", shown.headline.subject));
    if !shown.to.is_empty() {
        text.push_str(&format!("To: {}\n", shown.to.join(", ")));
    }
    text.push('\n');
    text.push_str(&shown.text);
    Draft {
        from: Some(me.clone()),
        subject: prefixed("Fwd:", &shown.headline.subject),
        body: text,
        attachments: extract_attachments(original)
            .into_iter()
            .map(|(info, content)| Attachment {
                file_name: info.name,
                content_type: info.content_type,
                content,
            })
            .collect(),
        ..Draft::default()
    }
}

/// A file name that is safe to create inside a directory: the last path
/// component only (no `/`, `\`), no control characters, no leading dots
/// (no hidden files, no `..`), at most 150 bytes; `attachment` when nothing
/// is left.
pub fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > 150 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "attachment".into()
    } else {
        out
    }
}

/// Writes `content` into `dir` under the sanitised `name`, never replacing
/// an existing file: `name (1).ext`, `name (2).ext`… Returns the path. The
/// file appears only once whole (see [`crate::save`]).
pub fn save_attachment(dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf> {
    let mut part = crate::save::PartFile::create(dir, crate::save::Encoding::Identity)?;
    part.write(content)?;
    part.commit(name).map(|(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let m = Mailbox::parse("Ann Example <ann@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Ann Example"));
        assert_eq!(m.address, "ann@example.com");
        assert_eq!(Mailbox::parse("b@x").unwrap().name, None);
        for bad in [
            "nobody",
            "a@b\r\nBcc: evil@x",
            "<a b@x>",
            "a@",
            "Evil\r\nBcc: x <a@b>",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_stay_inside() {
        assert_eq!(safe_file_name("../../.bashrc"), "bashrc");
        assert_eq!(safe_file_name("..\\..\\win.ini"), "win.ini");
        assert_eq!(safe_file_name("/etc/passwd"), "passwd");
        assert_eq!(safe_file_name(".."), "attachment");
        assert_eq!(safe_file_name(""), "attachment");
        assert_eq!(safe_file_name("a\u{0}b\nc.txt"), "a_b_c.txt");
        assert_eq!(safe_file_name("Übersicht 2026.pdf"), "Übersicht 2026.pdf");
        assert!(safe_file_name(&"é".repeat(500)).len() <= 150);
    }

    #[test]
    fn never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let first = save_attachment(dir.path(), "../x.txt", b"1").unwrap();
        let second = save_attachment(dir.path(), "x.txt", b"2").unwrap();
        assert_eq!(first, dir.path().join("x.txt"));
        assert_eq!(second, dir.path().join("x (1).txt"));
        assert_eq!(std::fs::read(first).unwrap(), b"1");
        #[cfg(unix)]
        {
            // A planted symlink is not followed.
            let outside = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(outside.path().join("t"), dir.path().join("t")).unwrap();
            let saved = save_attachment(dir.path(), "t", b"3").unwrap();
            assert_eq!(saved, dir.path().join("t (1)"));
            assert!(!outside.path().join("t").exists());
        }
    }

    #[test]
    fn compose_and_render_round_trip() {
        let draft = Draft {
            from: Some(Mailbox::parse("Zoë <zoe@example.test>").unwrap()),
            to: vec![Mailbox::parse("ann@example.test").unwrap()],
            bcc: vec![Mailbox::parse("hidden@example.test").unwrap()],
            subject: "Grüße aus Köln ✓".into(),
            body: "Hallo\n.\nEnde".into(),
            attachments: vec![Attachment {
                file_name: "Übersicht.bin".into(),
                content_type: "application/octet-stream".into(),
                content: vec![0, 1, 2, 255, 13, 10],
            }],
            ..Draft::default()
        };
        let raw = draft.compose().unwrap();
        assert!(raw.is_ascii(), "headers and parts are encoded");
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("hidden@"), "Bcc stays out of the message");
        assert!(text.contains("Message-ID: <"));
        assert!(text.contains("\r\nDate: "));
        let shown = render(&raw);
        assert_eq!(shown.headline.subject, "Grüße aus Köln ✓");
        assert_eq!(shown.headline.from, "Zoë <zoe@example.test>");
        assert!(shown.text.contains("Hallo\n.\nEnde") || shown.text.contains("Hallo\r\n.\r\nEnde"));
        assert_eq!(shown.attachments[0].name, "Übersicht.bin");
        let saved = extract_attachments(&raw);
        assert_eq!(saved[0].1, vec![0, 1, 2, 255, 13, 10]);
        assert_eq!(
            draft.recipients(),
            ["ann@example.test", "hidden@example.test"]
        );
    }

    #[test]
    fn replies_and_forwards() {
        let original = b"From: Ann <ann@example.test>\r\nTo: me@example.test, bob@example.test\r\nCc: Carol <carol@example.test>\r\nSubject: RE: plans\r\nMessage-ID: <m2@example.test>\r\nReferences: <m0@example.test> <m1@example.test>\r\nDate: Thu, 3 Dec 2026 10:00:00 +0000\r\n\r\nline one\r\n> older\r\n";
        let me = Mailbox::parse("me@example.test").unwrap();
        let reply = reply_draft(original, &me, false, "Yes.").unwrap();
        assert_eq!(
            reply.to,
            [Mailbox::parse("Ann <ann@example.test>").unwrap()]
        );
        assert!(reply.cc.is_empty());
        assert_eq!(reply.subject, "RE: plans");
        assert_eq!(reply.in_reply_to.as_deref(), Some("m2@example.test"));
        assert_eq!(
            reply.references,
            ["m0@example.test", "m1@example.test", "m2@example.test"]
        );
        assert!(reply.body.starts_with("Yes.\n\nOn 2026-12-03T10:00:00Z, Ann <ann@example.test> wrote:\n> line one\n>> older"), "{}", reply.body);
        let all = reply_draft(original, &me, true, "").unwrap();
        let cc: Vec<&str> = all.cc.iter().map(|m| m.address.as_str()).collect();
        assert_eq!(cc, ["bob@example.test", "carol@example.test"]);
        let raw = all.compose().unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("In-Reply-To: <m2@example.test>"), "{text}");
        assert!(text.contains("References: <m0@example.test>"), "{text}");

        let forward = forward_draft(original, &me, "FYI");
        assert_eq!(forward.subject, "Fwd: RE: plans");
        assert!(
            forward
                .body
                .contains("---------- Forwarded message ----------\nFrom: Ann <ann@example.test>")
        );
        assert_eq!(prefixed("Re:", "re: x"), "re: x");
        assert_eq!(prefixed("Re:", "Rex"), "Re: Rex");
    }

    #[test]
    fn html_only_messages_are_reduced_to_text() {
        let raw = b"Subject: h\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<html><body><p>Gr=FC=DFe</p><script>x</script><b>bold</b></body></html>\r\n";
        let shown = render(raw);
        assert!(shown.text.contains("Grüße"), "{}", shown.text);
        assert!(
            shown.text.contains("bold") && !shown.text.contains("<b>"),
            "{}",
            shown.text
        );
    }

    #[test]
    fn broken_mime_still_renders() {
        let raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream; name=\"../../.bashrc\"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64";
        let shown = render(raw);
        assert!(shown.text.contains("hello"));
        for (info, _) in extract_attachments(raw) {
            assert_eq!(safe_file_name(&info.name), "bashrc");
        }
    }
}

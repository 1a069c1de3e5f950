//! [`Summary`]: what FETCH ENVELOPE, BODY and BODYSTRUCTURE need, computed
//! once per message (RFC 9051 §7.5.2).

use imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_types::core::{IString, NString, Quoted, Vec1};
use imap_types::envelope::{Address, Envelope};
use mail_parser::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::address::{AddressFields, parse_list};
use crate::entity::{self, Entity, Kind, parse_structured, unfold};
use crate::raw::Raw;

/// The structure of one message: its envelope and its MIME tree.
///
/// Computed by [`Summary::parse`] from the message as it arrived (without
/// the per-recipient header prefix the MDA adds: neither the envelope nor
/// BODYSTRUCTURE depend on it, see the crate documentation), stored as JSON
/// ([`Summary::to_json`]) and turned into IMAP data with
/// [`Summary::envelope`] and [`Summary::body_structure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The envelope fields of the message header.
    #[serde(rename = "e")]
    pub envelope: EnvelopeFields,
    /// The message body.
    #[serde(rename = "b")]
    pub body: BodyPart,
}

/// The header fields of an ENVELOPE, as they are in the header: unfolded,
/// not decoded (RFC 9051 §7.5.2 leaves RFC 2047 decoding to the client).
/// Sender and Reply-To are kept as sent; [`Summary::envelope`] defaults
/// them to From.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvelopeFields {
    /// Date.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub date: Option<Raw>,
    /// Subject.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Raw>,
    /// From.
    #[serde(rename = "f", default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AddressFields>,
    /// Sender.
    #[serde(rename = "se", default, skip_serializing_if = "Vec::is_empty")]
    pub sender: Vec<AddressFields>,
    /// Reply-To.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<AddressFields>,
    /// To.
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AddressFields>,
    /// Cc.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<AddressFields>,
    /// Bcc.
    #[serde(rename = "bc", default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<AddressFields>,
    /// In-Reply-To.
    #[serde(rename = "ir", default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<Raw>,
    /// Message-ID.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Raw>,
}

/// A Content-Disposition: type and parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispositionFields {
    /// `inline`, `attachment`, ...
    #[serde(rename = "t")]
    pub kind: String,
    /// Parameters (RFC 2231 continuations joined and decoded).
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
}

/// What a body part contains below itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Content {
    /// A leaf part.
    #[default]
    #[serde(rename = "l")]
    Leaf,
    /// multipart/*: the parts (none when no delimiter line was found).
    #[serde(rename = "m")]
    Multipart(Vec<BodyPart>),
    /// message/rfc822: the encapsulated message.
    #[serde(rename = "r")]
    Message(Box<Summary>),
}

impl Content {
    fn is_leaf(&self) -> bool {
        matches!(self, Content::Leaf)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One body part of the MIME tree (RFC 9051 §7.5.2 body fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPart {
    /// Media type (`text`, `multipart`...), as mail-parser reports it
    /// (lowercase); `text` when there is no valid Content-Type.
    #[serde(rename = "t")]
    pub media_type: String,
    /// Media subtype; `plain` by default (`rfc822` in multipart/digest).
    #[serde(rename = "s")]
    pub subtype: String,
    /// Content-Type parameters (RFC 2231 continuations joined and decoded).
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
    /// Content-ID, raw.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Raw>,
    /// Content-Description, raw.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Raw>,
    /// Content-Transfer-Encoding as sent; `None` means 7bit.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Raw>,
    /// Octets of the body as it is in the message (still encoded).
    #[serde(rename = "z", default, skip_serializing_if = "is_zero")]
    pub size: u32,
    /// Line breaks (LF) in the body as it is in the message.
    #[serde(rename = "l", default, skip_serializing_if = "is_zero")]
    pub lines: u32,
    /// Content-MD5, raw.
    #[serde(rename = "5", default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Raw>,
    /// Content-Disposition.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<DispositionFields>,
    /// Content-Language tags.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub language: Vec<String>,
    /// Content-Location, raw.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Raw>,
    /// Sub-parts.
    #[serde(rename = "k", default, skip_serializing_if = "Content::is_leaf")]
    pub content: Content,
}

impl BodyPart {
    /// The 0-octet text/plain part reported for a multipart without parts
    /// (BODYSTRUCTURE must list at least one).
    fn empty_text() -> BodyPart {
        BodyPart {
            media_type: "text".into(),
            subtype: "plain".into(),
            params: Vec::new(),
            id: None,
            description: None,
            encoding: None,
            size: 0,
            lines: 0,
            md5: None,
            disposition: None,
            language: Vec::new(),
            location: None,
            content: Content::Leaf,
        }
    }

    fn from_entity(raw: &[u8], e: &Entity<'_>) -> BodyPart {
        let body = &raw[e.body.clone()];
        let content = match &e.kind {
            Kind::Leaf => Content::Leaf,
            Kind::Multipart(children) => Content::Multipart(
                children
                    .iter()
                    .map(|c| BodyPart::from_entity(raw, c))
                    .collect(),
            ),
            Kind::Message(inner) => Content::Message(Box::new(Summary::from_entity(raw, inner))),
        };
        let disposition = e.field("Content-Disposition").and_then(|f| {
            match parse_structured(&raw[f.value.clone()], |s| s.parse_content_type()) {
                HeaderValue::ContentType(ct) if !ct.c_type.is_empty() => Some(DispositionFields {
                    kind: ct.c_type.into_owned(),
                    params: ct
                        .attributes
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| (a.name.into_owned(), a.value.into_owned()))
                        .collect(),
                }),
                _ => None,
            }
        });
        let language = e
            .field("Content-Language")
            .map(
                |f| match parse_structured(&raw[f.value.clone()], |s| s.parse_comma_separared()) {
                    HeaderValue::Text(t) => vec![t.into_owned()],
                    HeaderValue::TextList(l) => l.into_iter().map(|t| t.into_owned()).collect(),
                    _ => Vec::new(),
                },
            )
            .unwrap_or_default();
        let raw_field = |name: &str| e.raw_value(raw, name).map(Raw);
        BodyPart {
            media_type: e.media.ty.clone(),
            subtype: e.media.sub.clone(),
            params: e.media.params.clone(),
            id: raw_field("Content-ID"),
            description: raw_field("Content-Description"),
            encoding: raw_field("Content-Transfer-Encoding").filter(|v| !v.0.is_empty()),
            size: u32::try_from(body.len()).unwrap_or(u32::MAX),
            lines: u32::try_from(body.iter().filter(|&&b| b == b'\n').count()).unwrap_or(u32::MAX),
            md5: raw_field("Content-MD5"),
            disposition,
            language,
            location: raw_field("Content-Location"),
            content,
        }
    }

    fn is_text(&self) -> bool {
        self.media_type.eq_ignore_ascii_case("text")
    }

    /// BODY (`extended` = false) or BODYSTRUCTURE (`extended` = true) of
    /// this part.
    pub fn body_structure(&self, extended: bool) -> BodyStructure<'static> {
        if let Content::Multipart(children) = &self.content {
            let mut bodies: Vec<_> = children
                .iter()
                .map(|c| c.body_structure(extended))
                .collect();
            if bodies.is_empty() {
                bodies.push(BodyPart::empty_text().body_structure(extended));
            }
            return BodyStructure::Multi {
                bodies: Vec1::unvalidated(bodies),
                subtype: istring(self.subtype.to_ascii_uppercase().as_bytes()),
                extension_data: extended.then(|| MultiPartExtensionData {
                    parameter_list: self.parameter_list(false),
                    tail: Some(self.disposition_and_rest()),
                }),
            };
        }
        let basic = BasicFields {
            parameter_list: self.parameter_list(self.is_text()),
            id: nstring(self.id.as_ref()),
            description: nstring(self.description.as_ref()),
            content_transfer_encoding: istring(
                self.encoding
                    .as_ref()
                    .map_or(&b"7bit"[..], |e| e.as_bytes()),
            ),
            size: self.size,
        };
        let specific = match &self.content {
            Content::Message(inner) => SpecificFields::Message {
                envelope: Box::new(inner.envelope()),
                body_structure: Box::new(inner.body.body_structure(extended)),
                number_of_lines: self.lines,
            },
            _ if self.is_text() => SpecificFields::Text {
                subtype: istring(self.subtype.to_ascii_uppercase().as_bytes()),
                number_of_lines: self.lines,
            },
            _ => SpecificFields::Basic {
                r#type: istring(self.media_type.to_ascii_uppercase().as_bytes()),
                subtype: istring(self.subtype.to_ascii_uppercase().as_bytes()),
            },
        };
        BodyStructure::Single {
            body: Body { basic, specific },
            extension_data: extended.then(|| SinglePartExtensionData {
                md5: nstring(self.md5.as_ref()),
                tail: Some(self.disposition_and_rest()),
            }),
        }
    }

    /// The parameters; text parts without a charset get `charset
    /// us-ascii`, the RFC 2045 default, as Dovecot reports it.
    fn parameter_list(&self, default_charset: bool) -> Vec<(IString<'static>, IString<'static>)> {
        let mut list: Vec<_> = self
            .params
            .iter()
            .map(|(n, v)| (istring(n.as_bytes()), istring(v.as_bytes())))
            .collect();
        if default_charset
            && !self
                .params
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("charset"))
        {
            list.push((istring(b"charset"), istring(b"us-ascii")));
        }
        list
    }

    fn disposition_and_rest(&self) -> Disposition<'static> {
        Disposition {
            disposition: self.disposition.as_ref().map(|d| {
                (
                    istring(d.kind.as_bytes()),
                    d.params
                        .iter()
                        .map(|(n, v)| (istring(n.as_bytes()), istring(v.as_bytes())))
                        .collect(),
                )
            }),
            tail: Some(Language {
                language: self
                    .language
                    .iter()
                    .map(|l| istring(l.as_bytes()))
                    .collect(),
                tail: Some(Location {
                    location: nstring(self.location.as_ref()),
                    extensions: Vec::new(),
                }),
            }),
        }
    }
}

/// An IMAP string: quoted when every byte may be in a quoted string,
/// otherwise a literal (which carries 8-bit bytes as they are). NUL, the
/// one byte a literal cannot carry, is dropped.
pub(crate) fn istring(bytes: &[u8]) -> IString<'static> {
    let bytes: Vec<u8> = bytes.iter().copied().filter(|&b| b != 0).collect();
    IString::try_from(bytes).unwrap_or_else(|_| IString::from(Quoted::unvalidated("")))
}

fn nstring(value: Option<&Raw>) -> NString<'static> {
    NString(value.map(|v| istring(v.as_bytes())))
}

fn addresses(list: &[AddressFields]) -> Vec<Address<'static>> {
    list.iter()
        .map(|a| Address {
            name: nstring(a.name.as_ref()),
            adl: nstring(a.adl.as_ref()),
            mailbox: nstring(a.mailbox.as_ref()),
            host: nstring(a.host.as_ref()),
        })
        .collect()
}

impl EnvelopeFields {
    fn from_entity(raw: &[u8], e: &Entity<'_>) -> EnvelopeFields {
        let text = |name: &str| e.raw_value(raw, name).map(Raw);
        let list = |name: &str| {
            e.field(name)
                .map(|f| parse_list(&unfold(&raw[f.value.clone()])))
                .unwrap_or_default()
        };
        EnvelopeFields {
            date: text("Date"),
            subject: text("Subject"),
            from: list("From"),
            sender: list("Sender"),
            reply_to: list("Reply-To"),
            to: list("To"),
            cc: list("Cc"),
            bcc: list("Bcc"),
            in_reply_to: text("In-Reply-To"),
            message_id: text("Message-ID"),
        }
    }
}

impl Summary {
    /// Computes the summary of `raw`, a whole message. Never fails: any
    /// byte string is read as a message, however broken.
    pub fn parse(raw: &[u8]) -> Summary {
        Summary::from_entity(raw, &entity::parse(raw))
    }

    fn from_entity(raw: &[u8], e: &Entity<'_>) -> Summary {
        Summary {
            envelope: EnvelopeFields::from_entity(raw, e),
            body: BodyPart::from_entity(raw, e),
        }
    }

    /// Compact JSON for storage.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads what [`Summary::to_json`] wrote; `None` for anything else.
    pub fn from_json(json: &str) -> Option<Summary> {
        serde_json::from_str(json).ok()
    }

    /// The ENVELOPE (RFC 9051 §7.5.2). Sender and Reply-To default to From
    /// when absent or empty; fields that are absent are NIL.
    pub fn envelope(&self) -> Envelope<'static> {
        let e = &self.envelope;
        let or_from = |list: &[AddressFields]| {
            if list.is_empty() {
                addresses(&e.from)
            } else {
                addresses(list)
            }
        };
        Envelope {
            date: nstring(e.date.as_ref()),
            subject: nstring(e.subject.as_ref()),
            from: addresses(&e.from),
            sender: or_from(&e.sender),
            reply_to: or_from(&e.reply_to),
            to: addresses(&e.to),
            cc: addresses(&e.cc),
            bcc: addresses(&e.bcc),
            in_reply_to: nstring(e.in_reply_to.as_ref()),
            message_id: nstring(e.message_id.as_ref()),
        }
    }

    /// BODY (`extended` = false) or BODYSTRUCTURE (`extended` = true), RFC
    /// 9051 §7.5.2.
    pub fn body_structure(&self, extended: bool) -> BodyStructure<'static> {
        self.body.body_structure(extended)
    }
}

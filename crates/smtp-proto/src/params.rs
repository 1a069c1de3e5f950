//! ESMTP parameters of MAIL FROM and RCPT TO.
//!
//! RFC 5321 §4.1.2: `esmtp-param = esmtp-keyword ["=" esmtp-value]`,
//! keywords case-insensitive. Only the extensions Mailroom implements are
//! understood; anything else is refused with 555 (RFC 5321 §4.1.1.11), so a
//! client never believes we honoured a parameter we ignored. A parameter
//! given twice is a syntax error: there is no sensible "last one wins".

use std::fmt::Write as _;

use crate::command::SyntaxError;
use crate::xtext;

/// RFC 6152 / RFC 3030 `BODY=` value: how the client says the content is
/// encoded, which decides whether it may be relayed to a 7-bit-only server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME` (RFC 6152).
    EightBitMime,
    /// `BODY=BINARYMIME` (RFC 3030 §3); only valid with BDAT, which the
    /// session checks.
    BinaryMime,
}

impl Body {
    /// The keyword as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// RFC 3461 §4.3 `RET=`: how much of the message a failure DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: only the header section.
    Headers,
}

impl Ret {
    /// The keyword as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Headers => "HDRS",
        }
    }
}

/// RFC 4954 §5 `AUTH=` on MAIL FROM: who the previous hop says submitted
/// the message. A server must only trust it from an authenticated peer it
/// trusts; otherwise it is treated as `<>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MailAuth {
    /// `AUTH=<>`: the submitter is unknown or not authenticated.
    Unknown,
    /// The decoded xtext identity (usually a mailbox).
    Identity(String),
}

/// The parameters of MAIL FROM that Mailroom understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParameters {
    /// RFC 1870 `SIZE=`: the client's estimate of the message size, checked
    /// against our limit before any data is sent.
    pub size: Option<u64>,
    /// RFC 6152 / RFC 3030 `BODY=`.
    pub body: Option<Body>,
    /// RFC 6531 `SMTPUTF8`: the envelope or headers may contain UTF-8.
    pub smtputf8: bool,
    /// RFC 3461 `RET=`.
    pub ret: Option<Ret>,
    /// RFC 3461 `ENVID=`: the client's envelope identifier, xtext-decoded;
    /// echoed in DSNs.
    pub envid: Option<String>,
    /// RFC 4954 `AUTH=`.
    pub auth: Option<MailAuth>,
    /// RFC 8689 `REQUIRETLS`: the message must only travel over TLS.
    pub requiretls: bool,
}

/// RFC 3461 §4.1 `NOTIFY=`: when the client wants a delivery status
/// notification. All three false is `NOTIFY=NEVER`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Notify {
    /// `SUCCESS`: report successful delivery.
    pub success: bool,
    /// `FAILURE`: report failure.
    pub failure: bool,
    /// `DELAY`: report delays.
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Whether this is `NOTIFY=NEVER`.
    pub fn is_never(self) -> bool {
        self == Notify::NEVER
    }
}

/// RFC 3461 §4.2 `ORCPT=addr-type;xtext`: the recipient as the original
/// sender wrote it, before any forwarding, for DSNs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginalRecipient {
    /// The address type as given, usually `rfc822` (or `utf-8`, RFC 6533).
    pub addr_type: String,
    /// The xtext-decoded address.
    pub address: String,
}

impl OriginalRecipient {
    /// Whether the address type is `rfc822` (case-insensitive), the only one
    /// whose address is a plain mailbox.
    pub fn is_rfc822(&self) -> bool {
        self.addr_type.eq_ignore_ascii_case("rfc822")
    }
}

/// The parameters of RCPT TO that Mailroom understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParameters {
    /// RFC 3461 `NOTIFY=`.
    pub notify: Option<Notify>,
    /// RFC 3461 `ORCPT=`.
    pub orcpt: Option<OriginalRecipient>,
}

/// One `KEYWORD[=value]` token.
struct Param<'a> {
    keyword: &'a str,
    value: Option<&'a str>,
}

/// Splits the text after the path into parameters. Several spaces between
/// parameters are tolerated; the grammar wants one, clients send more.
fn split<'a>(s: &'a str, usage: &'static str) -> Result<Vec<Param<'a>>, SyntaxError> {
    let mut out = Vec::new();
    for token in s.split(' ').filter(|t| !t.is_empty()) {
        let (keyword, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        // `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // `esmtp-value = 1*(%d33-60 / %d62-126)`, plus UTF-8 (RFC 6531).
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| matches!(b, 33..=60 | 62..=126) || b >= 0x80)
        });
        if !keyword_ok || !value_ok {
            return Err(SyntaxError::InvalidArguments { usage });
        }
        out.push(Param { keyword, value });
    }
    Ok(out)
}

fn unknown(keyword: &str) -> SyntaxError {
    let mut name = keyword.to_ascii_uppercase();
    name.truncate(32);
    SyntaxError::UnknownParameter { name }
}

fn invalid(name: &'static str, reason: &'static str) -> SyntaxError {
    SyntaxError::InvalidParameter { name, reason }
}

/// Fails when a keyword that takes no value got one, or the reverse.
fn no_value(p: &Param<'_>, name: &'static str) -> Result<(), SyntaxError> {
    match p.value {
        None => Ok(()),
        Some(_) => Err(invalid(name, "takes no value")),
    }
}

fn value<'a>(p: &Param<'a>, name: &'static str) -> Result<&'a str, SyntaxError> {
    p.value.ok_or(invalid(name, "requires a value"))
}

fn set_once<T>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), SyntaxError> {
    if slot.is_some() {
        return Err(SyntaxError::DuplicateParameter { name });
    }
    *slot = Some(v);
    Ok(())
}

fn set_flag(flag: &mut bool, name: &'static str) -> Result<(), SyntaxError> {
    if *flag {
        return Err(SyntaxError::DuplicateParameter { name });
    }
    *flag = true;
    Ok(())
}

pub(crate) const MAIL_USAGE: &str = "MAIL FROM:<address> [parameters]";
pub(crate) const RCPT_USAGE: &str = "RCPT TO:<address> [parameters]";

impl MailParameters {
    pub(crate) fn parse(s: &str) -> Result<MailParameters, SyntaxError> {
        let mut out = MailParameters::default();
        for p in split(s, MAIL_USAGE)? {
            let kw = p.keyword.to_ascii_uppercase();
            match kw.as_str() {
                "SIZE" => {
                    // RFC 1870 §6: `size-value ::= 1*20DIGIT`.
                    let v = value(&p, "SIZE")?;
                    if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(invalid("SIZE", "not a number"));
                    }
                    let n = v.parse().map_err(|_| invalid("SIZE", "too large"))?;
                    set_once(&mut out.size, n, "SIZE")?;
                }
                "BODY" => {
                    let v = value(&p, "BODY")?;
                    let body = if v.eq_ignore_ascii_case("7BIT") {
                        Body::SevenBit
                    } else if v.eq_ignore_ascii_case("8BITMIME") {
                        Body::EightBitMime
                    } else if v.eq_ignore_ascii_case("BINARYMIME") {
                        Body::BinaryMime
                    } else {
                        return Err(invalid("BODY", "must be 7BIT, 8BITMIME or BINARYMIME"));
                    };
                    set_once(&mut out.body, body, "BODY")?;
                }
                "SMTPUTF8" => {
                    no_value(&p, "SMTPUTF8")?;
                    set_flag(&mut out.smtputf8, "SMTPUTF8")?;
                }
                "REQUIRETLS" => {
                    no_value(&p, "REQUIRETLS")?;
                    set_flag(&mut out.requiretls, "REQUIRETLS")?;
                }
                "RET" => {
                    let v = value(&p, "RET")?;
                    let ret = if v.eq_ignore_ascii_case("FULL") {
                        Ret::Full
                    } else if v.eq_ignore_ascii_case("HDRS") {
                        Ret::Headers
                    } else {
                        return Err(invalid("RET", "must be FULL or HDRS"));
                    };
                    set_once(&mut out.ret, ret, "RET")?;
                }
                "ENVID" => {
                    let v = value(&p, "ENVID")?;
                    let id = xtext::decode(v).map_err(|_| invalid("ENVID", "invalid xtext"))?;
                    // RFC 3461 §4.4: at most 100 characters.
                    if id.len() > 100 {
                        return Err(invalid("ENVID", "longer than 100 characters"));
                    }
                    set_once(&mut out.envid, id, "ENVID")?;
                }
                "AUTH" => {
                    let v = value(&p, "AUTH")?;
                    let auth = if v == "<>" {
                        MailAuth::Unknown
                    } else {
                        MailAuth::Identity(
                            xtext::decode(v).map_err(|_| invalid("AUTH", "invalid xtext"))?,
                        )
                    };
                    set_once(&mut out.auth, auth, "AUTH")?;
                }
                _ => return Err(unknown(p.keyword)),
            }
        }
        Ok(out)
    }

    /// Appends the parameters as ` KEY=value` words, in a fixed order.
    pub(crate) fn write(&self, out: &mut String) {
        if let Some(size) = self.size {
            let _ = write!(out, " SIZE={size}");
        }
        if let Some(body) = self.body {
            let _ = write!(out, " BODY={}", body.as_str());
        }
        if self.smtputf8 {
            out.push_str(" SMTPUTF8");
        }
        if let Some(ret) = self.ret {
            let _ = write!(out, " RET={}", ret.as_str());
        }
        if let Some(envid) = &self.envid {
            let _ = write!(out, " ENVID={}", xtext::encode(envid));
        }
        match &self.auth {
            Some(MailAuth::Unknown) => out.push_str(" AUTH=<>"),
            Some(MailAuth::Identity(id)) => {
                let _ = write!(out, " AUTH={}", xtext::encode(id));
            }
            None => {}
        }
        if self.requiretls {
            out.push_str(" REQUIRETLS");
        }
    }
}

impl RcptParameters {
    pub(crate) fn parse(s: &str) -> Result<RcptParameters, SyntaxError> {
        let mut out = RcptParameters::default();
        for p in split(s, RCPT_USAGE)? {
            let kw = p.keyword.to_ascii_uppercase();
            match kw.as_str() {
                "NOTIFY" => {
                    let v = value(&p, "NOTIFY")?;
                    set_once(&mut out.notify, parse_notify(v)?, "NOTIFY")?;
                }
                "ORCPT" => {
                    let v = value(&p, "ORCPT")?;
                    // RFC 3461 §4.2: `orcpt-parameter = "ORCPT=" original-recipient-address`,
                    // `original-recipient-address = addr-type ";" xtext`, at most
                    // 500 characters.
                    if v.len() > 500 {
                        return Err(invalid("ORCPT", "longer than 500 characters"));
                    }
                    let (addr_type, address) = v
                        .split_once(';')
                        .ok_or(invalid("ORCPT", "must be addr-type;address"))?;
                    // `addr-type = atom`
                    if addr_type.is_empty()
                        || !addr_type.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
                        })
                    {
                        return Err(invalid("ORCPT", "invalid address type"));
                    }
                    let address =
                        xtext::decode(address).map_err(|_| invalid("ORCPT", "invalid xtext"))?;
                    if address.is_empty() {
                        return Err(invalid("ORCPT", "empty address"));
                    }
                    let orcpt = OriginalRecipient {
                        addr_type: addr_type.to_string(),
                        address,
                    };
                    set_once(&mut out.orcpt, orcpt, "ORCPT")?;
                }
                _ => return Err(unknown(p.keyword)),
            }
        }
        Ok(out)
    }

    /// Appends the parameters as ` KEY=value` words, in a fixed order.
    pub(crate) fn write(&self, out: &mut String) {
        if let Some(notify) = self.notify {
            out.push_str(" NOTIFY=");
            if notify.is_never() {
                out.push_str("NEVER");
            } else {
                let words = [
                    (notify.success, "SUCCESS"),
                    (notify.failure, "FAILURE"),
                    (notify.delay, "DELAY"),
                ];
                let list: Vec<&str> = words.iter().filter(|w| w.0).map(|w| w.1).collect();
                out.push_str(&list.join(","));
            }
        }
        if let Some(orcpt) = &self.orcpt {
            let _ = write!(
                out,
                " ORCPT={};{}",
                orcpt.addr_type,
                xtext::encode(&orcpt.address)
            );
        }
    }
}

/// RFC 3461 §4.1: `"NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )`;
/// NEVER must stand alone. Repeating a word is harmless and accepted.
fn parse_notify(v: &str) -> Result<Notify, SyntaxError> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::NEVER);
    }
    let mut notify = Notify::default();
    for word in v.split(',') {
        if word.eq_ignore_ascii_case("SUCCESS") {
            notify.success = true;
        } else if word.eq_ignore_ascii_case("FAILURE") {
            notify.failure = true;
        } else if word.eq_ignore_ascii_case("DELAY") {
            notify.delay = true;
        } else if word.eq_ignore_ascii_case("NEVER") {
            return Err(invalid("NOTIFY", "NEVER must be used alone"));
        } else {
            return Err(invalid(
                "NOTIFY",
                "must be NEVER or a list of SUCCESS, FAILURE, DELAY",
            ));
        }
    }
    Ok(notify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_parameters() {
        let p = MailParameters::parse(
            " SIZE=1000 body=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B314 AUTH=e+3Dmc2@example.com REQUIRETLS",
        )
        .unwrap();
        assert_eq!(
            p,
            MailParameters {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Headers),
                envid: Some("QQ+314".into()),
                auth: Some(MailAuth::Identity("e=mc2@example.com".into())),
                requiretls: true,
            }
        );
        let mut wire = String::new();
        p.write(&mut wire);
        assert_eq!(
            wire,
            " SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B314 AUTH=e+3Dmc2@example.com REQUIRETLS"
        );
        assert_eq!(MailParameters::parse(&wire).unwrap(), p);
        assert_eq!(
            MailParameters::parse("AUTH=<>").unwrap().auth,
            Some(MailAuth::Unknown)
        );
        assert_eq!(
            MailParameters::parse("").unwrap(),
            MailParameters::default()
        );
        assert_eq!(
            MailParameters::parse("  SIZE=0   BODY=7BIT  ")
                .unwrap()
                .body,
            Some(Body::SevenBit)
        );
        assert_eq!(
            MailParameters::parse("BODY=BINARYMIME").unwrap().body,
            Some(Body::BinaryMime)
        );
    }

    #[test]
    fn bad_mail_parameters() {
        let inv = |name, reason| SyntaxError::InvalidParameter { name, reason };
        let cases: &[(&str, SyntaxError)] = &[
            ("SIZE=abc", inv("SIZE", "not a number")),
            ("SIZE=-1", inv("SIZE", "not a number")),
            ("SIZE=99999999999999999999", inv("SIZE", "too large")),
            ("SIZE=123456789012345678901", inv("SIZE", "not a number")),
            ("SIZE", inv("SIZE", "requires a value")),
            ("SIZE=", SyntaxError::InvalidArguments { usage: MAIL_USAGE }),
            (
                "SIZE=1 SIZE=2",
                SyntaxError::DuplicateParameter { name: "SIZE" },
            ),
            (
                "SMTPUTF8 smtputf8",
                SyntaxError::DuplicateParameter { name: "SMTPUTF8" },
            ),
            ("SMTPUTF8=yes", inv("SMTPUTF8", "takes no value")),
            (
                "BODY=9BIT",
                inv("BODY", "must be 7BIT, 8BITMIME or BINARYMIME"),
            ),
            ("RET=ALL", inv("RET", "must be FULL or HDRS")),
            ("ENVID=a+zz", inv("ENVID", "invalid xtext")),
            ("AUTH=a+", inv("AUTH", "invalid xtext")),
            (
                "X-UNKNOWN=1",
                SyntaxError::UnknownParameter {
                    name: "X-UNKNOWN".into(),
                },
            ),
            (
                "holdfor=10",
                SyntaxError::UnknownParameter {
                    name: "HOLDFOR".into(),
                },
            ),
            (
                "NOTIFY=NEVER",
                SyntaxError::UnknownParameter {
                    name: "NOTIFY".into(),
                },
            ),
            ("=1", SyntaxError::InvalidArguments { usage: MAIL_USAGE }),
            ("-X=1", SyntaxError::InvalidArguments { usage: MAIL_USAGE }),
            (
                "SIZE=1=2",
                SyntaxError::InvalidArguments { usage: MAIL_USAGE },
            ),
        ];
        for (input, err) in cases {
            assert_eq!(MailParameters::parse(input).as_ref(), Err(err), "{input}");
        }
        let long_envid = format!("ENVID={}", "a".repeat(101));
        assert!(MailParameters::parse(&long_envid).is_err());
    }

    #[test]
    fn rcpt_parameters() {
        let n = |s: &str| {
            RcptParameters::parse(&format!("NOTIFY={s}"))
                .unwrap()
                .notify
                .unwrap()
        };
        assert_eq!(n("NEVER"), Notify::NEVER);
        assert_eq!(n("never"), Notify::NEVER);
        assert_eq!(
            n("SUCCESS,FAILURE,DELAY"),
            Notify {
                success: true,
                failure: true,
                delay: true
            }
        );
        assert_eq!(
            n("failure"),
            Notify {
                failure: true,
                ..Notify::default()
            }
        );
        assert_eq!(
            n("DELAY,SUCCESS,DELAY"),
            Notify {
                success: true,
                delay: true,
                ..Notify::default()
            }
        );
        let p = RcptParameters::parse("ORCPT=rfc822;Bob+2Bx@Example.COM NOTIFY=SUCCESS").unwrap();
        let orcpt = p.orcpt.as_ref().unwrap();
        assert!(orcpt.is_rfc822());
        assert_eq!(orcpt.address, "Bob+x@Example.COM");
        let mut wire = String::new();
        p.write(&mut wire);
        assert_eq!(wire, " NOTIFY=SUCCESS ORCPT=rfc822;Bob+2Bx@Example.COM");
        assert_eq!(RcptParameters::parse(&wire).unwrap(), p);
    }

    #[test]
    fn bad_rcpt_parameters() {
        let inv = |name, reason| SyntaxError::InvalidParameter { name, reason };
        let cases: &[(&str, SyntaxError)] = &[
            (
                "NOTIFY=NEVER,SUCCESS",
                inv("NOTIFY", "NEVER must be used alone"),
            ),
            (
                "NOTIFY=SUCCESS,NEVER",
                inv("NOTIFY", "NEVER must be used alone"),
            ),
            (
                "NOTIFY=SOMETIMES",
                inv(
                    "NOTIFY",
                    "must be NEVER or a list of SUCCESS, FAILURE, DELAY",
                ),
            ),
            (
                "NOTIFY=SUCCESS,",
                inv(
                    "NOTIFY",
                    "must be NEVER or a list of SUCCESS, FAILURE, DELAY",
                ),
            ),
            ("NOTIFY", inv("NOTIFY", "requires a value")),
            (
                "NOTIFY=NEVER NOTIFY=NEVER",
                SyntaxError::DuplicateParameter { name: "NOTIFY" },
            ),
            ("ORCPT=rfc822", inv("ORCPT", "must be addr-type;address")),
            ("ORCPT=;a@b", inv("ORCPT", "invalid address type")),
            ("ORCPT=rfc822;", inv("ORCPT", "empty address")),
            ("ORCPT=rfc822;a+", inv("ORCPT", "invalid xtext")),
            (
                "SIZE=10",
                SyntaxError::UnknownParameter {
                    name: "SIZE".into(),
                },
            ),
        ];
        for (input, err) in cases {
            assert_eq!(RcptParameters::parse(input).as_ref(), Err(err), "{input}");
        }
    }
}

//! Fuzzing harnesses, shared by the cargo-fuzz targets `spf` and `dmarc`
//! in `fuzz/` and by the stable test over their seed corpora
//! (`tests/tests/fuzz_corpus.rs`). Each panics when an invariant breaks.
//! Not part of the supported API.

use std::net::IpAddr;

use mail_auth::common::parse::TxtRecordParser;

use crate::inbound::{claims, is_dmarc_record, pct_of, strip_our_results};
use crate::spf::macros::{Context, Kind, MacroString};
use crate::spf::record::{self, Mechanism};

/// The authserv-id the `dmarc` target strips.
const AUTHSERV_ID: &str = "mx.example.org";

/// SPF as a hostile domain can publish it. The input's lines: the TXT
/// record, then the sender's local part and the HELO name (which the
/// client chose). Invariants: parsing is total; a parsed record's macro
/// strings expand, for an IPv4 and an IPv6 client, to bounded text; the
/// record is also parsed as an `exp=` explanation (what an `exp=` TXT
/// record holds) and expanded.
pub fn spf(input: &[u8]) {
    let mut lines = input.split(|&b| b == b'\n');
    let txt = lines.next().unwrap_or_default();
    let local = String::from_utf8_lossy(lines.next().unwrap_or(b"postmaster")).into_owned();
    let helo = String::from_utf8_lossy(lines.next().unwrap_or(b"mail.example.com")).into_owned();
    let _ = record::is_spf_record(txt);
    let mut strings = Vec::new();
    if let Ok(record) = record::parse(txt) {
        for directive in &record.directives {
            let _ = directive.mechanism.queries_dns();
            match &directive.mechanism {
                Mechanism::Include(m) | Mechanism::Exists(m) => strings.push(m.clone()),
                Mechanism::A(m, _) | Mechanism::Mx(m, _) | Mechanism::Ptr(m) => {
                    strings.extend(m.clone());
                }
                Mechanism::All | Mechanism::Ip4(..) | Mechanism::Ip6(..) => {}
            }
        }
        strings.extend(record.redirect.clone());
        strings.extend(record.exp.clone());
    }
    if let Ok(text) = std::str::from_utf8(txt) {
        for kind in [Kind::Domain, Kind::Explanation, Kind::Unknown] {
            if let Ok(m) = MacroString::parse(text, kind) {
                strings.push(m);
            }
        }
    }
    let ips: [IpAddr; 2] = [
        [192, 0, 2, 3].into(),
        "2001:db8::cb01".parse().expect("an IPv6 address"),
    ];
    for ip in ips {
        let ctx = Context {
            local: &local,
            sender_domain: "example.com",
            domain: "example.com",
            ip,
            helo: &helo,
            receiver: AUTHSERV_ID,
            ptr: Some("mail.example.com"),
            now: 1_700_000_000,
        };
        for m in &strings {
            let _ = (m.is_empty(), m.is_domain_spec());
            let out = m.expand(&ctx);
            let bound = 3 * input.len() * (100 + local.len() + helo.len());
            assert!(out.len() <= bound, "{} octets from {m:?}", out.len());
        }
    }
}

/// DMARC records and the header fields that claim our authentication
/// results. Invariants: reading `pct=` and recognising a record never
/// panic and `pct` is at most 100 (nor does mail-auth's own record
/// parser panic); stripping `Authentication-Results` of our authserv-id
/// is idempotent, keeps the body and every other field byte for byte, and
/// leaves no field that a MIME parser reads as ours.
pub fn dmarc(input: &[u8]) {
    let _ = is_dmarc_record(input);
    assert!(pct_of(input) <= 100);
    let _ = mail_auth::dmarc::Dmarc::parse(input);

    let stripped = strip_our_results(input, AUTHSERV_ID);
    assert!(stripped.len() <= input.len());
    assert_eq!(
        strip_our_results(&stripped, AUTHSERV_ID),
        stripped,
        "not idempotent"
    );
    let mut rest = input;
    for &b in &stripped {
        let at = rest
            .iter()
            .position(|&c| c == b)
            .expect("not a subsequence");
        rest = &rest[at + 1..];
    }
    let parsed = mail_parser::MessageParser::default().parse_headers(&stripped);
    for header in parsed.iter().flat_map(|m| m.headers()) {
        if header.name().eq_ignore_ascii_case("Authentication-Results") {
            let value = &stripped[header.offset_start() as usize..header.offset_end() as usize];
            let field = [b"Authentication-Results:".as_slice(), value].concat();
            assert!(
                !claims(&field, AUTHSERV_ID),
                "{:?} survived",
                String::from_utf8_lossy(&field)
            );
        }
    }
}

//! The OpenSPF test suite for RFC 7208 (`tests/data/openspf/rfc7208-tests.yml`
//! as pyspf 2.0.14 ships it, BSD licence beside it; read from its JSON
//! conversion) run through Mailroom's SPF evaluation
//! (`Checker::spf_identities`, the same call the inbound checks make).
//!
//! Each scenario's zone data is served by a small scripted DNS server on
//! loopback that behaves as pyspf's test harness does (`testspf.py`): `SPF`
//! entries are served as TXT unless the name has TXT entries of its own, a
//! `TIMEOUT` entry (or an absent `error.` name) is never answered, an absent
//! name is NXDOMAIN, a CNAME is followed one level. The result is compared
//! and, where the suite gives one for a `fail`, the explanation (`exp=`,
//! RFC 7208 §6.2): `DEFAULT` means the domain gave none, any other text is
//! compared ignoring ASCII case (the suite writes the nibbles of `%{ir}` in
//! upper case, RFC 7208 §7.4 in lower case).
//!
//! Tests whose result differs are listed, with the reason, in
//! `tests/data/openspf/known-differences.txt`; the test fails when the set
//! of differences changes either way, so a regression or a fix is seen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use mailroom_sender_auth::inbound::SpfResult;
use serde_json::Value;

const SUITE: &str = include_str!("../data/openspf/rfc7208-tests.json");
const KNOWN: &str = include_str!("../data/openspf/known-differences.txt");

/// One scenario's records: lower-case name → `(type, value)` entries.
type Zone = BTreeMap<String, Vec<(String, Value)>>;

fn zone(data: &Value) -> Zone {
    data.as_object()
        .unwrap()
        .iter()
        .map(|(name, entries)| {
            let entries = entries
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_str().unwrap().to_string(), e[1].clone()))
                .collect();
            (name.trim_end_matches('.').to_ascii_lowercase(), entries)
        })
        .collect()
}

/// A zone name as DNS labels, octet for octet: the suite has names with
/// spaces, `%`, `:` and `/` in them, which the text parser would refuse.
/// An empty name is the root (an MX of `""`).
fn fqdn(s: &str) -> Name {
    match s.trim_end_matches('.') {
        "" => Name::root(),
        s => Name::from_labels(s.split('.').map(str::as_bytes)).unwrap(),
    }
}

/// The answer records for `name`/`qtype`, or `None` to stay silent (a timeout).
fn answer(
    zone: &Zone,
    name: &str,
    qtype: RecordType,
    level: u8,
) -> Option<Result<Vec<Record>, ()>> {
    let Some(entries) = zone.get(name) else {
        if name.starts_with("error.") {
            return None;
        }
        return Some(Err(())); // NXDOMAIN
    };
    // testspf.py: a bare TIMEOUT times the query out unless an entry
    // before it had the queried type (then the entries after it are unseen).
    let qname = match qtype {
        RecordType::TXT => "TXT",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::MX => "MX",
        RecordType::PTR => "PTR",
        _ => "",
    };
    // A TXT entry, even `NONE`, stops SPF entries from being served as TXT.
    let has_txt = entries.iter().any(|(t, _)| t == "TXT");
    // testspf.py drops `NONE` entries before anything else.
    let none = |v: &Value| {
        v.as_str() == Some("NONE") || v.as_array().is_some_and(|a| a.len() == 1 && a[0] == "NONE")
    };
    let kept: Vec<(String, Value)> = entries.iter().filter(|(_, v)| !none(v)).cloned().collect();
    let mut entries: &[(String, Value)] = &kept;
    if let Some(at) = entries.iter().position(|(t, _)| t == "TIMEOUT") {
        if !entries[..at].iter().any(|(t, _)| t == qname) {
            return None;
        }
        entries = &entries[..at];
    }
    let owner = fqdn(name);
    let mut out = Vec::new();
    for (t, v) in entries {
        let wanted = match (t.as_str(), qtype) {
            ("TXT", RecordType::TXT) => true,
            ("SPF", RecordType::TXT) => !has_txt,
            ("A", RecordType::A) | ("AAAA", RecordType::AAAA) | ("MX", RecordType::MX) => true,
            ("PTR", RecordType::PTR) | ("CNAME", _) => true,
            _ => false,
        };
        if !wanted {
            continue;
        }
        if v.as_str() == Some("TIMEOUT") {
            return None;
        }
        let data = match t.as_str() {
            "TXT" | "SPF" => {
                let mut strings: Vec<String> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect();
                if strings.is_empty() {
                    strings.push(String::new());
                }
                RData::TXT(TXT::new(strings))
            }
            "A" => RData::A(A(v.as_str().unwrap().parse().unwrap())),
            "AAAA" => RData::AAAA(AAAA(v.as_str().unwrap().parse().unwrap())),
            "MX" => RData::MX(MX::new(
                v[0].as_u64().unwrap() as u16,
                fqdn(v[1].as_str().unwrap()),
            )),
            "PTR" => RData::PTR(PTR(fqdn(v.as_str().unwrap()))),
            "CNAME" => {
                let target = v
                    .as_str()
                    .unwrap()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                out.push(Record::from_rdata(
                    owner.clone(),
                    300,
                    RData::CNAME(CNAME(fqdn(&target))),
                ));
                if level == 0 && qtype != RecordType::CNAME {
                    match answer(zone, &target, qtype, 1) {
                        None => return None,
                        Some(Ok(more)) => out.extend(more),
                        Some(Err(())) => {}
                    }
                }
                continue;
            }
            _ => continue,
        };
        out.push(Record::from_rdata(owner.clone(), 300, data));
    }
    Some(Ok(out))
}

/// A UDP DNS server answering from `zone`; stops when dropped.
struct ScriptedDns {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(zone: Zone) -> ScriptedDns {
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = query.queries.first().cloned() else {
                continue;
            };
            let name = q
                .name()
                .iter()
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            let Some(result) = answer(&zone, &name, q.query_type(), 0) else {
                continue; // a timeout
            };
            let mut response = Message::new(
                query.metadata.id,
                MessageType::Response,
                query.metadata.op_code,
            );
            response.metadata.authoritative = true;
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.add_query(q);
            match result {
                Ok(records) => {
                    response.add_answers(records);
                }
                Err(()) => response.metadata.response_code = ResponseCode::NXDomain,
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    ScriptedDns { addr, task }
}

fn result_name(r: SpfResult) -> &'static str {
    use SpfResult::*;
    match r {
        Pass => "pass",
        Fail => "fail",
        SoftFail => "softfail",
        Neutral => "neutral",
        TempError => "temperror",
        PermError => "permerror",
        None => "none",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openspf_rfc7208_suite() {
    let suite: Vec<Value> = serde_json::from_str(SUITE).unwrap();
    let mut differences = BTreeSet::new();
    let mut count = 0;
    for scenario in &suite {
        let dns = serve(zone(&scenario["zonedata"])).await;
        let checker = mailroom_sender_auth::Checker::new(
            mailroom_sender_auth::dns::resolver(&[dns.addr], Duration::from_millis(500)).unwrap(),
            "receiver.test",
            Default::default(),
        );
        for test in scenario["tests"].as_array().unwrap() {
            count += 1;
            let name = test["name"].as_str().unwrap();
            let ip: IpAddr = test["host"].as_str().unwrap().parse().unwrap();
            let helo = test["helo"].as_str().unwrap();
            let mail_from = test["mailfrom"].as_str().unwrap();
            let expected: Vec<&str> = test["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            let (_, spf) = checker.spf_identities(ip, helo, mail_from).await;
            let got = result_name(spf.result());
            if expected.len() > 1 {
                eprintln!("{name}: {got} (the suite allows {})", expected.join("|"));
            }
            if !expected.contains(&got) {
                differences.insert(format!("{name}: {got} (expected {})", expected.join("|")));
            } else if let (Some(wanted), "fail") = (test["explanation"].as_str(), got) {
                let ours = spf.explanation().unwrap_or("DEFAULT");
                if !ours.eq_ignore_ascii_case(wanted) {
                    differences.insert(format!(
                        "{name}: explanation {ours:?} (expected {wanted:?})"
                    ));
                }
            }
        }
    }
    assert_eq!(count, 203, "the whole suite ran");
    let known: BTreeSet<String> = KNOWN
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(" -- ").next().unwrap().trim().to_string())
        .collect();
    let new: Vec<_> = differences.difference(&known).collect();
    let gone: Vec<_> = known.difference(&differences).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "{} of {count} differ; not listed as known: {new:#?}\nlisted but no longer differing: {gone:#?}",
        differences.len()
    );
}

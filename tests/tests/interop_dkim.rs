//! DKIM interop with dkimpy (PyPI `dkimpy`, with `pynacl` for Ed25519;
//! .ci/run installs both): dkimpy verifies the signatures Mailroom makes,
//! and Mailroom verifies dkimpy's, with both key types, on the messages
//! that break careless canonicalisation: folded headers, 8-bit bodies, an
//! empty body, trailing blank lines, whitespace runs.

use std::process::Command;
use std::time::Duration;

use mailroom_sender_auth::keys::{self, GeneratedKey};
use mailroom_sender_auth::signing::{self, SigningKey};
use mailroom_tests::{DnsRecord, TestDns, base64_encode, run_tool};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/dkim_cross.py");

/// Messages as they arrive (CRLF line ends).
fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let head = "From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n\
                Date: Thu, 3 Dec 2026 12:00:00 +0000\r\n";
    vec![
        (
            "folded",
            format!("{head}Subject: a subject\r\n  folded  over\r\n\tthree lines\r\n\r\nbody\r\n")
                .into_bytes(),
        ),
        (
            "8bit",
            [
                format!(
                    "{head}Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=latin1\r\n\r\n"
                )
                .as_bytes(),
                b"caf\xe9 \xff\xfe bytes\r\n",
            ]
            .concat(),
        ),
        (
            "empty body",
            format!("{head}Subject: empty\r\n\r\n").into_bytes(),
        ),
        (
            "trailing blank lines",
            format!("{head}Subject: blanks\r\n\r\ntext  with   runs \t \r\n\r\n\r\n\r\n")
                .into_bytes(),
        ),
    ]
}

fn run(args: &[&str]) -> String {
    run_tool(
        "python3 dkim_cross.py (dkimpy)",
        Command::new("python3").arg(SCRIPT).args(args),
        &[0],
    )
}

#[test]
fn dkimpy_verifies_what_mailroom_signs() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = keys::generate_rsa().unwrap();
    let ed = keys::generate_ed25519().unwrap();
    let records = serde_json::json!({
        "rsa._domainkey.example.test": keys::dkim_record(rsa.algorithm, &rsa.public_base64()),
        "ed._domainkey.example.test": keys::dkim_record(ed.algorithm, &ed.public_base64()),
    });
    let records_file = dir.path().join("records.json");
    std::fs::write(&records_file, records.to_string()).unwrap();
    let (rsa_pem, ed_pem) = (rsa.private_pem(), ed.private_pem());
    let keys = [
        SigningKey {
            domain: "example.test",
            selector: "rsa",
            algorithm: rsa.algorithm,
            private_key_pem: &rsa_pem,
        },
        SigningKey {
            domain: "example.test",
            selector: "ed",
            algorithm: ed.algorithm,
            private_key_pem: &ed_pem,
        },
    ];
    for (name, message) in messages() {
        let signatures = signing::sign(&message, &keys, Duration::from_secs(3600)).unwrap();
        let file = dir.path().join("message.eml");
        std::fs::write(&file, [signatures.as_bytes(), &message].concat()).unwrap();
        let out = run(&[
            "verify",
            records_file.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        assert_eq!(out, "pass\npass\n", "{name}: dkimpy says {out}");
    }
}

/// The 32-byte seed of an Ed25519 PKCS#8 key (RFC 8410 §7: the
/// CurvePrivateKey OCTET STRING follows 16 bytes of structure), which is
/// what dkimpy takes.
fn ed25519_seed(key: &GeneratedKey) -> String {
    base64_encode(&key.private_key[16..48])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailroom_verifies_what_dkimpy_signs() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = keys::generate_rsa().unwrap();
    let ed = keys::generate_ed25519().unwrap();
    let dns = TestDns::start(
        "test",
        &[
            (
                "rsa._domainkey.example",
                DnsRecord::Txt(keys::dkim_record(rsa.algorithm, &rsa.public_base64())),
            ),
            (
                "ed._domainkey.example",
                DnsRecord::Txt(keys::dkim_record(ed.algorithm, &ed.public_base64())),
            ),
        ],
    )
    .await;
    let rsa_file = dir.path().join("rsa.pem");
    std::fs::write(&rsa_file, rsa.private_pem()).unwrap();
    let ed_file = dir.path().join("ed.key");
    std::fs::write(&ed_file, ed25519_seed(&ed)).unwrap();
    let checker = mailroom_sender_auth::Checker::new(
        mailroom_sender_auth::dns::resolver(&[dns.addr], Duration::from_secs(5)).unwrap(),
        "mx.remote.test",
        Default::default(),
    );
    for (name, message) in messages() {
        let file = dir.path().join("message.eml");
        std::fs::write(&file, &message).unwrap();
        for canon in ["relaxed", "simple"] {
            let mut signed = Vec::new();
            for (algorithm, selector, key) in [
                ("rsa-sha256", "rsa", &rsa_file),
                ("ed25519-sha256", "ed", &ed_file),
            ] {
                let field = run(&[
                    "sign",
                    algorithm,
                    selector,
                    "example.test",
                    key.to_str().unwrap(),
                    canon,
                    file.to_str().unwrap(),
                ]);
                signed.extend_from_slice(field.as_bytes());
            }
            signed.extend_from_slice(&message);
            let verdict = checker
                .check(
                    mailroom_sender_auth::inbound::Envelope {
                        ip: "192.0.2.1".parse().unwrap(),
                        helo: "mx.example.test",
                        mail_from: "alice@example.test",
                    },
                    &signed,
                    Default::default(),
                )
                .await;
            let ar = verdict.headers.replace("\r\n\t", " ");
            assert_eq!(ar.matches("dkim=pass").count(), 2, "{name}, {canon}: {ar}");
        }
    }
}

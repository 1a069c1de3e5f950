//! The fuzz targets of `fuzz/` on the stable toolchain, in every
//! `cargo test`: each target's harness (the same function the cargo-fuzz
//! target calls) runs over its committed seed corpus, `fuzz/corpus/<target>/`
//! (real traffic), and then over mutations of those seeds for a bounded time
//! (`MAILROOM_FUZZ_SECS`, 2 seconds by default). The mutations are a small
//! deterministic loop (bit flips, interesting bytes, insertions, deletions,
//! duplicated and spliced ranges), no coverage guidance: libFuzzer
//! (`scripts/fuzz`) is the deep search, this is the guard that keeps every
//! harness and seed working and catches shallow regressions.
//!
//! A failing input is written to the target directory's `fuzz-failures/`
//! and printed escaped; turn it into a plain unit test beside the code it
//! breaks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mailroom_smtp_proto::fuzz::XorShift;

/// Inputs longer than this are cut: libFuzzer's default `-max_len` is 4096.
const MAX_LEN: usize = 4096;

/// Bytes that matter to the parsers under test.
const INTERESTING: &[u8] = b"\0\r\n \t.:;<>@\"\\{}()[]%=+-*,/&~\x7f\x80\xc3\xff";

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("a seed"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// A mutation of one seed: one to four edits, sometimes splicing in a range
/// of another seed.
fn mutate(rng: &mut XorShift, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(7) {
            0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => input[at.min(len - 1)] = INTERESTING[rng.below(INTERESTING.len())],
            2 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                input.drain(at.min(len - 1)..end);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(64)).min(other.len());
                    input.splice(at..at, other[start..end].iter().copied());
                }
            }
            _ => input.insert(at, rng.next_u64() as u8),
        }
    }
    input.truncate(MAX_LEN);
    input
}

fn budget() -> Duration {
    let secs = std::env::var("MAILROOM_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// Runs `harness` on every seed of `target`, then on mutations until the
/// time budget is spent.
fn run(target: &str, harness: fn(&[u8])) {
    let seeds = seeds(target);
    for seed in &seeds {
        check(target, harness, seed);
    }
    let mut rng = XorShift::new(0x6d61_696c_726f_6f6d);
    let start = Instant::now();
    let mut runs = seeds.len();
    while start.elapsed() < budget() {
        for _ in 0..32 {
            check(target, harness, &mutate(&mut rng, &seeds));
        }
        runs += 32;
    }
    eprintln!("{target}: {runs} inputs in {:.1?}", start.elapsed());
}

fn check(target: &str, harness: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| harness(input))).is_ok() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{:016x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    panic!(
        "{target} failed on {:?} (saved as {}; replay with `cargo +nightly fuzz run -s none {target} <file>`)",
        input.escape_ascii().to_string(),
        path.display()
    );
}

fn fnv(input: &[u8]) -> u64 {
    input.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn smtp_command() {
    run("smtp_command", mailroom_smtp_proto::fuzz::command);
}

#[test]
fn smtp_data() {
    run("smtp_data", mailroom_smtp_proto::fuzz::data);
}

#[test]
fn smtp_bdat() {
    run("smtp_bdat", mailroom_smtp_proto::fuzz::bdat);
}

#[test]
fn smtp_reply() {
    run("smtp_reply", mailroom_smtp_proto::fuzz::reply);
}

#[test]
fn smtp_message() {
    run("smtp_message", mailroom_smtp_server::fuzz::message);
}

#[test]
fn address() {
    run("address", |input| {
        mailroom_address::fuzz::address(input);
        mailroom_smtp_proto::fuzz::path(input);
    });
}

#[test]
fn sasl() {
    run("sasl", mailroom_sasl::fuzz::exchange);
}

#[test]
fn pop3() {
    run("pop3", mailroom_pop3::fuzz::session_input);
}

#[test]
fn imap() {
    run("imap", mailroom_imap::fuzz::session_input);
}

#[test]
fn mime() {
    run("mime", mailroom_mime::fuzz::message);
}

#[test]
fn dsn() {
    run("dsn", mailroom_mta::fuzz::dsn);
}

#[test]
fn spf() {
    run("spf", mailroom_sender_auth::fuzz::spf);
}

#[test]
fn dmarc() {
    run("dmarc", mailroom_sender_auth::fuzz::dmarc);
}

/// Every cargo-fuzz target has a seed corpus and a test here, and back.
#[test]
fn every_target_is_covered() {
    let manifest =
        std::fs::read_to_string(corpus_dir("").join("../Cargo.toml")).expect("fuzz/Cargo.toml");
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "mailroom-fuzz")
        .collect();
    let this = include_str!("fuzz_corpus.rs");
    assert_eq!(targets.len(), 13, "{targets:?}");
    for target in targets {
        assert!(!seeds(target).is_empty());
        assert!(
            this.contains(&format!("run(\"{target}\"")),
            "no test for {target}"
        );
    }
}

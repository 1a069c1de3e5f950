//! Command line framing, `Command::parse` and `Reply::parse` on arbitrary
//! bytes: no panics, bounded consumption, canonical forms that re-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_proto::fuzz::command(input);
});

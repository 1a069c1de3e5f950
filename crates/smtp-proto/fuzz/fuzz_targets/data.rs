//! The DATA receiver fed in arbitrary splits, checked against a reference:
//! never done before a real CRLF.CRLF, never consuming past it, storage
//! bounded by max_size, bare CR/LF and NUL always refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_proto::fuzz::data(input);
});

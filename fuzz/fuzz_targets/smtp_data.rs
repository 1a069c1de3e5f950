//! The DATA receiver in arbitrary splits against a reference (no smuggling).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_proto::fuzz::data(input);
});

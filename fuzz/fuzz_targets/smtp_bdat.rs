//! The BDAT receiver: exact chunk consumption, bounded storage.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_proto::fuzz::bdat(input);
});

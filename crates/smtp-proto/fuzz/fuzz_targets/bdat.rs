//! The BDAT receiver over arbitrary chunk sequences and splits: exact
//! consumption, content equal to the concatenated chunks, bounded storage.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_proto::fuzz::bdat(input);
});

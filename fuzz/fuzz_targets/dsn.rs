//! DSNs built from a remote reply and an original message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_mta::fuzz::dsn(input);
});

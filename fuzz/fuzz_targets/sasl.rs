//! SASL exchanges, server side (PLAIN, LOGIN, SCRAM-SHA-256) and the SCRAM client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_sasl::fuzz::exchange(input);
});

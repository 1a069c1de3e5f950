//! SPF records and macro strings: parsing and expansion.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_sender_auth::fuzz::spf(input);
});

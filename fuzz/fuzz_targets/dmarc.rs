//! DMARC records as read here, and Authentication-Results stripping.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_sender_auth::fuzz::dmarc(input);
});

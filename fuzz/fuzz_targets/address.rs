//! Addresses and domains (mailroom-address) and SMTP paths (smtp-proto).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_address::fuzz::address(input);
    mailroom_smtp_proto::fuzz::path(input);
});

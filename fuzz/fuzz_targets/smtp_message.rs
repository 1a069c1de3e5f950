//! What the SMTP server reads from an accepted message's header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_server::fuzz::message(input);
});

//! POP3 input: line framing, command parsing, and the byte-stuffing of message text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_pop3::fuzz::session_input(input);
});

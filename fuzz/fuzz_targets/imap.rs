//! IMAP input above imap-codec: framing, literals, pre-parse, codec, state table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_imap::fuzz::session_input(input);
});

//! MIME: summary (ENVELOPE, BODYSTRUCTURE), sections, BINARY, SEARCH text, preview.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_mime::fuzz::message(input);
});

//! SMTP replies as the client reads them: multi-line framing in splits, EHLO capabilities.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    mailroom_smtp_proto::fuzz::reply(input);
});

//! The SSE parser, fed in pieces: the events must not depend on where the stream is cut.
//! What the input means: `troupe::fuzzing::sse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = troupe::fuzzing::sse(data) {
        panic!("{e}");
    }
});

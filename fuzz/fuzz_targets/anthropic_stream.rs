//! Anthropic upstream SSE streams (EventDecoder) and whole message bodies.
//! What the input means: `troupe::fuzzing::anthropic_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::anthropic_stream(data);
});

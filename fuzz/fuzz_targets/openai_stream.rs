//! Differential: OpenAI upstream stream chunks read by ChunkDecoder (fast chunk reader, then serde) and by serde alone must give the same events.
//! What the input means: `troupe::fuzzing::openai_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = troupe::fuzzing::openai_stream(data) {
        panic!("{e}");
    }
});

//! OpenAI Responses upstream streams and whole response objects.
//! What the input means: `troupe::fuzzing::responses_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::responses_stream(data);
});

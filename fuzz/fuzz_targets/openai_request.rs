//! OpenAI Chat Completions request bodies (`POST /v1/chat/completions`).
//! What the input means: `troupe::fuzzing::openai_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::openai_request(data);
});

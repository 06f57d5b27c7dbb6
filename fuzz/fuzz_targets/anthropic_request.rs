//! Anthropic Messages request bodies (`POST /v1/messages`, `count_tokens`).
//! What the input means: `troupe::fuzzing::anthropic_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::anthropic_request(data);
});

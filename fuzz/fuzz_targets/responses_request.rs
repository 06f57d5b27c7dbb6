//! Responses API request bodies (`POST /v1/responses`).
//! What the input means: `troupe::fuzzing::responses_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::responses_request(data);
});

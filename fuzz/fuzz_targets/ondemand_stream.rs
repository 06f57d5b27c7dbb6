//! OnDemand upstream SSE streams and sync bodies.
//! What the input means: `troupe::fuzzing::ondemand_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::ondemand_stream(data);
});

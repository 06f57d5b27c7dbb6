//! LangGraph (Agent Protocol) run event streams.
//! What the input means: `troupe::fuzzing::langgraph_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::langgraph_stream(data);
});

//! A Lingma agent's LSP-framed JSON-RPC byte stream, and its info file.
//! What the input means: `troupe::fuzzing::lingma_rpc`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::lingma_rpc(data);
});

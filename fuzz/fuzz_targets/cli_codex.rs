//! Codex's exec --json stdout, read line by line as the cli kind reads it.
//! What the input means: `troupe::fuzzing::cli_codex`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::cli_codex(data);
});

//! Configuration files: TOML through config::from_value and every kind's checks.
//! What the input means: `troupe::fuzzing::config_toml`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::config_toml(data);
});

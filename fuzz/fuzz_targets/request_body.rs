//! Request bodies under a Content-Encoding (gzip, deflate, br, zstd), with the decoded-size limit checked.
//! What the input means: `troupe::fuzzing::request_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = troupe::fuzzing::request_body(data) {
        panic!("{e}");
    }
});

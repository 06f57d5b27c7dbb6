//! Engine.IO / socket.io packets routed by the socketio kind's connection.
//! What the input means: `troupe::fuzzing::socketio_packets`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    troupe::fuzzing::socketio_packets(data);
});

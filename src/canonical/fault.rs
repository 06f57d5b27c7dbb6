//! Fault injection for the black-box tests, compiled into debug builds only
//! and armed only by `TROUPE_TEST_FAULTS=1`: a request whose last message
//! contains `troupe-test:panic-<place>` panics at that place, so the tests
//! can prove that a panic still reaches the client as a clean error.

use super::ChatRequest;

/// Panics when `req` asks for it at `place` (debug builds, armed only).
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
pub fn maybe_panic(req: &ChatRequest, place: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<bool> = OnceLock::new();
    if !*ARMED.get_or_init(|| std::env::var("TROUPE_TEST_FAULTS").is_ok_and(|v| v == "1")) {
        return;
    }
    let Some(last) = req.messages.last() else {
        return;
    };
    let marker = format!("troupe-test:panic-{place}");
    let asked = last.content.iter().any(|p| match p {
        super::ContentPart::Text(t) => t.contains(&marker),
        _ => false,
    });
    if asked {
        panic!("injected fault at {place}");
    }
}

/// Release builds carry no fault injection.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn maybe_panic(_: &ChatRequest, _: &str) {}

//! Handing memory back to the OS after a burst.
//!
//! The allocator is the binary's choice (mimalloc), and the library has no
//! `unsafe`, so the binary installs these here ([`Hooks`]). mimalloc returns
//! freed pages lazily, on a thread's later allocations: a thread that goes
//! quiet after a burst (an HTTP worker after a load, the thread that loaded
//! the tokenizer) would otherwise keep them.

use std::sync::OnceLock;

/// What the binary lends the library to give memory back.
#[derive(Debug, Clone, Copy)]
pub struct Hooks {
    /// Returns what this thread freed to the OS; `true` also purges pages
    /// freed moments ago and those of threads that have exited (it walks
    /// the whole heap: for after a one-off burst, not per request).
    pub release: fn(bool),
    /// Drops the resident pages of read-only data embedded in the binary,
    /// read once and not needed again (they would be read back from the
    /// executable if touched).
    pub forget: fn(&'static [u8]),
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

pub(crate) fn install(hooks: Hooks) {
    let _ = HOOKS.set(hooks);
}

/// Returns what this thread freed to the OS, if the binary said how.
pub(crate) fn release(force: bool) {
    if let Some(h) = HOOKS.get() {
        (h.release)(force);
    }
}

/// Drops the resident pages of `bytes`, embedded data read once.
pub(crate) fn forget(bytes: &'static [u8]) {
    if let Some(h) = HOOKS.get() {
        (h.forget)(bytes);
    }
}

//! Wiring: starting the gateway and draining it on SIGTERM ([`server`]),
//! putting the Router and the sessions on the HTTP worker threads
//! ([`placement`]), what actix keeps of finished requests ([`pools`]), and
//! the root supervisor that starts the pools and
//! applies a changed configuration ([`reload`]).

mod h2c;
pub(crate) mod placement;
mod pools;
pub(crate) mod reload;
pub mod server;

pub use crate::support::memory::Hooks as MemoryHooks;
pub use server::serve;

/// Loads and validates the configuration at `path`, each pool's own keys
/// by its kind's checks.
pub fn load_config(
    path: &std::path::Path,
) -> Result<crate::config::Config, crate::config::ConfigError> {
    crate::config::load(path, crate::upstream::registry::check_pool)
}

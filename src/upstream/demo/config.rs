//! The `demo` kind's own keys and their checks, with errors naming the
//! dotted key.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, ConfigError, PoolConfig};

/// A `demo` pool's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Pause between streamed chunks (default 20ms).
    #[serde(default, with = "humantime_serde")]
    pub chunk_delay: Option<Duration>,
    /// Simulated login credentials expire after this long, so refresh
    /// ahead of expiry and the credential cache can be seen working.
    #[serde(default, with = "humantime_serde")]
    pub credential_ttl: Option<Duration>,
}

pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    pool.settings::<Settings>(at)?;
    if pool.sessions == Some(0) {
        return Err(invalid(at("sessions"), "must be at least 1"));
    }
    Ok(())
}

/// Sessions of a pool without accounts.
pub(crate) fn sessions(pool: &PoolConfig) -> u32 {
    pool.sessions.unwrap_or(2)
}

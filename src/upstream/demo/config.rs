//! Checks of the `demo` kind's keys, with errors naming the dotted key.

use crate::config::{invalid, ConfigError, PoolConfig};

pub(crate) fn validate(pool: &PoolConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if pool.sessions == Some(0) {
        return Err(invalid(at("sessions"), "must be at least 1"));
    }
    Ok(())
}

/// Sessions of a pool without accounts.
pub(crate) fn sessions(pool: &PoolConfig) -> u32 {
    pool.sessions.unwrap_or(2)
}

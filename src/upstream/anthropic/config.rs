//! Checks of the `anthropic` kind's keys, with errors naming the dotted key.

use crate::config::{invalid, ConfigError, PoolConfig};

pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    // Anthropic's SDK convention: the gateway appends `/v1/messages`, so a
    // `/v1` here would double it.
    if let Some(u) = pool.base_url.as_deref() {
        if u.trim_end_matches('/').ends_with("/v1") {
            return Err(invalid(
                at("base_url"),
                format!(
                    "`{u}`: give the anthropic base_url without `/v1` (like https://api.anthropic.com); /v1/messages is appended"
                ),
            ));
        }
    }
    pool.settings::<crate::upstream::http::config::NoOwnKeys>(at)?;
    crate::upstream::http::config::validate_keyed(pool, at)
}

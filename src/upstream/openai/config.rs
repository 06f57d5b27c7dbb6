//! Checks of the `openai` kind's keys, with errors naming the dotted key.

use crate::config::{ConfigError, PoolConfig};

pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    crate::upstream::http::config::validate_keyed(pool, at)
}

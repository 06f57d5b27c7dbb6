//! Checks shared by the kinds that are API-key servers (`openai`,
//! `anthropic`), with errors naming the dotted key.

use serde::Deserialize;

use crate::config::{invalid, ConfigError, PoolConfig};

/// The own keys of a kind that has none beyond the common ones: any other
/// key is refused, named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoOwnKeys {}

/// An http(s) `base_url` the sessions can use, and one account with a key
/// per session. (The kind checks its own keys.)
pub(crate) fn validate_keyed(
    pool: &PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let kind = pool.kind.as_str();
    match &pool.base_url {
        None => {
            return Err(invalid(
                at("base_url"),
                format!("the {kind} kind needs base_url"),
            ))
        }
        // Parsed as the sessions will parse it, so a URL they could not
        // use is refused here, naming the key.
        Some(u) if super::client::api_uri(u, "").is_err() => {
            return Err(invalid(
                at("base_url"),
                format!("`{u}` is not an http(s) URL"),
            ))
        }
        Some(_) => {}
    }
    if pool.sessions.is_some() {
        return Err(invalid(
            at("sessions"),
            format!("the {kind} kind has one session per account"),
        ));
    }
    if pool.accounts.is_empty() {
        return Err(invalid(
            at("accounts"),
            format!("the {kind} kind needs at least one account"),
        ));
    }
    for (a, acct) in pool.accounts.iter().enumerate() {
        if acct.api_key.is_none() {
            return Err(invalid(
                at(&format!("accounts[{a}].api_key")),
                format!("an {kind} account needs api_key or api_key_file"),
            ));
        }
    }
    Ok(())
}

//! The `ondemand` kind's own keys and their checks, with errors naming the
//! dotted key.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{invalid, ConfigError, PoolConfig};

/// An `ondemand` pool's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Model name → OnDemand endpoint id, over the built-in ones.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Whether answers are streamed upstream (default) or fetched whole.
    #[serde(default)]
    pub response_mode: ResponseMode,
}

/// How an `ondemand` pool asks for answers. Streaming is the default so the
/// first token reaches the client early; `sync` is for servers or proxies
/// that cannot stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ResponseMode {
    #[default]
    Stream,
    Sync,
}

/// An `ondemand` pool: keys per account, an http(s) base_url if given, and
/// an endpoint id for every model it serves, so an unmapped model fails at
/// `troupe check` instead of at a client's first request.
pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let own: Settings = pool.settings(at)?;
    if let Some(u) = &pool.base_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(invalid(
                at("base_url"),
                format!("`{u}` is not an http(s) URL"),
            ));
        }
    }
    if pool.sessions.is_some() {
        return Err(invalid(
            at("sessions"),
            "the ondemand kind has one session per account",
        ));
    }
    if pool.accounts.is_empty() {
        return Err(invalid(
            at("accounts"),
            "the ondemand kind needs at least one account",
        ));
    }
    for (a, acct) in pool.accounts.iter().enumerate() {
        if acct.api_key.is_none() {
            return Err(invalid(
                at(&format!("accounts[{a}].api_key")),
                "an ondemand account needs api_key or api_key_file",
            ));
        }
    }
    for (model, id) in &own.endpoints {
        if id.trim().is_empty() {
            return Err(invalid(
                at(&format!("endpoints.{model}")),
                "must not be empty",
            ));
        }
    }
    for (m, model) in pool.models.iter().enumerate() {
        if super::endpoint_id(&own.endpoints, &model.upstream).is_none() {
            return Err(invalid(
                at(&format!("models[{m}]")),
                format!(
                    "no OnDemand endpoint id for `{}`: add it to endpoints (like `{} = \"predefined-...\"`) or name the endpoint id itself",
                    model.upstream, model.upstream
                ),
            ));
        }
    }
    Ok(())
}

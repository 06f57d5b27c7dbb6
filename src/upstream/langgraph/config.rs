//! The `langgraph` kind's own keys and their checks, with errors naming
//! the dotted key.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{invalid, ConfigError, PoolConfig};

/// A `langgraph` pool's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// The assistant (graph) runs use (default `agent`).
    #[serde(default)]
    pub assistant_id: Option<String>,
    /// Upstream model name → assistant, over `assistant_id`.
    #[serde(default)]
    pub assistants: BTreeMap<String, String>,
}

/// A `langgraph` pool: an http(s) base_url; accounts are optional (local
/// servers want no key) and their keys too; `sessions` only without
/// accounts; every `assistants` entry names a model the pool serves.
pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let own: Settings = pool.settings(at)?;
    match &pool.base_url {
        None => return Err(invalid(at("base_url"), "the langgraph kind needs base_url")),
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            return Err(invalid(
                at("base_url"),
                format!("`{u}` is not an http(s) URL"),
            ))
        }
        Some(_) => {}
    }
    if pool.sessions == Some(0) {
        return Err(invalid(at("sessions"), "must be at least 1"));
    }
    if pool.sessions.is_some() && !pool.accounts.is_empty() {
        return Err(invalid(
            at("sessions"),
            "a langgraph pool with accounts has one session per account",
        ));
    }
    if own
        .assistant_id
        .as_deref()
        .is_some_and(|a| a.trim().is_empty())
    {
        return Err(invalid(at("assistant_id"), "must not be empty"));
    }
    for (model, assistant) in &own.assistants {
        if !pool.models.iter().any(|m| &m.upstream == model) {
            return Err(invalid(
                at(&format!("assistants.{model}")),
                format!("`{model}` is not an upstream model name of this pool"),
            ));
        }
        if assistant.trim().is_empty() {
            return Err(invalid(
                at(&format!("assistants.{model}")),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

/// Sessions of a pool without accounts.
pub(crate) fn sessions(pool: &PoolConfig) -> u32 {
    // A local agent server needs no key: one connection unless told.
    pool.sessions.unwrap_or(1)
}

//! Checks of the `socketio` kind's keys, with errors naming the dotted key.

use crate::config::{invalid, ConfigError, PoolConfig};

/// A `socketio` pool: anonymous accounts (no `accounts`, no `sessions`),
/// the backend's URLs, anon key and prompt id, and event names unless a
/// preset supplies them.
pub(crate) fn validate(pool: &PoolConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if let Some(preset) = &pool.preset {
        if !super::PRESETS.contains(&preset.as_str()) {
            return Err(invalid(
                at("preset"),
                format!(
                    "unknown preset `{preset}` (known: {})",
                    super::PRESETS.join(", ")
                ),
            ));
        }
    }
    for (key, present) in [
        ("base_url", pool.base_url.is_some()),
        ("sessions", pool.sessions.is_some()),
        ("accounts", !pool.accounts.is_empty()),
    ] {
        if present {
            return Err(invalid(
                at(key),
                "the socketio kind signs up its own accounts: use supabase_url, min_accounts and max_accounts",
            ));
        }
    }
    let url = |key: &str, v: &Option<String>, ws: bool| -> Result<(), ConfigError> {
        match v {
            None => Err(invalid(at(key), format!("the socketio kind needs {key}"))),
            Some(u)
                if u.starts_with("http://")
                    || u.starts_with("https://")
                    || (ws && (u.starts_with("ws://") || u.starts_with("wss://"))) =>
            {
                Ok(())
            }
            Some(u) => Err(invalid(at(key), format!("`{u}` is not an http(s) URL"))),
        }
    };
    url("supabase_url", &pool.supabase_url, false)?;
    url("socket_url", &pool.socket_url, true)?;
    if pool.anon_key.as_ref().is_none_or(|k| k.expose().is_empty()) {
        return Err(invalid(
            at("anon_key"),
            "the socketio kind needs anon_key or anon_key_file",
        ));
    }
    if pool
        .prompt_id
        .as_deref()
        .is_none_or(|p| p.trim().is_empty())
    {
        return Err(invalid(
            at("prompt_id"),
            "the socketio kind needs prompt_id",
        ));
    }
    if pool.preset.is_none() && pool.chunk_event.is_none() {
        return Err(invalid(
            at("chunk_event"),
            "the socketio kind needs chunk_event (or preset = \"langfast\")",
        ));
    }
    for (key, v) in [
        ("chunk_event", &pool.chunk_event),
        ("finish_event", &pool.finish_event),
    ] {
        if v.as_deref().is_some_and(|e| e.trim().is_empty()) {
            return Err(invalid(at(key), "must not be empty"));
        }
    }
    if pool.min_accounts == Some(0) {
        return Err(invalid(at("min_accounts"), "must be at least 1"));
    }
    if pool.max_accounts == Some(0) {
        return Err(invalid(at("max_accounts"), "must be at least 1"));
    }
    if let (Some(min), Some(max)) = (pool.min_accounts, pool.max_accounts) {
        if min > max {
            return Err(invalid(
                at("max_accounts"),
                format!("must be at least min_accounts ({min})"),
            ));
        }
    }
    Ok(())
}

/// Sessions of a pool without accounts.
pub(crate) fn sessions(pool: &PoolConfig) -> u32 {
    // One anonymous account per session; a session whose sign-up fails
    // restarts with backoff, which refills the pool.
    pool.max_accounts.or(pool.min_accounts).unwrap_or(2)
}

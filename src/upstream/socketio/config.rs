//! The `socketio` kind's own keys and their checks, with errors naming the
//! dotted key.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{invalid, read_secret, ConfigError, PoolConfig, Secret};

/// A `socketio` pool's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// A named set of defaults; `langfast` is the one known.
    #[serde(default)]
    pub preset: Option<String>,
    /// The Supabase-style backend that signs accounts up and starts runs.
    #[serde(default)]
    pub supabase_url: Option<String>,
    /// Origin of the socket.io server (http(s) or ws(s)).
    #[serde(default)]
    pub socket_url: Option<String>,
    /// The Engine.IO path (default `/socket.io/`).
    #[serde(default)]
    pub socket_path: Option<String>,
    /// The backend's public anon key, sent as `apikey`.
    #[serde(default)]
    pub anon_key: Option<Secret>,
    /// Read into `anon_key` when the configuration loads.
    #[serde(default)]
    pub anon_key_file: Option<PathBuf>,
    /// The prompt every run is filed under.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The event carrying answer text (langfast: `execution:chunk`).
    #[serde(default)]
    pub chunk_event: Option<String>,
    /// An event that ends a run (langfast: `completion_finished`).
    #[serde(default)]
    pub finish_event: Option<String>,
    /// Anonymous accounts (one session each) the pool keeps; it runs
    /// `max_accounts` if set, else `min_accounts`, else 2.
    #[serde(default)]
    pub min_accounts: Option<u32>,
    #[serde(default)]
    pub max_accounts: Option<u32>,
}

/// A `socketio` pool: anonymous accounts (no `accounts`, no `sessions`),
/// the backend's URLs, anon key and prompt id, and event names unless a
/// preset supplies them.
pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let mut own: Settings = pool.settings(at)?;
    if let Some(file) = own.anon_key_file.take() {
        if own.anon_key.is_some() {
            return Err(invalid(
                at("anon_key_file"),
                "give anon_key or anon_key_file, not both",
            ));
        }
        let key = read_secret(&file, &at("anon_key_file"))?;
        // The key itself goes into the pool, so a reload sees a changed file.
        pool.set_own("anon_key", key.expose().into());
        if let Some(table) = pool.own.as_object_mut() {
            table.remove("anon_key_file");
        }
        own.anon_key = Some(key);
    }
    if let Some(preset) = &own.preset {
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
    url("supabase_url", &own.supabase_url, false)?;
    url("socket_url", &own.socket_url, true)?;
    if own.anon_key.as_ref().is_none_or(|k| k.expose().is_empty()) {
        return Err(invalid(
            at("anon_key"),
            "the socketio kind needs anon_key or anon_key_file",
        ));
    }
    if own.prompt_id.as_deref().is_none_or(|p| p.trim().is_empty()) {
        return Err(invalid(
            at("prompt_id"),
            "the socketio kind needs prompt_id",
        ));
    }
    if own.preset.is_none() && own.chunk_event.is_none() {
        return Err(invalid(
            at("chunk_event"),
            "the socketio kind needs chunk_event (or preset = \"langfast\")",
        ));
    }
    for (key, v) in [
        ("chunk_event", &own.chunk_event),
        ("finish_event", &own.finish_event),
    ] {
        if v.as_deref().is_some_and(|e| e.trim().is_empty()) {
            return Err(invalid(at(key), "must not be empty"));
        }
    }
    if own.min_accounts == Some(0) {
        return Err(invalid(at("min_accounts"), "must be at least 1"));
    }
    if own.max_accounts == Some(0) {
        return Err(invalid(at("max_accounts"), "must be at least 1"));
    }
    if let (Some(min), Some(max)) = (own.min_accounts, own.max_accounts) {
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
    let own: Settings = pool.settings(&|k| k.to_owned()).unwrap_or_default();
    own.max_accounts.or(own.min_accounts).unwrap_or(2)
}

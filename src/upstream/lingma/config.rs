//! The `lingma` kind's own keys and their checks, with errors naming the
//! dotted key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, ConfigError, PoolConfig, Secret};

/// A `lingma` pool's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// The agent program each session spawns (one process per session),
    /// e.g. `/opt/lingma/bin/Lingma` or `python3`.
    #[serde(default)]
    pub agent_binary: Option<PathBuf>,
    /// Arguments passed to `agent_binary`.
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// Environment variables set for the agent process.
    #[serde(default)]
    pub agent_env: BTreeMap<String, String>,
    /// Base of the per-session work directories
    /// (`<work_dir>/<pool>/<session>`); default `data_dir/lingma`.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// The file, relative to the work directory, the agent writes its port
    /// (and pid) to (default `.info`).
    #[serde(default)]
    pub info_file: Option<String>,
    /// The WebSocket path on the agent's port (default `/`).
    #[serde(default)]
    pub ws_path: Option<String>,
    /// How long to wait for the info file and the WebSocket.
    #[serde(default, with = "humantime_serde")]
    pub startup_timeout: Option<Duration>,
    /// `chat` (default) or `developer`, sent as `sessionType`.
    #[serde(default)]
    pub session_type: Option<String>,
    /// The `mode` sent with every `chat/ask` (default `chat`).
    #[serde(default)]
    pub agent_mode: Option<String>,
    /// Login state, base64 of a tar.gz of the agent's cache files, unpacked
    /// into every work directory before the agent starts.
    #[serde(default)]
    pub session_bundle: Option<Secret>,
    #[serde(default)]
    pub session_bundle_file: Option<PathBuf>,
    /// The result sent back to requests the agent makes of the gateway
    /// (default `null`).
    #[serde(default)]
    pub agent_request_result: Option<serde_json::Value>,
}

/// A `lingma` pool: an agent program, numbered sessions (one agent
/// process each, no accounts), an info file inside the work directory, a
/// known session type, and at most one source of login state.
pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let own: Settings = pool.settings(at)?;
    match &own.agent_binary {
        None => {
            return Err(invalid(
                at("agent_binary"),
                "the lingma kind needs agent_binary (the agent program to spawn)",
            ))
        }
        Some(b) if b.as_os_str().is_empty() => {
            return Err(invalid(at("agent_binary"), "must not be empty"))
        }
        Some(_) => {}
    }
    for (key, present) in [
        ("base_url", pool.base_url.is_some()),
        ("accounts", !pool.accounts.is_empty()),
    ] {
        if present {
            return Err(invalid(
                at(key),
                "the lingma kind spawns local agents: use sessions (one agent each) and session_bundle for login state",
            ));
        }
    }
    if pool.sessions == Some(0) {
        return Err(invalid(at("sessions"), "must be at least 1"));
    }
    if let Some(info) = &own.info_file {
        let p = std::path::Path::new(info);
        if info.trim().is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid(
                at("info_file"),
                format!("`{info}` must be a plain path inside the work directory"),
            ));
        }
    }
    if let Some(t) = &own.session_type {
        if !super::SESSION_TYPES.contains(&t.as_str()) {
            return Err(invalid(
                at("session_type"),
                format!(
                    "unknown session type `{t}` (known: {})",
                    super::SESSION_TYPES.join(", ")
                ),
            ));
        }
    }
    if own
        .agent_mode
        .as_deref()
        .is_some_and(|m| m.trim().is_empty())
    {
        return Err(invalid(at("agent_mode"), "must not be empty"));
    }
    if own.startup_timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid(at("startup_timeout"), "must be more than 0"));
    }
    match (&own.session_bundle, &own.session_bundle_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                at("session_bundle_file"),
                "give session_bundle or session_bundle_file, not both",
            ))
        }
        (Some(b), None) => {
            super::bundle::decode(b.expose())
                .map_err(|e| invalid(at("session_bundle"), e.to_string()))?;
        }
        (None, Some(f)) if !f.is_file() => {
            return Err(invalid(
                at("session_bundle_file"),
                format!("{} is not a readable file", f.display()),
            ))
        }
        _ => {}
    }
    Ok(())
}

/// Sessions of a pool without accounts.
pub(crate) fn sessions(pool: &PoolConfig) -> u32 {
    // One agent process per session.
    pool.sessions.unwrap_or(1)
}

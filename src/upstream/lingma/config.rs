//! Checks of the `lingma` kind's keys, with errors naming the dotted key.

use crate::config::{invalid, ConfigError, PoolConfig};

/// A `lingma` pool: an agent program, numbered sessions (one agent
/// process each, no accounts), an info file inside the work directory, a
/// known session type, and at most one source of login state.
pub(crate) fn validate(pool: &PoolConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    match &pool.agent_binary {
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
    if let Some(info) = &pool.info_file {
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
    if let Some(t) = &pool.session_type {
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
    if pool
        .agent_mode
        .as_deref()
        .is_some_and(|m| m.trim().is_empty())
    {
        return Err(invalid(at("agent_mode"), "must not be empty"));
    }
    if pool.startup_timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid(at("startup_timeout"), "must be more than 0"));
    }
    match (&pool.session_bundle, &pool.session_bundle_file) {
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

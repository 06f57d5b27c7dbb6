//! Checks of the `cli` kind's keys, with errors naming the dotted key.

use crate::config::{invalid, ConfigError, PoolConfig};

/// A `cli` pool: a known preset; `command` (with `{prompt}`) exactly for
/// `custom`, `binary` and `output_format` only where they mean something;
/// accounts carry only a name, `sessions` only without accounts.
pub(crate) fn validate(pool: &PoolConfig, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    use super::{OUTPUT_FORMATS, PRESETS};
    let Some(preset) = pool.preset.as_deref() else {
        return Err(invalid(
            at("preset"),
            format!("the cli kind needs a preset ({})", PRESETS.join(", ")),
        ));
    };
    if !PRESETS.contains(&preset) {
        return Err(invalid(
            at("preset"),
            format!(
                "unknown cli preset `{preset}` (known: {})",
                PRESETS.join(", ")
            ),
        ));
    }
    let custom = preset == "custom";
    if custom {
        if pool.command.is_empty() {
            return Err(invalid(
                at("command"),
                "the custom preset needs command, like [\"my-llm\", \"--ask\", \"{prompt}\"]",
            ));
        }
        if pool.command[0].trim().is_empty() {
            return Err(invalid(at("command[0]"), "must name a program"));
        }
        if !pool.command.iter().any(|a| a.contains("{prompt}")) {
            return Err(invalid(
                at("command"),
                "must contain {prompt}, where the prompt goes",
            ));
        }
        if pool.binary.is_some() {
            return Err(invalid(
                at("binary"),
                "the custom preset names its program as the first element of command",
            ));
        }
        if let Some(f) = pool.output_format.as_deref() {
            if !OUTPUT_FORMATS.contains(&f) {
                return Err(invalid(
                    at("output_format"),
                    format!(
                        "unknown output format `{f}` (known: {})",
                        OUTPUT_FORMATS.join(", ")
                    ),
                ));
            }
        }
    } else {
        if !pool.command.is_empty() {
            return Err(invalid(
                at("command"),
                format!("only the custom preset uses command; the {preset} preset builds its own"),
            ));
        }
        if pool.output_format.is_some() {
            return Err(invalid(
                at("output_format"),
                format!("only the custom preset uses output_format; {preset} has its own"),
            ));
        }
    }
    if pool
        .binary
        .as_ref()
        .is_some_and(|b| b.as_os_str().is_empty())
    {
        return Err(invalid(at("binary"), "must not be empty"));
    }
    if pool.max_line.is_some_and(|m| m.0 < 1024) {
        return Err(invalid(at("max_line"), "must be at least 1KiB"));
    }
    if pool.base_url.is_some() {
        return Err(invalid(
            at("base_url"),
            "the cli kind runs a local program: point it at a server with env instead",
        ));
    }
    if pool.sessions == Some(0) {
        return Err(invalid(at("sessions"), "must be at least 1"));
    }
    if pool.sessions.is_some() && !pool.accounts.is_empty() {
        return Err(invalid(
            at("sessions"),
            "a cli pool with accounts has one session per account",
        ));
    }
    for (a, acct) in pool.accounts.iter().enumerate() {
        if acct.api_key.is_some() {
            return Err(invalid(
                at(&format!("accounts[{a}].api_key")),
                "cli accounts carry only a name: give the program its key in env",
            ));
        }
    }
    for key in pool.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(
                at(&format!("env.{key}")),
                "is not an environment variable name",
            ));
        }
    }
    Ok(())
}

/// Sessions of a pool without accounts.
pub(crate) fn sessions(pool: &PoolConfig) -> u32 {
    // A local program needs no login: one session unless told;
    // `max_concurrency` is how many processes each one runs.
    pool.sessions.unwrap_or(1)
}

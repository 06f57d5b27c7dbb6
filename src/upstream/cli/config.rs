//! The `cli` kind's own keys and their checks, with errors naming the
//! dotted key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{invalid, ByteSize, ConfigError, PoolConfig};

/// A `cli` pool's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// `claude`, `codex`, `gemini` or `custom`.
    #[serde(default)]
    pub preset: Option<String>,
    /// The program to run (default: the preset's name, looked up on
    /// `PATH`). A `custom` preset names its program in `command` instead.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Arguments added to every run, after the preset's own options and
    /// before the prompt (like `--permission-mode plan`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// The directory the program runs in (default: the gateway's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Environment variables set for the program, over the gateway's own
    /// (like `ANTHROPIC_BASE_URL` or a separate `HOME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The longest stdout line read (default 1MiB); a longer one fails the
    /// request instead of growing a buffer without end.
    #[serde(default)]
    pub max_line: Option<ByteSize>,
    /// With `preset = "custom"`: the program and its arguments, with
    /// `{prompt}`, `{model}` and `{system}` replaced on every run.
    #[serde(default)]
    pub command: Vec<String>,
    /// With `preset = "custom"`: how stdout is read: `text` (every line is
    /// answer text, the default) or a preset's JSON lines (`claude`,
    /// `codex`, `gemini`).
    #[serde(default)]
    pub output_format: Option<String>,
}

/// A `cli` pool: a known preset; `command` (with `{prompt}`) exactly for
/// `custom`, `binary` and `output_format` only where they mean something;
/// accounts carry only a name, `sessions` only without accounts.
pub(crate) fn validate(
    pool: &mut PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    use super::{OUTPUT_FORMATS, PRESETS};
    let own: Settings = pool.settings(at)?;
    let Some(preset) = own.preset.as_deref() else {
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
        if own.command.is_empty() {
            return Err(invalid(
                at("command"),
                "the custom preset needs command, like [\"my-llm\", \"--ask\", \"{prompt}\"]",
            ));
        }
        if own.command[0].trim().is_empty() {
            return Err(invalid(at("command[0]"), "must name a program"));
        }
        if !own.command.iter().any(|a| a.contains("{prompt}")) {
            return Err(invalid(
                at("command"),
                "must contain {prompt}, where the prompt goes",
            ));
        }
        if own.binary.is_some() {
            return Err(invalid(
                at("binary"),
                "the custom preset names its program as the first element of command",
            ));
        }
        if let Some(f) = own.output_format.as_deref() {
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
        if !own.command.is_empty() {
            return Err(invalid(
                at("command"),
                format!("only the custom preset uses command; the {preset} preset builds its own"),
            ));
        }
        if own.output_format.is_some() {
            return Err(invalid(
                at("output_format"),
                format!("only the custom preset uses output_format; {preset} has its own"),
            ));
        }
    }
    if own
        .binary
        .as_ref()
        .is_some_and(|b| b.as_os_str().is_empty())
    {
        return Err(invalid(at("binary"), "must not be empty"));
    }
    if own.max_line.is_some_and(|m| m.0 < 1024) {
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
    for key in own.env.keys() {
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

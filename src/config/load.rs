use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use super::schema::{Config, Kind, Secret};

/// A configuration that cannot be used, with the dotted key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Loads `path`, applies `TROUPE__SECTION__KEY` overrides from the
/// environment, resolves secrets and validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_err = |message: String| ConfigError::Read {
        path: path.display().to_string(),
        message,
    };
    if !path.is_file() {
        return Err(read_err("no such file".into()));
    }
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("TROUPE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("server.api_keys")
                .with_list_parse_key("server.cors_origins")
                .with_list_parse_key("server.allowed_hosts"),
        )
        .build()
        .map_err(|e| read_err(e.to_string()))?;
    let mut raw: Value = built
        .try_deserialize()
        .map_err(|e| read_err(e.to_string()))?;
    expand_env(&mut raw, &mut String::new())?;
    from_value(raw)
}

/// Parses an already-merged value (also used by tests).
pub fn from_value(raw: Value) -> Result<Config, ConfigError> {
    let mut cfg: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // At the top level the path is `.`: name the unknown key instead.
        let key = match unknown_field(&inner) {
            Some(field) if path == "." => field.to_owned(),
            _ => path,
        };
        invalid(key, inner)
    })?;
    resolve_files(&mut cfg)?;
    validate(&cfg)?;
    Ok(cfg)
}

fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Replaces every string of the form `${NAME}` by that environment variable.
fn expand_env(v: &mut Value, path: &mut String) -> Result<(), ConfigError> {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                match std::env::var(name) {
                    Ok(val) => *s = val,
                    Err(_) => {
                        return Err(invalid(
                            path.clone(),
                            format!("environment variable {name} is not set"),
                        ))
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                expand_env(item, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn read_secret(file: &Path, key: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", file.display())))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(invalid(key, format!("{} is empty", file.display())));
    }
    Ok(Secret::new(value))
}

fn resolve_files(cfg: &mut Config) -> Result<(), ConfigError> {
    if let Some(file) = cfg.server.admin_key_file.clone() {
        if cfg.server.admin_key.is_some() {
            return Err(invalid(
                "server.admin_key_file",
                "give admin_key or admin_key_file, not both",
            ));
        }
        cfg.server.admin_key = Some(read_secret(&file, "server.admin_key_file")?);
    }
    for (p, pool) in cfg.pools.iter_mut().enumerate() {
        for (a, acct) in pool.accounts.iter_mut().enumerate() {
            if let Some(file) = acct.api_key_file.clone() {
                let key = format!("pools[{p}].accounts[{a}].api_key_file");
                if acct.api_key.is_some() {
                    return Err(invalid(key, "give api_key or api_key_file, not both"));
                }
                acct.api_key = Some(read_secret(&file, &key)?);
            }
        }
        if let Some(file) = pool.anon_key_file.clone() {
            let key = format!("pools[{p}].anon_key_file");
            if pool.anon_key.is_some() {
                return Err(invalid(key, "give anon_key or anon_key_file, not both"));
            }
            pool.anon_key = Some(read_secret(&file, &key)?);
        }
    }
    Ok(())
}

fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let Ok(listen) = cfg.server.listen.parse::<SocketAddr>() else {
        return Err(invalid(
            "server.listen",
            format!(
                "`{}` is not an address like 127.0.0.1:8317",
                cfg.server.listen
            ),
        ));
    };
    if cfg.server.api_keys.is_empty()
        && !listen.ip().is_loopback()
        && !cfg.server.allow_keyless_remote
    {
        return Err(invalid(
            "server.api_keys",
            format!(
                "empty while server.listen ({listen}) reaches beyond loopback: anyone who can \
                 reach it could use your upstream accounts. Set server.api_keys, listen on \
                 127.0.0.1, or set server.allow_keyless_remote = true to accept that"
            ),
        ));
    }
    if cfg.server.max_connections == 0 {
        return Err(invalid("server.max_connections", "must be at least 1"));
    }
    if cfg.supervisor.failed_retry.is_zero() {
        return Err(invalid("supervisor.failed_retry", "must be more than 0"));
    }
    if cfg.server.body_limit.0 == 0 {
        return Err(invalid("server.body_limit", "must be more than 0"));
    }
    if cfg.server.api_keys.iter().any(|k| k.expose().is_empty()) {
        return Err(invalid("server.api_keys", "keys must not be empty"));
    }
    let sup = &cfg.supervisor;
    if sup.backoff_multiplier < 1.0 || !sup.backoff_multiplier.is_finite() {
        return Err(invalid(
            "supervisor.backoff_multiplier",
            "must be at least 1.0",
        ));
    }
    if sup.max_restarts == 0 {
        return Err(invalid("supervisor.max_restarts", "must be at least 1"));
    }
    if cfg.pools.is_empty() {
        return Err(invalid("pools", "at least one pool is required"));
    }
    let mut names = HashSet::new();
    for (p, pool) in cfg.pools.iter().enumerate() {
        let at = |k: &str| format!("pools[{p}].{k}");
        if pool.name.trim().is_empty() {
            return Err(invalid(at("name"), "must not be empty"));
        }
        if !names.insert(pool.name.as_str()) {
            return Err(invalid(
                at("name"),
                format!("pool `{}` is defined twice", pool.name),
            ));
        }
        if pool.models.is_empty() {
            return Err(invalid(
                at("models"),
                "a pool must serve at least one model",
            ));
        }
        let mut public = HashSet::new();
        for m in &pool.models {
            if !public.insert(m.public.as_str()) {
                return Err(invalid(
                    at("models"),
                    format!("model `{}` is listed twice", m.public),
                ));
            }
        }
        if pool.max_concurrency == 0 {
            return Err(invalid(at("max_concurrency"), "must be at least 1"));
        }
        let eff = pool.supervisor.apply(sup);
        if eff.backoff_multiplier < 1.0 || !eff.backoff_multiplier.is_finite() {
            return Err(invalid(
                at("supervisor.backoff_multiplier"),
                "must be at least 1.0",
            ));
        }
        let mut accounts = HashSet::new();
        for (a, acct) in pool.accounts.iter().enumerate() {
            if acct.name.trim().is_empty() {
                return Err(invalid(
                    at(&format!("accounts[{a}].name")),
                    "must not be empty",
                ));
            }
            if !accounts.insert(acct.name.as_str()) {
                return Err(invalid(
                    at(&format!("accounts[{a}].name")),
                    format!("account `{}` is defined twice", acct.name),
                ));
            }
        }
        if pool.credential_ttl.is_some() && pool.kind != Kind::Demo {
            return Err(invalid(
                at("credential_ttl"),
                "only the demo kind uses credential_ttl",
            ));
        }
        if pool.chunk_delay.is_some() && pool.kind != Kind::Demo {
            return Err(invalid(
                at("chunk_delay"),
                "only the demo kind uses chunk_delay",
            ));
        }
        validate_kind_keys(pool, &at)?;
        validate_socketio_keys(pool, &at)?;
        validate_cli_keys(pool, &at)?;
        validate_lingma_keys(pool, &at)?;
        match pool.kind {
            Kind::Demo => {
                if pool.sessions == Some(0) {
                    return Err(invalid(at("sessions"), "must be at least 1"));
                }
            }
            Kind::Openai | Kind::Anthropic => {
                let kind = pool.kind.as_str();
                match &pool.base_url {
                    None => {
                        return Err(invalid(
                            at("base_url"),
                            format!("the {kind} kind needs base_url"),
                        ))
                    }
                    // Parsed as the sessions will parse it, so a URL they
                    // could not use is refused here, naming the key.
                    Some(u) if crate::upstream::http::client::api_uri(u, "").is_err() => {
                        return Err(invalid(
                            at("base_url"),
                            format!("`{u}` is not an http(s) URL"),
                        ))
                    }
                    // Anthropic's SDK convention: the gateway appends
                    // `/v1/messages`, so a `/v1` here would double it.
                    Some(u)
                        if pool.kind == Kind::Anthropic
                            && u.trim_end_matches('/').ends_with("/v1") =>
                    {
                        return Err(invalid(
                            at("base_url"),
                            format!(
                                "`{u}`: give the anthropic base_url without `/v1` (like https://api.anthropic.com); /v1/messages is appended"
                            ),
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
            }
            Kind::Ondemand => validate_ondemand(pool, &at)?,
            Kind::Langgraph => validate_langgraph(pool, &at)?,
            Kind::Socketio => validate_socketio(pool, &at)?,
            Kind::Cli => validate_cli(pool, &at)?,
            Kind::Lingma => validate_lingma(pool, &at)?,
        }
    }
    Ok(())
}

/// Keys only the `ondemand` or `langgraph` kind reads are refused
/// elsewhere, so a key in the wrong pool is noticed rather than ignored.
fn validate_kind_keys(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if pool.kind != Kind::Langgraph {
        if pool.assistant_id.is_some() {
            return Err(invalid(
                at("assistant_id"),
                "only the langgraph kind uses assistant_id",
            ));
        }
        if !pool.assistants.is_empty() {
            return Err(invalid(
                at("assistants"),
                "only the langgraph kind uses assistants",
            ));
        }
    }
    if pool.kind == Kind::Ondemand {
        return Ok(());
    }
    if !pool.endpoints.is_empty() {
        return Err(invalid(
            at("endpoints"),
            "only the ondemand kind uses endpoints",
        ));
    }
    if pool.response_mode.is_some() {
        return Err(invalid(
            at("response_mode"),
            "only the ondemand kind uses response_mode",
        ));
    }
    Ok(())
}

/// A `langgraph` pool: an http(s) base_url; accounts are optional (local
/// servers want no key) and their keys too; `sessions` only without
/// accounts; every `assistants` entry names a model the pool serves.
fn validate_langgraph(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
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
    if pool
        .assistant_id
        .as_deref()
        .is_some_and(|a| a.trim().is_empty())
    {
        return Err(invalid(at("assistant_id"), "must not be empty"));
    }
    for (model, assistant) in &pool.assistants {
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

/// An `ondemand` pool: keys per account, an http(s) base_url if given, and
/// an endpoint id for every model it serves, so an unmapped model fails at
/// `troupe check` instead of at a client's first request.
fn validate_ondemand(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
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
    for (model, id) in &pool.endpoints {
        if id.trim().is_empty() {
            return Err(invalid(
                at(&format!("endpoints.{model}")),
                "must not be empty",
            ));
        }
    }
    for (m, model) in pool.models.iter().enumerate() {
        if crate::upstream::ondemand::endpoint_id(&pool.endpoints, &model.upstream).is_none() {
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

/// Keys only the `cli` kind reads are refused elsewhere, naming the key.
fn validate_cli_keys(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if pool.kind == Kind::Cli {
        return Ok(());
    }
    let set = [
        ("binary", pool.binary.is_some()),
        ("extra_args", !pool.extra_args.is_empty()),
        ("cwd", pool.cwd.is_some()),
        ("env", !pool.env.is_empty()),
        ("max_line", pool.max_line.is_some()),
        ("command", !pool.command.is_empty()),
        ("output_format", pool.output_format.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, present)| *present) {
        return Err(invalid(at(key), format!("only the cli kind uses {key}")));
    }
    Ok(())
}

/// A `cli` pool: a known preset; `command` (with `{prompt}`) exactly for
/// `custom`, `binary` and `output_format` only where they mean something;
/// accounts carry only a name, `sessions` only without accounts.
fn validate_cli(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    use crate::upstream::cli::{OUTPUT_FORMATS, PRESETS};
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

/// Keys only the `socketio` kind reads are refused elsewhere, naming the key.
fn validate_socketio_keys(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if pool.kind == Kind::Socketio {
        return Ok(());
    }
    let set = [
        // The cli kind names its program with `preset` too.
        ("preset", pool.preset.is_some() && pool.kind != Kind::Cli),
        ("supabase_url", pool.supabase_url.is_some()),
        ("socket_url", pool.socket_url.is_some()),
        ("socket_path", pool.socket_path.is_some()),
        ("anon_key", pool.anon_key.is_some()),
        ("prompt_id", pool.prompt_id.is_some()),
        ("chunk_event", pool.chunk_event.is_some()),
        ("finish_event", pool.finish_event.is_some()),
        ("min_accounts", pool.min_accounts.is_some()),
        ("max_accounts", pool.max_accounts.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, present)| *present) {
        return Err(invalid(
            at(key),
            format!("only the socketio kind uses {key}"),
        ));
    }
    Ok(())
}

/// A `socketio` pool: anonymous accounts (no `accounts`, no `sessions`),
/// the backend's URLs, anon key and prompt id, and event names unless a
/// preset supplies them.
fn validate_socketio(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if let Some(preset) = &pool.preset {
        if !crate::upstream::socketio::PRESETS.contains(&preset.as_str()) {
            return Err(invalid(
                at("preset"),
                format!(
                    "unknown preset `{preset}` (known: {})",
                    crate::upstream::socketio::PRESETS.join(", ")
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

/// Keys only the `lingma` kind reads are refused elsewhere, naming the key.
fn validate_lingma_keys(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if pool.kind == Kind::Lingma {
        return Ok(());
    }
    let set = [
        ("agent_binary", pool.agent_binary.is_some()),
        ("agent_args", !pool.agent_args.is_empty()),
        ("agent_env", !pool.agent_env.is_empty()),
        ("work_dir", pool.work_dir.is_some()),
        ("info_file", pool.info_file.is_some()),
        ("ws_path", pool.ws_path.is_some()),
        ("startup_timeout", pool.startup_timeout.is_some()),
        ("session_type", pool.session_type.is_some()),
        ("agent_mode", pool.agent_mode.is_some()),
        ("session_bundle", pool.session_bundle.is_some()),
        ("session_bundle_file", pool.session_bundle_file.is_some()),
        ("agent_request_result", pool.agent_request_result.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, present)| *present) {
        return Err(invalid(at(key), format!("only the lingma kind uses {key}")));
    }
    Ok(())
}

/// A `lingma` pool: an agent program, numbered sessions (one agent
/// process each, no accounts), an info file inside the work directory, a
/// known session type, and at most one source of login state.
fn validate_lingma(
    pool: &super::schema::PoolConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
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
        if !crate::upstream::lingma::SESSION_TYPES.contains(&t.as_str()) {
            return Err(invalid(
                at("session_type"),
                format!(
                    "unknown session type `{t}` (known: {})",
                    crate::upstream::lingma::SESSION_TYPES.join(", ")
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
            crate::upstream::lingma::bundle::decode(b.expose())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo_pool() -> Value {
        json!({"name": "demo", "kind": "demo", "models": ["demo", "fast=demo"]})
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let cfg = from_value(json!({"pools": [demo_pool()]})).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:8317");
        assert_eq!(cfg.pools[0].models[1].public, "fast");
        assert_eq!(cfg.pools[0].models[1].upstream, "demo");
        assert_eq!(cfg.pools[0].max_concurrency, 8);
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let e = from_value(json!({"server": {"lisen": "x"}, "pools": [demo_pool()]})).unwrap_err();
        assert!(e.to_string().starts_with("server.lisen:"), "{e}");
        let mut pool = demo_pool();
        pool["acounts"] = json!([]);
        let e = from_value(json!({"pools": [pool]})).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].acounts:"), "{e}");
        let e = from_value(json!({"pool": []})).unwrap_err();
        assert!(e.to_string().starts_with("pool:"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let e = from_value(json!({"pools": [{"name": "o", "kind": "openai", "models": ["m"]}]}))
            .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].base_url:"), "{e}");
        let e = from_value(json!({"server": {"request_timeout": "soon"}, "pools": [demo_pool()]}))
            .unwrap_err();
        assert!(e.to_string().starts_with("server.request_timeout:"), "{e}");
        let e = from_value(json!({"pools": [demo_pool(), demo_pool()]})).unwrap_err();
        assert!(e.to_string().starts_with("pools[1].name:"), "{e}");
        // A base_url the sessions could not use is refused at load.
        for bad in [
            "ftp://h/v1",
            "http://",
            "https://bad host/v1",
            "https://ünï.example/v1",
        ] {
            let e = from_value(
                json!({"pools": [{"name": "o", "kind": "openai", "base_url": bad,
                "models": ["m"], "accounts": [{"name": "a", "api_key": "k"}]}]}),
            )
            .unwrap_err();
            assert!(
                e.to_string().starts_with("pools[0].base_url:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn anthropic_pools_validate_like_openai_ones() {
        let pool = |base: &str, accounts: Value| {
            json!({"pools": [{"name": "a", "kind": "anthropic", "base_url": base,
                "models": ["claude"], "accounts": accounts}]})
        };
        let key = json!([{"name": "k", "api_key": "sk-ant"}]);
        let cfg = from_value(pool("https://api.anthropic.com", key.clone())).unwrap();
        assert_eq!(cfg.pools[0].kind, Kind::Anthropic);
        assert_eq!(cfg.pools[0].kind.as_str(), "anthropic");
        let e = from_value(pool("https://api.anthropic.com/v1", key.clone())).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].base_url:"), "{e}");
        let e = from_value(pool("https://api.anthropic.com", json!([]))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].accounts:"), "{e}");
        let e = from_value(pool("https://api.anthropic.com", json!([{"name": "k"}]))).unwrap_err();
        assert!(
            e.to_string().starts_with("pools[0].accounts[0].api_key:"),
            "{e}"
        );
        let e = from_value(json!({"pools": [{"name": "a", "kind": "anthropic", "models": ["c"]}]}))
            .unwrap_err();
        assert!(
            e.to_string().contains("the anthropic kind needs base_url"),
            "{e}"
        );
    }

    #[test]
    fn env_placeholders_expand_and_missing_ones_are_named() {
        std::env::set_var("TROUPE_TEST_KEY_1", "sk-from-env");
        let mut v = json!({"pools": [{"name": "o", "kind": "openai", "base_url": "http://127.0.0.1:1/v1",
            "models": ["m"], "accounts": [{"name": "a", "api_key": "${TROUPE_TEST_KEY_1}"}]}]});
        expand_env(&mut v, &mut String::new()).unwrap();
        let cfg = from_value(v).unwrap();
        assert_eq!(
            cfg.pools[0].accounts[0].api_key.as_ref().unwrap().expose(),
            "sk-from-env"
        );
        let mut v = json!({"server": {"admin_key": "${TROUPE_TEST_SURELY_UNSET}"}});
        let e = expand_env(&mut v, &mut String::new()).unwrap_err();
        assert!(e.to_string().starts_with("server.admin_key:"), "{e}");
    }

    #[test]
    fn ondemand_pools_need_endpoint_ids_and_keep_their_keys() {
        let pool = |extra: Value| {
            let mut p = json!({"name": "od", "kind": "ondemand", "models": ["gpt-4o"],
                "accounts": [{"name": "k", "api_key": "x"}]});
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"pools": [p]})
        };
        let cfg = from_value(pool(json!({"response_mode": "sync"}))).unwrap();
        assert_eq!(cfg.pools[0].kind.as_str(), "ondemand");
        assert_eq!(
            cfg.pools[0].response_mode,
            Some(super::super::ResponseMode::Sync)
        );
        from_value(pool(json!({"models": ["predefined-xai-grok3"]}))).unwrap();
        from_value(pool(
            json!({"models": ["mine"], "endpoints": {"mine": "custom-1"}}),
        ))
        .unwrap();
        let e = from_value(pool(json!({"models": ["gpt-4o", "llama"]}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].models[1]:"), "{e}");
        let e = from_value(pool(json!({"accounts": [{"name": "k"}]}))).unwrap_err();
        assert!(
            e.to_string().starts_with("pools[0].accounts[0].api_key:"),
            "{e}"
        );
        let e = from_value(pool(json!({"response_mode": "later"}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].response_mode:"), "{e}");
        let e = from_value(
            json!({"pools": [{"name": "d", "kind": "demo", "models": ["demo"],
            "endpoints": {"demo": "predefined-x"}}]}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].endpoints:"), "{e}");
    }

    #[test]
    fn langgraph_pools_may_go_without_keys_and_check_their_assistants() {
        let pool = |extra: Value| {
            let mut p = json!({"name": "lg", "kind": "langgraph",
                "base_url": "http://127.0.0.1:2024", "models": ["agent-model"]});
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"pools": [p]})
        };
        let cfg = from_value(pool(json!({}))).unwrap();
        assert_eq!(cfg.pools[0].kind.as_str(), "langgraph");
        from_value(pool(json!({"accounts": [{"name": "local"}]}))).unwrap();
        from_value(pool(json!({"accounts": [{"name": "k", "api_key": "lsv2"}],
            "assistant_id": "researcher", "assistants": {"agent-model": "writer"}})))
        .unwrap();
        let e = from_value(pool(json!({"assistants": {"other": "writer"}}))).unwrap_err();
        assert!(
            e.to_string().starts_with("pools[0].assistants.other:"),
            "{e}"
        );
        let e = from_value(pool(json!({"base_url": null}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].base_url:"), "{e}");
        let e = from_value(pool(json!({"sessions": 2, "accounts": [{"name": "a"}]}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].sessions:"), "{e}");
        let e = from_value(pool(json!({"endpoints": {"agent-model": "x"}}))).unwrap_err();
        assert!(e.to_string().starts_with("pools[0].endpoints:"), "{e}");
        let e = from_value(
            json!({"pools": [{"name": "d", "kind": "demo", "models": ["demo"],
            "assistant_id": "agent"}]}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].assistant_id:"), "{e}");
    }

    #[test]
    fn lingma_pools_need_an_agent_and_name_their_keys() {
        let pool = |extra: Value| {
            let mut p = json!({"name": "lm", "kind": "lingma", "models": ["lingma"],
                "agent_binary": "/opt/lingma/bin/Lingma"});
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            json!({"pools": [p]})
        };
        let cfg = from_value(pool(json!({"sessions": 3, "session_type": "developer",
            "agent_args": ["--workDir", "{work_dir}"], "info_file": "run/.info",
            "session_bundle": "H4sIAAAAAAAAA2NgGAWjYBSMgtELAA=="})))
        .unwrap();
        assert_eq!(cfg.pools[0].kind.as_str(), "lingma");
        let bad = |extra: Value, key: &str| {
            let e = from_value(pool(extra)).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("pools[0].{key}:")),
                "{e}"
            );
        };
        bad(json!({"agent_binary": null}), "agent_binary");
        bad(json!({"session_type": "pair"}), "session_type");
        bad(json!({"info_file": "../.info"}), "info_file");
        bad(json!({"info_file": "/tmp/.info"}), "info_file");
        bad(json!({"sessions": 0}), "sessions");
        bad(json!({"accounts": [{"name": "a"}]}), "accounts");
        bad(json!({"session_bundle": "not base64!"}), "session_bundle");
        bad(
            json!({"session_bundle_file": "/surely/missing/bundle"}),
            "session_bundle_file",
        );
        bad(json!({"startup_timeout": "0s"}), "startup_timeout");
        let e = from_value(
            json!({"pools": [{"name": "d", "kind": "demo", "models": ["demo"],
            "agent_binary": "x"}]}),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("pools[0].agent_binary:"), "{e}");
    }
}

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::schema::{Config, PoolConfig, Secret};

/// A configuration that cannot be used, with the dotted key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// The checks of one pool's own keys: each upstream kind has its own, and
/// config knows no kind, so the caller passes them in (the upstream
/// registry's). A check may resolve what the kind's keys point at (a
/// secret in a file) into [`PoolConfig::own`].
pub type KindCheck = fn(&mut PoolConfig, &dyn Fn(&str) -> String) -> Result<(), ConfigError>;

/// An [`ConfigError::Invalid`] naming `key`.
pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Loads `path`, applies `TROUPE__SECTION__KEY` overrides from the
/// environment, resolves secrets and validates, each pool's own keys with
/// `check`.
pub fn load(path: &Path, check: KindCheck) -> Result<Config, ConfigError> {
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
    from_value(raw, check)
}

/// Parses an already-merged value (also used by tests).
pub fn from_value(mut raw: Value, check: KindCheck) -> Result<Config, ConfigError> {
    let own = split_pools(&mut raw);
    let mut cfg: Config =
        serde_path_to_error::deserialize(raw).map_err(|e| path_error(e, &|k| k.to_owned()))?;
    for (pool, own) in cfg.pools.iter_mut().zip(own) {
        pool.own = own;
    }
    resolve_files(&mut cfg)?;
    validate(&mut cfg, check)?;
    Ok(cfg)
}

/// Takes out of every `[[pools]]` table the keys that are not common to
/// all pools ([`PoolConfig::KEYS`]): they are the kind's own, read by the
/// kind into its own struct, which names any it does not know.
fn split_pools(raw: &mut Value) -> Vec<Value> {
    let Some(pools) = raw.get_mut("pools").and_then(Value::as_array_mut) else {
        return Vec::new();
    };
    pools
        .iter_mut()
        .map(|pool| {
            let Some(table) = pool.as_object_mut() else {
                return Value::Null;
            };
            let own_keys: Vec<String> = table
                .keys()
                .filter(|k| !PoolConfig::KEYS.contains(&k.as_str()))
                .cloned()
                .collect();
            let mut own = Map::new();
            for k in own_keys {
                if let Some(v) = table.remove(&k) {
                    own.insert(k, v);
                }
            }
            Value::Object(own)
        })
        .collect()
}

/// A deserialization error as a [`ConfigError`] naming the dotted key,
/// placed by `at`.
fn path_error(
    e: serde_path_to_error::Error<serde_json::Error>,
    at: &dyn Fn(&str) -> String,
) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    // At the top of a table the path is `.`: name the unknown key instead.
    let key = match unknown_field(&inner) {
        Some(field) if path == "." => field.to_owned(),
        _ => path,
    };
    invalid(at(&key), inner)
}

fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

impl PoolConfig {
    /// The keys every pool has, whatever its kind.
    pub(crate) const KEYS: [&'static str; 11] = [
        "name",
        "kind",
        "base_url",
        "models",
        "max_concurrency",
        "priority",
        "accounts",
        "sessions",
        "headers",
        "connect_timeout",
        "supervisor",
    ];

    /// The pool's own keys read into its kind's struct `T` (which denies
    /// unknown fields), errors naming the dotted key placed by `at`.
    pub fn settings<T: DeserializeOwned>(
        &self,
        at: &dyn Fn(&str) -> String,
    ) -> Result<T, ConfigError> {
        let empty = Value::Object(Map::new());
        let own = if self.own.is_null() {
            &empty
        } else {
            &self.own
        };
        serde_path_to_error::deserialize(own).map_err(|e| path_error(e, at))
    }

    /// Sets one of the pool's own keys (a kind resolving a `*_file`).
    pub fn set_own(&mut self, key: &str, value: Value) {
        if !self.own.is_object() {
            self.own = Value::Object(Map::new());
        }
        if let Some(table) = self.own.as_object_mut() {
            table.insert(key.to_owned(), value);
        }
    }
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

/// The trimmed content of a secret file; errors name `key`.
pub fn read_secret(file: &Path, key: &str) -> Result<Secret, ConfigError> {
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
    }
    Ok(())
}

/// Client keys: none empty, names unique, limits above zero.
fn validate_keys(keys: &[crate::config::ApiKey]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        let at = |field: &str| format!("server.api_keys[{i}]{field}");
        if k.key.expose().is_empty() {
            return Err(invalid(at(""), "keys must not be empty"));
        }
        if let Some(name) = &k.name {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(invalid(
                    at(".name"),
                    "1 to 64 of letters, digits, `-`, `_` and `.`",
                ));
            }
            if name.starts_with("key-") || !names.insert(name.clone()) {
                return Err(invalid(
                    at(".name"),
                    format!(
                        "`{name}` is taken (names are unique and `key-<n>` names unnamed keys)"
                    ),
                ));
            }
        }
        if k.rpm == Some(0) {
            return Err(invalid(
                at(".rpm"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if k.tpm == Some(0) {
            return Err(invalid(
                at(".tpm"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if k.max_concurrency == Some(0) {
            return Err(invalid(
                at(".max_concurrency"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
    Ok(())
}

fn validate(cfg: &mut Config, check: KindCheck) -> Result<(), ConfigError> {
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
    validate_keys(&cfg.server.api_keys)?;
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
    if let Some(url) = &cfg.cluster.redis_url {
        if let Err(e) = redis::Client::open(url.as_str()) {
            return Err(invalid(
                "cluster.redis_url",
                format!("not a Redis URL: {e}"),
            ));
        }
    }
    if cfg.cluster.timeout.is_zero() {
        return Err(invalid("cluster.timeout", "must be more than 0"));
    }
    if cfg.cluster.lease_ttl < std::time::Duration::from_secs(1) {
        return Err(invalid("cluster.lease_ttl", "must be at least 1s"));
    }
    if cfg.cluster.connect_timeout.is_zero() {
        return Err(invalid("cluster.connect_timeout", "must be more than 0"));
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
    }
    for (p, pool) in cfg.pools.iter_mut().enumerate() {
        check(pool, &|k: &str| format!("pools[{p}].{k}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Loads with no kind's own checks: those are the kinds' (tested with
    /// the registry).
    fn load_value(v: Value) -> Result<Config, ConfigError> {
        from_value(v, |_, _| Ok(()))
    }

    fn demo_pool() -> Value {
        json!({"name": "demo", "kind": "demo", "models": ["demo", "fast=demo"]})
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let cfg = load_value(json!({"pools": [demo_pool()]})).unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:8317");
        assert_eq!(cfg.pools[0].models[1].public, "fast");
        assert_eq!(cfg.pools[0].models[1].upstream, "demo");
        assert_eq!(cfg.pools[0].max_concurrency, 8);
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let e = load_value(json!({"server": {"lisen": "x"}, "pools": [demo_pool()]})).unwrap_err();
        assert!(e.to_string().starts_with("server.lisen:"), "{e}");
        // A pool's keys beyond the common ones are its kind's, to read and
        // refuse (tested with the registry).
        let mut pool = demo_pool();
        pool["acounts"] = json!([]);
        let cfg = load_value(json!({"pools": [pool]})).unwrap();
        assert_eq!(cfg.pools[0].own, json!({"acounts": []}));
        assert!(cfg.pools[0].accounts.is_empty());
        let e = load_value(json!({"pool": []})).unwrap_err();
        assert!(e.to_string().starts_with("pool:"), "{e}");
    }

    #[test]
    fn env_placeholders_expand_and_missing_ones_are_named() {
        std::env::set_var("TROUPE_TEST_KEY_1", "sk-from-env");
        let mut v = json!({"pools": [{"name": "o", "kind": "openai", "base_url": "http://127.0.0.1:1/v1",
            "models": ["m"], "accounts": [{"name": "a", "api_key": "${TROUPE_TEST_KEY_1}"}]}]});
        expand_env(&mut v, &mut String::new()).unwrap();
        let cfg = load_value(v).unwrap();
        assert_eq!(
            cfg.pools[0].accounts[0].api_key.as_ref().unwrap().expose(),
            "sk-from-env"
        );
        let mut v = json!({"server": {"admin_key": "${TROUPE_TEST_SURELY_UNSET}"}});
        let e = expand_env(&mut v, &mut String::new()).unwrap_err();
        assert!(e.to_string().starts_with("server.admin_key:"), "{e}");
    }
}

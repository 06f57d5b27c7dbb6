use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    #[serde(default)]
    pub responses: ResponsesConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several replicas sharing state through Redis. Without
/// `redis_url`, troupe is one process and shares nothing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub redis_url: Option<String>,
    /// This replica's name in the shared view; default: host name and pid.
    pub replica: Option<String>,
    /// Every key troupe writes in Redis starts with this.
    pub key_prefix: String,
    /// The longest a request waits on Redis before it goes on with this
    /// replica's own state.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest a (re)connection attempt takes.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a replica's hold on an account's concurrency outlives the
    /// replica (renewed while it runs): a replica killed with requests in
    /// flight leaves their slots taken for at most this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            replica: None,
            key_prefix: "troupe:".into(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// `[responses]`: the Responses API's stored responses (`store`, the
/// default, keeps each response and its input so `previous_response_id`
/// can continue it). Kept in memory, bounded three ways; the oldest go
/// first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// Most responses kept (0: none are stored).
    pub store_max_responses: usize,
    /// Most bytes kept, counting each response's JSON and its input's.
    pub store_max_bytes: ByteSize,
    /// How long a response is kept.
    #[serde(with = "humantime_serde")]
    pub store_ttl: Duration,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            store_max_responses: 10_000,
            store_max_bytes: ByteSize(64 * 1024 * 1024),
            store_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[server]`: the listener and request limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Keys clients must present; empty means no auth. Each is a plain
    /// string or a table with a name and limits ([`ApiKey`]).
    pub api_keys: Vec<ApiKey>,
    pub admin_key: Option<Secret>,
    pub admin_key_file: Option<PathBuf>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <metrics_key>`.
    pub metrics_key: Option<Secret>,
    pub data_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub first_token_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    pub max_queue: usize,
    pub body_limit: ByteSize,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// `pretty` or `json` log lines.
    pub log_format: LogFormat,
    /// The restart log rotates past this size...
    pub restart_log_max_bytes: ByteSize,
    /// ...keeping this many rotated files.
    pub restart_log_files: usize,
    /// The whole request body must arrive within this, after the headers.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A kept-alive connection with no request is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open client connections beyond this get a 503 and are closed.
    pub max_connections: usize,
    /// Browser origins allowed cross-origin access. Keyless: only these
    /// (others are refused). With keys: empty means any origin.
    pub cors_origins: Vec<String>,
    /// Keyless only: dotted host names accepted in `Host`, besides IP
    /// literals, `localhost` and names without a dot (against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Keyless and listening beyond loopback is refused unless this is set.
    pub allow_keyless_remote: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8317".into(),
            api_keys: Vec::new(),
            admin_key: None,
            admin_key_file: None,
            metrics_key: None,
            data_dir: PathBuf::from("data"),
            request_timeout: Duration::from_secs(300),
            first_token_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(15),
            queue_timeout: Duration::from_secs(30),
            max_queue: 1024,
            body_limit: ByteSize(32 * 1024 * 1024),
            drain_timeout: Duration::from_secs(30),
            workers: 0,
            log_format: LogFormat::Pretty,
            restart_log_max_bytes: ByteSize(10 * 1024 * 1024),
            restart_log_files: 5,
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_keyless_remote: false,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[supervisor]`: restart and retry policy, defaults for every pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub backoff_multiplier: f64,
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    pub retry_budget: u32,
    #[serde(with = "humantime_serde")]
    pub cooldown_max: Duration,
    /// First cool-down of an open circuit; doubles while trials fail.
    #[serde(with = "humantime_serde")]
    pub cooldown_initial: Duration,
    /// Consecutive upstream failures (5xx, broken streams) that open the circuit.
    pub circuit_threshold: u32,
    /// A `failed` session is tried again after this; the wait doubles with
    /// each failed try, up to `failed_retry_max`.
    #[serde(with = "humantime_serde")]
    pub failed_retry: Duration,
    #[serde(with = "humantime_serde")]
    pub failed_retry_max: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            retry_budget: 2,
            cooldown_max: Duration::from_secs(300),
            cooldown_initial: Duration::from_secs(5),
            circuit_threshold: 3,
            failed_retry: Duration::from_secs(300),
            failed_retry_max: Duration::from_secs(3600),
        }
    }
}

/// Per-pool overrides of `[supervisor]`; unset fields inherit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorOverrides {
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    pub backoff_multiplier: Option<f64>,
    pub max_restarts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub restart_window: Option<Duration>,
    pub retry_budget: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub cooldown_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub cooldown_initial: Option<Duration>,
    pub circuit_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub failed_retry: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub failed_retry_max: Option<Duration>,
}

impl SupervisorOverrides {
    /// The effective policy of a pool.
    pub fn apply(&self, base: &SupervisorConfig) -> SupervisorConfig {
        SupervisorConfig {
            backoff_initial: self.backoff_initial.unwrap_or(base.backoff_initial),
            backoff_max: self.backoff_max.unwrap_or(base.backoff_max),
            backoff_multiplier: self.backoff_multiplier.unwrap_or(base.backoff_multiplier),
            max_restarts: self.max_restarts.unwrap_or(base.max_restarts),
            restart_window: self.restart_window.unwrap_or(base.restart_window),
            retry_budget: self.retry_budget.unwrap_or(base.retry_budget),
            cooldown_max: self.cooldown_max.unwrap_or(base.cooldown_max),
            cooldown_initial: self.cooldown_initial.unwrap_or(base.cooldown_initial),
            circuit_threshold: self.circuit_threshold.unwrap_or(base.circuit_threshold),
            failed_retry: self.failed_retry.unwrap_or(base.failed_retry),
            failed_retry_max: self.failed_retry_max.unwrap_or(base.failed_retry_max),
        }
    }
}

/// `[[pools]]`: accounts of one upstream kind serving a set of models.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// The upstream kind, a name the upstream registry knows.
    pub kind: String,
    #[serde(default)]
    pub base_url: Option<String>,
    /// `"name"` or `"public=upstream"`.
    pub models: Vec<ModelMapping>,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// Lower is tried first when several pools serve a model.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Sessions of a pool without accounts (`demo`, `cli`, `langgraph`,
    /// `lingma`).
    #[serde(default)]
    pub sessions: Option<u32>,
    /// Extra HTTP headers sent upstream on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Connect timeout of HTTP upstreams.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default)]
    pub supervisor: SupervisorOverrides,
    /// The kind's own keys (every key above is common to all pools): the
    /// kind reads them into its own struct with [`PoolConfig::settings`].
    /// Filled by the loader, which splits each `[[pools]]` table.
    #[serde(skip)]
    pub own: serde_json::Value,
}

fn default_concurrency() -> u32 {
    8
}

/// One upstream account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
}

/// A model a pool serves: the public name clients use and the name sent
/// upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMapping {
    pub public: String,
    pub upstream: String,
}

impl<'de> Deserialize<'de> for ModelMapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (public, upstream) = match s.split_once('=') {
            Some((p, u)) => (p.trim(), u.trim()),
            None => (s.trim(), s.trim()),
        };
        if public.is_empty() || upstream.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "model `{s}` must be `name` or `public=upstream`"
            )));
        }
        Ok(ModelMapping {
            public: public.to_owned(),
            upstream: upstream.to_owned(),
        })
    }
}

/// A client key of `server.api_keys`: a plain string, or a table that
/// names it and limits what it may use (across the cluster, with one).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub key: Secret,
    /// Shown in `/metrics` and the admin API; `key-<n>` (1-based) if absent.
    pub name: Option<String>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt and answer) per minute.
    pub tpm: Option<u64>,
    /// Requests running at once.
    pub max_concurrency: Option<u32>,
    /// The public model names it may use; absent: all of them.
    pub models: Option<Vec<String>>,
}

impl ApiKey {
    pub fn plain(key: impl Into<String>) -> Self {
        ApiKey {
            key: Secret::new(key),
            name: None,
            rpm: None,
            tpm: None,
            max_concurrency: None,
            models: None,
        }
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            key: Secret,
            name: Option<String>,
            rpm: Option<u32>,
            tpm: Option<u64>,
            max_concurrency: Option<u32>,
            models: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plain(Secret),
            Table(Table),
        }
        match Either::deserialize(d) {
            Ok(Either::Plain(key)) => Ok(ApiKey {
                key,
                ..ApiKey::plain("")
            }),
            Ok(Either::Table(t)) => Ok(ApiKey {
                key: t.key,
                name: t.name,
                rpm: t.rpm,
                tpm: t.tpm,
                max_concurrency: t.max_concurrency,
                models: t.models,
            }),
            Err(_) => Err(serde::de::Error::custom(
                "each key is a string, or a table with `key` and optionally `name`, `rpm`, \
                 `tpm`, `max_concurrency`, `models`",
            )),
        }
    }
}

/// A secret value: never printed, never logged.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A size in bytes written `32MiB`, `512KiB`, `1MB` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 32MiB"))?;
        let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1024,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("32MiB").unwrap().0, 32 * 1024 * 1024);
        assert_eq!(ByteSize::parse("1KiB").unwrap().0, 1024);
        assert_eq!(ByteSize::parse("2000").unwrap().0, 2000);
        assert!(ByteSize::parse("12 parsecs").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("sk-123")), "Secret(***)");
    }
}

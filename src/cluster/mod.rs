//! Several replicas, one pool: the state replicas share through Redis
//! (`[cluster]`). Without `redis_url` there is no [`Cluster`] and troupe is
//! the single process it always was.
//!
//! Redis is a help, never a dependency of a request: every operation runs
//! within `cluster.timeout`, and one that fails or is late makes the caller
//! go on with this replica's own state (and counts a fallback). A task
//! pings Redis every second; the first failure is logged once as a
//! warning, the return as an info line, and `troupe_cluster_redis_up`
//! follows. The connection manager reconnects by itself, with backoff.
//!
//! Shared so far:
//! - stored responses (`previous_response_id` created on one replica
//!   continues on another), see [`crate::store`];
//! - concurrency: an account's `max_concurrency` holds across replicas
//!   ([`Cluster::lease`]). Each account has a sorted set of holds scored by
//!   their expiry (Redis's own clock, so replicas' clocks do not matter);
//!   a script drops the expired ones and adds a hold if there is room, in
//!   one round trip. A replica renews its holds every third of `lease_ttl`,
//!   so a replica that dies (even by SIGKILL) leaves them for at most that;
//! - client keys' limits (`rpm`, `tpm`, `max_concurrency`), checked in the
//!   same script as the account's hold, on a request's first try, with
//!   the answer's tokens charged when the hold is given back;
//! - conversations of stateful kinds: which account (and which upstream
//!   thread or session, where that means anything from another machine)
//!   holds a conversation, so its next turn continues there from any
//!   replica ([`Cluster::remember_conversation`]);
//! - cool-downs: a model an upstream rate-limited on an account (a 429 with
//!   `Retry-After`) is published on a channel; every replica's Router
//!   withdraws it at once ([`Cluster::publish_cooldown`],
//!   [`Cluster::on_cooldown`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ClusterConfig;
use crate::limits::{Client, Limit, Refusal};
use crate::support::sync::lock;

/// Takes a hold on an account if it has room and, on a request's first
/// try, lets its client key in under its limits, in one round trip.
/// KEYS[1] the account's holds; with a client part, KEYS[2..4] the key's
/// request TAT, token TAT and holds (see [`crate::limits`]). ARGV: max,
/// ttl (ms), the hold's name, then rpm, tpm, max_concurrency (0: none).
/// Answers `{code, wait ms}`: -1 taken, 0 account full, 1 rpm, 2 tpm,
/// 3 the key's concurrency. Nothing is written unless all of it fits.
const ENTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return {0, 0}
end
if #KEYS > 1 then
  local rpm, tpm, cmax = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  if cmax > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
    if redis.call('ZCARD', KEYS[4]) >= cmax then
      return {3, 1000}
    end
  end
  if tpm > 0 then
    local owed = tonumber(redis.call('GET', KEYS[3]) or now)
    if owed - now > 60000 then
      return {2, math.ceil(owed - now - 60000)}
    end
  end
  if rpm > 0 then
    local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or now), now) + 60000 / rpm
    if tat - now > 60000 then
      return {1, math.ceil(tat - now - 60000)}
    end
    redis.call('SET', KEYS[2], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  end
  if cmax > 0 then
    redis.call('ZADD', KEYS[4], now + ttl, ARGV[3])
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return {-1, 0}
";

/// Gives a hold back and charges a client key's tokens: KEYS the holds,
/// then (a client key's) the token TAT; ARGV the hold's name, then the
/// tokens and the key's tpm.
const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
if #KEYS > 1 then
  local n, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
  if n > 0 and tpm > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
    local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or now), now) + n * 60000 / tpm
    redis.call('SET', KEYS[2], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  end
end
return 0
";

/// Renews holds: KEYS the accounts' sets, ARGV[1] the ttl (ms), then the
/// holds' names in the order of KEYS. A hold that already expired is not
/// brought back.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', k, ttl)
end
return 0
";

/// A model cooling down on an account, as replicas tell each other.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Cooldown {
    /// The replica that saw it.
    pub replica: String,
    pub pool: String,
    pub account: String,
    /// The model name sent upstream.
    pub model: String,
    /// For how long, from when it is read.
    pub wait_ms: u64,
    /// The whole account is out (an open circuit, refused credentials, a
    /// session that gave up), not one model: `model` is empty. A wait of 0
    /// lifts it (the account's trial request passed).
    #[serde(default)]
    pub circuit: bool,
}

/// Which account and upstream conversation hold a conversation, as the
/// replica that ran its last turn wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Conversation {
    pub pool: String,
    pub account: String,
    pub replica: String,
    /// The upstream handle (thread, session id), if the kind has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Whether the handle means anything on another machine.
    #[serde(default)]
    pub portable: bool,
}

/// An account's login state as the replica that last logged in or
/// refreshed wrote it; `gen` counts those, so a replica takes only newer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SharedCredentials {
    pub gen: u64,
    pub value: serde_json::Value,
}

/// How long an account's login lock lives if its holder dies mid-login.
const LOGIN_LOCK_MS: u64 = 30_000;
/// How long shared login state is kept after its last write.
const CREDENTIALS_TTL_SECS: u64 = 7 * 24 * 3600;

/// Gives a login lock back only if it is still this holder's.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The cluster's restart stream keeps about this many events.
const RESTART_STREAM_MAX: usize = 10_000;

/// How long a conversation's record outlives its last turn (as sessions
/// remember their own).
const CONVERSATION_TTL_SECS: u64 = 3600;

/// What [`Cluster::enter`] found.
#[derive(Debug)]
pub(crate) enum Grant {
    /// Held across the cluster until the [`Held`] is dropped, with the
    /// client key's part when it was asked for and the key is limited.
    Held(Held, Option<ClientHeld>),
    /// The account runs its `max_concurrency` on the replicas together.
    Full,
    /// The client key is over one of its limits, across the cluster.
    Limited(Refusal),
    /// Redis did not answer in time: go on with this replica's own count.
    Local,
}

/// One request's hold on an account's concurrency; dropping it gives the
/// slot back to the cluster.
#[derive(Debug)]
pub(crate) struct Held {
    cluster: Arc<Cluster>,
    key: String,
    member: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (key, member) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        self.cluster.forget(&member, &key);
        self.cluster.clone().leave(key, member, None);
    }
}

/// A request's place under its client key's limits, taken by its first
/// try and kept for the whole request (a retry on another account keeps
/// it); dropping it frees the key's concurrency slot and charges the
/// answer's tokens.
#[derive(Debug)]
pub(crate) struct ClientHeld {
    cluster: Arc<Cluster>,
    holds: String,
    tokens_key: String,
    member: String,
    tpm: u64,
    tokens: u64,
}

impl ClientHeld {
    /// The answer's tokens, charged to the key when dropped.
    pub(crate) fn charge(&mut self, tokens: u64) {
        self.tokens = tokens;
    }
}

impl Drop for ClientHeld {
    fn drop(&mut self) {
        let (holds, member) = (
            std::mem::take(&mut self.holds),
            std::mem::take(&mut self.member),
        );
        self.cluster.forget(&member, &holds);
        let charge = (std::mem::take(&mut self.tokens_key), self.tokens, self.tpm);
        self.cluster.clone().leave(holds, member, Some(charge));
    }
}

/// How often Redis is pinged to tell whether it is up.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// This replica's link to the cluster's Redis.
pub(crate) struct Cluster {
    replica: String,
    prefix: String,
    timeout: Duration,
    conn: ConnectionManager,
    up: AtomicBool,
    lease_ttl: Duration,
    enter: redis::Script,
    leave: redis::Script,
    renew: redis::Script,
    /// This replica's holds: name → the keys of the sets holding it
    /// (the account's, and its client key's if limited), for renewal.
    held: Mutex<HashMap<String, Vec<String>>>,
    next_hold: AtomicU64,
    client: redis::Client,
    /// Notified when Redis comes back after being away.
    back: tokio::sync::Notify,
    /// True once the first health check is over (either way).
    checked: AtomicBool,
    first_check: tokio::sync::Notify,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("replica", &self.replica)
            .field("up", &self.is_up())
            .finish()
    }
}

/// The replica name when none is configured: host name and pid.
fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "troupe".into());
    format!("{host}-{}", std::process::id())
}

impl Cluster {
    /// The link described by `cfg`, or `None` for a single process. Its
    /// health check starts on the current runtime; nothing here waits for
    /// Redis (a replica starts and serves while Redis is down).
    pub(crate) fn start(cfg: &ClusterConfig) -> Option<Arc<Cluster>> {
        let url = cfg.redis_url.as_deref()?;
        let client = match redis::Client::open(url) {
            Ok(c) => c,
            Err(e) => {
                // Validated with the configuration; kept as a log line.
                tracing::error!(error = %e, "cluster.redis_url unusable: running as one process");
                return None;
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_max_delay(Duration::from_secs(5))
            .set_number_of_retries(1);
        let conn = match ConnectionManager::new_lazy_with_config(client.clone(), config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cluster: no Redis connection manager: running as one process");
                return None;
            }
        };
        let cluster = Arc::new(Cluster {
            replica: cfg.replica.clone().unwrap_or_else(default_replica),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            conn,
            // Down until the first ping answers.
            up: AtomicBool::new(false),
            lease_ttl: cfg.lease_ttl,
            enter: redis::Script::new(ENTER),
            leave: redis::Script::new(LEAVE),
            renew: redis::Script::new(RENEW),
            held: Mutex::new(HashMap::new()),
            next_hold: AtomicU64::new(0),
            client,
            back: tokio::sync::Notify::new(),
            checked: AtomicBool::new(false),
            first_check: tokio::sync::Notify::new(),
        });
        tracing::info!(replica = %cluster.replica, "cluster: sharing state through Redis");
        tokio::spawn(every(Arc::downgrade(&cluster), HEALTH_EVERY, health));
        tokio::spawn(every(Arc::downgrade(&cluster), cfg.lease_ttl / 3, renew));
        Some(cluster)
    }

    fn cooldown_channel(&self) -> String {
        self.key(&["cooldowns"])
    }

    /// Tells the other replicas that `model` cools down on an account
    /// (`model` `None`: the whole account is out, see [`Cooldown::circuit`]).
    pub(crate) fn publish_cooldown(
        self: &Arc<Self>,
        pool: &str,
        account: &str,
        model: Option<&str>,
        wait: Duration,
    ) {
        let msg = Cooldown {
            replica: self.replica.clone(),
            pool: pool.to_owned(),
            account: account.to_owned(),
            model: model.unwrap_or_default().to_owned(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            circuit: model.is_none(),
        };
        let Ok(payload) = serde_json::to_string(&msg) else {
            return;
        };
        let (cluster, channel) = (self.clone(), self.cooldown_channel());
        tokio::spawn(async move {
            cluster
                .run("publish a cool-down", |mut conn| async move {
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(&payload)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await
        });
    }

    /// Calls `apply` with every cool-down another replica publishes, from
    /// a task that resubscribes (with backoff) whenever Redis goes away.
    pub(crate) fn on_cooldown(self: &Arc<Self>, apply: impl Fn(Cooldown) + Send + 'static) {
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut pause = Duration::from_millis(100);
            loop {
                let Some(c) = cluster.upgrade() else {
                    return;
                };
                let (client, channel, me) =
                    (c.client.clone(), c.cooldown_channel(), c.replica.clone());
                drop(c);
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    redis::RedisResult::Ok(pubsub)
                };
                match subscribed.await {
                    Ok(pubsub) => {
                        pause = Duration::from_millis(100);
                        let mut messages = pubsub.into_on_message();
                        while let Some(m) = messages.next().await {
                            match serde_json::from_slice::<Cooldown>(m.get_payload_bytes()) {
                                Ok(cd) if cd.replica != me => apply(cd),
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "cluster: unreadable cool-down message")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster: cool-down channel unavailable"),
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// A hold on one of `max` concurrent requests of account `account` of
    /// pool `pool`, across the cluster; with `client` (a request's first
    /// try), also its key's limits, checked in the same round trip.
    pub(crate) async fn enter(
        self: &Arc<Self>,
        pool: &str,
        account: &str,
        max: u32,
        client: Option<&Client>,
    ) -> Grant {
        let key = self.key(&["conc", pool, account]);
        let n = self.next_hold.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{n}", self.replica);
        let mut call = self.enter.key(&key);
        call.arg(max).arg(self.ttl_ms()).arg(&member);
        let client = client.filter(|c| c.limited());
        if let Some(c) = client {
            call.key(self.key(&["client", &c.name, "rate"]))
                .key(self.key(&["client", &c.name, "tokens"]))
                .key(self.key(&["client", &c.name, "conc"]))
                .arg(c.rpm.unwrap_or(0))
                .arg(c.tpm.unwrap_or(0))
                .arg(c.max_concurrency.unwrap_or(0));
        }
        let answer = self
            .run("take a concurrency hold", |mut conn| async move {
                call.invoke_async::<(i64, u64)>(&mut conn).await
            })
            .await;
        let Some((code, wait_ms)) = answer else {
            return Grant::Local;
        };
        let refused = |c: &Client, limit| {
            Grant::Limited(Refusal {
                client: c.name.clone(),
                limit,
                retry_after: Duration::from_millis(wait_ms.max(1)),
            })
        };
        match (code, client) {
            (-1, _) => {
                let client = client.map(|c| {
                    let holds = self.key(&["client", &c.name, "conc"]);
                    if c.max_concurrency.is_some() {
                        self.remember(&member, &holds);
                    }
                    ClientHeld {
                        cluster: self.clone(),
                        holds,
                        tokens_key: self.key(&["client", &c.name, "tokens"]),
                        member: member.clone(),
                        tpm: c.tpm.unwrap_or(0),
                        tokens: 0,
                    }
                });
                self.remember(&member, &key);
                Grant::Held(
                    Held {
                        cluster: self.clone(),
                        key,
                        member,
                    },
                    client,
                )
            }
            (1, Some(c)) => refused(c, Limit::Requests(c.rpm.unwrap_or(0))),
            (2, Some(c)) => refused(c, Limit::Tokens(c.tpm.unwrap_or(0))),
            (3, Some(c)) => refused(c, Limit::Concurrency(c.max_concurrency.unwrap_or(0))),
            _ => Grant::Full,
        }
    }

    fn conversation_key(&self, key: u64) -> String {
        self.key(&["conv", &format!("{key:016x}")])
    }

    /// Records that conversation `key` (already scoped by the client's API
    /// key) continues on this account with this upstream handle.
    pub(crate) async fn remember_conversation(
        &self,
        key: u64,
        pool: &str,
        account: &str,
        handle: Option<String>,
        portable: bool,
    ) {
        let record = Conversation {
            pool: pool.to_owned(),
            account: account.to_owned(),
            replica: self.replica.clone(),
            handle,
            portable,
        };
        let Ok(value) = serde_json::to_string(&record) else {
            return;
        };
        let key = self.conversation_key(key);
        self.run("record a conversation", |mut conn| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("EX")
                .arg(CONVERSATION_TTL_SECS)
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
    }

    /// The record of conversation `key`, if a replica wrote one (and Redis
    /// answered in time).
    pub(crate) async fn conversation(&self, key: u64) -> Option<Conversation> {
        let key = self.conversation_key(key);
        let raw = self
            .run("look a conversation up", |mut conn| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await??;
        serde_json::from_slice(&raw).ok()
    }

    /// Publishes this replica's sessions (a JSON array), to expire unless
    /// published again within `ttl`, and lists the replica by name.
    pub(crate) async fn publish_sessions(&self, sessions: String, ttl: Duration) {
        let key = self.key(&["sessions", &self.replica]);
        let (replicas, me) = (self.key(&["replicas"]), self.replica.clone());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.run("publish this replica's sessions", |mut conn| async move {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&sessions)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("SADD")
                .arg(&replicas)
                .arg(&me)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
    }

    /// Every live replica's published sessions, by replica name (this
    /// one's too); `None` when Redis does not answer. Replicas whose
    /// sessions expired (gone for longer than the heartbeat's ttl) are
    /// dropped from the list.
    pub(crate) async fn all_sessions(&self) -> Option<Vec<(String, serde_json::Value)>> {
        let replicas_key = self.key(&["replicas"]);
        let names: Vec<String> = self
            .run("list replicas", |mut conn| {
                let k = replicas_key.clone();
                async move { redis::cmd("SMEMBERS").arg(&k).query_async(&mut conn).await }
            })
            .await?;
        if names.is_empty() {
            return Some(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.key(&["sessions", n])).collect();
        let values: Vec<Option<Vec<u8>>> = self
            .run("read replicas' sessions", |mut conn| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
            })
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (name, value) in names.into_iter().zip(values) {
            match value.and_then(|v| serde_json::from_slice(&v).ok()) {
                Some(list) => out.push((name, list)),
                None => gone.push(name),
            }
        }
        if !gone.is_empty() {
            self.run("forget gone replicas", |mut conn| async move {
                redis::cmd("SREM")
                    .arg(&replicas_key)
                    .arg(&gone)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }

    /// Adds a restart-log event (a JSON object) to the cluster's capped
    /// stream, off the caller's path.
    pub(crate) fn publish_restart(self: &Arc<Self>, event: String) {
        let (cluster, key) = (self.clone(), self.key(&["restarts"]));
        tokio::spawn(async move {
            cluster
                .run("add to the restart stream", |mut conn| async move {
                    redis::cmd("XADD")
                        .arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(RESTART_STREAM_MAX)
                        .arg("*")
                        .arg("event")
                        .arg(&event)
                        .query_async::<String>(&mut conn)
                        .await
                })
                .await
        });
    }

    /// The newest `count` events of every replica's restart log, oldest
    /// first; `None` when Redis does not answer.
    pub(crate) async fn restarts(&self, count: usize) -> Option<Vec<serde_json::Value>> {
        let key = self.key(&["restarts"]);
        let entries: redis::streams::StreamRangeReply = self
            .run("read the restart stream", |mut conn| async move {
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut events: Vec<serde_json::Value> = entries
            .ids
            .iter()
            .filter_map(|e| e.get::<Vec<u8>>("event"))
            .filter_map(|raw| serde_json::from_slice(&raw).ok())
            .collect();
        events.reverse();
        Some(events)
    }

    /// The account's shared login state: `None` when Redis does not
    /// answer, `Some(None)` when no replica wrote any.
    pub(crate) async fn credentials(
        &self,
        pool: &str,
        account: &str,
    ) -> Option<Option<SharedCredentials>> {
        let key = self.key(&["creds", pool, account]);
        let raw = self
            .run("read shared credentials", |mut conn| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await?;
        Some(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }

    pub(crate) async fn store_credentials(
        &self,
        pool: &str,
        account: &str,
        shared: &SharedCredentials,
    ) {
        let key = self.key(&["creds", pool, account]);
        let Ok(value) = serde_json::to_vec(shared) else {
            return;
        };
        self.run("write shared credentials", |mut conn| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("EX")
                .arg(CREDENTIALS_TTL_SECS)
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
    }

    /// Takes the account's login lock: `None` when Redis does not answer,
    /// `Some(None)` while another replica holds it, else the lock's token.
    pub(crate) async fn lock_login(&self, pool: &str, account: &str) -> Option<Option<String>> {
        let key = self.key(&["login", pool, account]);
        let n = self.next_hold.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}:{n}", self.replica);
        let taken = self
            .run("take a login lock", |mut conn| {
                let token = token.clone();
                async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOGIN_LOCK_MS)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                }
            })
            .await?;
        Some(taken.map(|_| token))
    }

    pub(crate) async fn unlock_login(&self, pool: &str, account: &str, token: &str) {
        let key = self.key(&["login", pool, account]);
        let script = redis::Script::new(UNLOCK);
        self.run("give a login lock back", |mut conn| async move {
            script
                .key(&key)
                .arg(token)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await;
    }

    /// Keeps `member` of set `key` renewed while it is held.
    fn remember(&self, member: &str, key: &str) {
        lock(&self.held)
            .entry(member.to_owned())
            .or_default()
            .push(key.to_owned());
    }

    /// Stops renewing `member` of set `key`.
    fn forget(&self, member: &str, key: &str) {
        let mut held = lock(&self.held);
        if let Some(keys) = held.get_mut(member) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                held.remove(member);
            }
        }
    }

    /// Gives `member` of set `key` back, off the request's path, and
    /// charges a client key's tokens (`charge`: its token TAT, the tokens
    /// and its tpm).
    fn leave(self: Arc<Self>, key: String, member: String, charge: Option<(String, u64, u64)>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut call = self.leave.key(&key);
            call.arg(&member);
            if let Some((tokens_key, tokens, tpm)) = &charge {
                call.key(tokens_key).arg(tokens).arg(tpm);
            }
            self.run("give a hold back", |mut conn| async move {
                call.invoke_async::<()>(&mut conn).await
            })
            .await
        });
    }

    /// Resolves once the first health check has told whether Redis is up
    /// (at most a second or so after start): what a replica does once at
    /// start (logging its accounts in) is worth doing with the cluster.
    pub(crate) async fn started(&self) {
        let first = self.first_check.notified();
        if self.checked.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), first).await;
    }

    /// Resolves when Redis answers again after being away (or first
    /// answers): what this replica knows is then worth telling again.
    pub(crate) async fn returned(&self) {
        self.back.notified().await;
    }

    pub(crate) fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether Redis answered the last health check or operation.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A key in troupe's part of Redis: the prefix, then `parts` joined by `:`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = String::with_capacity(
            self.prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        k.push_str(&self.prefix);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    fn set_up(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(replica = %self.replica, "cluster: Redis is back; sharing state again");
                self.back.notify_one();
            } else {
                tracing::warn!(replica = %self.replica, why, "cluster: Redis unreachable; each replica uses its own state until it returns");
            }
        }
        if let Some(m) = crate::metrics::get() {
            m.cluster_up.set(i64::from(up));
        }
    }

    /// Runs `op` on the connection within the timeout. `None` (and a
    /// counted fallback) when Redis is down, slow or refuses: the caller
    /// goes on with its own state.
    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            fallback();
            return None;
        }
        match tokio::time::timeout(self.timeout, op(self.conn.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                fallback();
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.set_up(false, &e.to_string());
                } else {
                    tracing::warn!(what, error = %e, "cluster: Redis refused an operation");
                }
                None
            }
            Err(_) => {
                fallback();
                tracing::debug!(what, "cluster: Redis answered late; used local state");
                None
            }
        }
    }
}

fn fallback() {
    if let Some(m) = crate::metrics::get() {
        m.cluster_fallbacks.inc();
    }
}

/// Runs `f` on the cluster every `period` while the cluster link lives
/// (the first run at once).
async fn every<F, Fut>(cluster: std::sync::Weak<Cluster>, period: Duration, f: F)
where
    F: Fn(Arc<Cluster>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else {
            return;
        };
        f(c).await;
    }
}

/// Renews this replica's holds (every third of their ttl).
async fn renew(c: Arc<Cluster>) {
    let holds: Vec<(String, String)> = lock(&c.held)
        .iter()
        .flat_map(|(m, keys)| keys.iter().map(|k| (m.clone(), k.clone())))
        .collect();
    if holds.is_empty() {
        return;
    }
    let (script, ttl) = (&c.renew, c.ttl_ms());
    c.run("renew concurrency holds", |mut conn| {
        let mut call = script.prepare_invoke();
        call.arg(ttl);
        for (member, key) in &holds {
            call.key(key).arg(member);
        }
        async move { call.invoke_async::<()>(&mut conn).await }
    })
    .await;
}

/// Pings Redis (every [`HEALTH_EVERY`]) to tell whether it is up.
async fn health(c: Arc<Cluster>) {
    let mut conn = c.conn.clone();
    // A ping may wait for a reconnection: allow it more than an operation.
    let ping = tokio::time::timeout(
        c.timeout.max(Duration::from_millis(500)),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await;
    match ping {
        Ok(Ok(_)) => c.set_up(true, ""),
        Ok(Err(e)) => c.set_up(false, &e.to_string()),
        Err(_) => c.set_up(false, "no answer to PING"),
    }
    if !c.checked.swap(true, Ordering::AcqRel) {
        c.first_check.notify_waiters();
    }
}

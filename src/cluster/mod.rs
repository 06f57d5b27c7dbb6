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
//! Shared so far: stored responses (`previous_response_id` created on one
//! replica continues on another), see [`crate::store`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ClusterConfig;

/// How often Redis is pinged to tell whether it is up.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// This replica's link to the cluster's Redis.
pub(crate) struct Cluster {
    replica: String,
    prefix: String,
    timeout: Duration,
    conn: ConnectionManager,
    up: AtomicBool,
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
        let conn = match ConnectionManager::new_lazy_with_config(client, config) {
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
        });
        tracing::info!(replica = %cluster.replica, "cluster: sharing state through Redis");
        tokio::spawn(health(Arc::downgrade(&cluster)));
        Some(cluster)
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

/// Pings Redis every [`HEALTH_EVERY`] while the cluster link lives.
async fn health(cluster: std::sync::Weak<Cluster>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else {
            return;
        };
        let mut conn = c.conn.clone();
        // A ping may wait for a reconnection: allow it the connect timeout.
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
    }
}

//! The credential cache: login state an upstream wants to keep across
//! process restarts (tokens, session ids), one JSON file per session under
//! `data_dir/credentials/<pool>/<session>.json`, written atomically
//! (temp file + rename) and readable by the owner only.
//!
//! With a cluster, an account's login state is also shared through Redis,
//! and logging in or refreshing is done once for all replicas
//! ([`CredentialStore::once`]): refresh tokens that rotate are never spent
//! twice, and the replicas use one account rather than one each.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::canonical::UpstreamError;
use crate::cluster::{Cluster, SharedCredentials};
use crate::support::sync::lock;
use crate::upstream::Upstream;

/// Longest wait for another replica's login or refresh before doing it here.
const LOGIN_WAIT: Duration = Duration::from_secs(30);

/// Where a pool's sessions keep their credentials.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    dir: PathBuf,
    cluster: Option<Arc<Cluster>>,
    /// The generation of shared login state each session holds.
    held: Arc<Mutex<HashMap<String, u64>>>,
}

/// What [`CredentialStore::once`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Login {
    /// Establishing: always runs (it also connects), but with the newest
    /// shared login state, and under the lock when there is none yet.
    Establish,
    /// A refresh: skipped when another replica refreshed since.
    Refresh,
}

impl CredentialStore {
    pub fn new(data_dir: &Path) -> Self {
        CredentialStore {
            dir: data_dir.join("credentials"),
            cluster: None,
            held: Arc::default(),
        }
    }

    /// Shares login state with the other replicas.
    pub(crate) fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Runs `op` (an upstream's `establish` or `refresh`) for one session,
    /// once across the cluster: the replica that takes the account's login
    /// lock runs it and shares the result; the others wait for the lock to
    /// go and take that result instead of logging in or refreshing again.
    /// Alone, or with Redis away, it simply runs `op`.
    pub(crate) async fn once<F, Fut>(
        &self,
        pool: &str,
        session: &str,
        upstream: &dyn Upstream,
        what: Login,
        op: F,
    ) -> Result<bool, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bool, UpstreamError>>,
    {
        let Some(cluster) = self
            .cluster
            .as_ref()
            .filter(|_| upstream.shares_credentials())
        else {
            return op().await;
        };
        cluster.started().await;
        let id = format!("{pool}/{session}");
        let waited = tokio::time::Instant::now() + LOGIN_WAIT;
        loop {
            let held = lock(&self.held).get(&id).copied().unwrap_or(0);
            let Some(shared) = cluster.credentials(pool, session).await else {
                return op().await;
            };
            let newest = shared.as_ref().map_or(0, |s| s.gen);
            let current = shared.as_ref().map(|s| s.value.clone());
            if let Some(s) = shared.filter(|s| s.gen > held) {
                if upstream.import_credentials(s.value) {
                    lock(&self.held).insert(id.clone(), s.gen);
                    tracing::info!(pool, session, "took the login state another replica shared");
                    return match what {
                        Login::Refresh => Ok(true),
                        Login::Establish => op().await,
                    };
                }
            }
            let token = match cluster.lock_login(pool, session).await {
                None => return op().await,
                Some(Some(token)) => token,
                Some(None) if tokio::time::Instant::now() < waited => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Some(None) => return op().await,
            };
            // Another replica may have taken the lock, refreshed and let
            // go between the read above and this lock: its result is the
            // one to use, as a rotated refresh token spent twice is refused.
            let changed = cluster
                .credentials(pool, session)
                .await
                .flatten()
                .is_some_and(|s| s.gen > newest);
            if changed {
                cluster.unlock_login(pool, session, &token).await;
                continue;
            }
            let result = op().await;
            if result.is_ok() {
                // Unchanged (an establish that reused them): nothing new to
                // tell, and the others must not skip a refresh for it.
                let value = upstream
                    .export_credentials()
                    .filter(|v| Some(v) != current.as_ref());
                if let Some(value) = value {
                    let gen = newest.max(held) + 1;
                    cluster
                        .store_credentials(pool, session, &SharedCredentials { gen, value })
                        .await;
                    lock(&self.held).insert(id.clone(), gen);
                }
            }
            cluster.unlock_login(pool, session, &token).await;
            return result;
        }
    }

    /// The `server.data_dir` this store lives in, for other per-session
    /// files (agent work directories).
    pub fn data_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    fn path(&self, pool: &str, session: &str) -> PathBuf {
        self.dir
            .join(sanitize(pool))
            .join(format!("{}.json", sanitize(session)))
    }

    /// The cached credentials of a session, if any can be read.
    pub fn load(&self, pool: &str, session: &str) -> Option<Value> {
        let text = std::fs::read(self.path(pool, session)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Replaces the cached credentials: a reader sees the old file or the
    /// new one, never half of one.
    pub fn save(&self, pool: &str, session: &str, value: &Value) -> std::io::Result<()> {
        let path = self.path(pool, session);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        super::private_dir(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let result = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Keeps names usable as file names whatever the configuration says.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_with_owner_only_mode() {
        let dir =
            std::env::temp_dir().join(format!("troupe-cred-{}", uuid::Uuid::new_v4().simple()));
        let store = CredentialStore::new(&dir);
        assert!(store.load("p", "s").is_none());
        store
            .save("p", "../s", &serde_json::json!({"token": "a"}))
            .unwrap();
        store
            .save("p", "../s", &serde_json::json!({"token": "b"}))
            .unwrap();
        assert_eq!(store.load("p", "../s").unwrap()["token"], "b");
        let path = store.path("p", "../s");
        assert!(path.starts_with(dir.join("credentials")), "{path:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "temp files left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

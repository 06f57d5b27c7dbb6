//! The credential cache: login state an upstream wants to keep across
//! process restarts (tokens, session ids), one JSON file per session under
//! `data_dir/credentials/<pool>/<session>.json`, written atomically
//! (temp file + rename) and readable by the owner only.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where a pool's sessions keep their credentials.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    dir: PathBuf,
}

impl CredentialStore {
    pub fn new(data_dir: &Path) -> Self {
        CredentialStore {
            dir: data_dir.join("credentials"),
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

//! The actor topology: one [`router::Router`] that leases sessions, one
//! [`session::Session`] per upstream account or connection, started under an
//! actix `Supervisor` by its pool's [`pool::PoolSupervisor`].

pub mod credentials;
pub mod messages;
pub mod pool;
pub mod restart_log;
pub mod router;
pub mod session;
pub mod tickets;

#[cfg(test)]
mod tests;

pub use messages::{AcquireError, Lease, Reload, SessionId, SessionInfo, SessionState};

/// Creates `dir` (and its parents) readable by this user alone, and narrows
/// it if it already exists: the data directory holds cached credentials
/// and the restart log, which names accounts and their failures.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        builder.mode(0o700);
        builder.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Opens `path` for appending, created (or narrowed) to this user alone.
pub fn private_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        opts.mode(0o600);
        let f = opts.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

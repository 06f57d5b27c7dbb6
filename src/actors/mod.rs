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

pub use messages::{AcquireError, Lease, SessionId, SessionInfo, SessionState};

//! Wiring: starting the gateway and draining it on SIGTERM ([`server`]),
//! putting the Router and the sessions on the HTTP worker threads
//! ([`placement`]), and the root supervisor that starts the pools and
//! applies a changed configuration ([`reload`]).

pub(crate) mod placement;
pub(crate) mod reload;
pub mod server;

pub use server::serve;

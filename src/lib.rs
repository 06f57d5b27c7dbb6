//! troupe: one OpenAI- and Anthropic-compatible API in front of pools of
//! upstream chat sessions (API keys, web-chat accounts, agent servers, CLIs,
//! local agents).
//!
//! The request flow:
//!
//! 1. [`http`] decodes the caller's wire JSON (with the server side of its
//!    [`protocol`]) into a [`canonical::ChatRequest`].
//! 2. The handler asks the [`actors::router::Router`] for a lease on a ready
//!    session serving the model; it queues (bounded, with a deadline) when
//!    every session is busy. While a session is idle, the handler leases it
//!    from the ticket the Router left for the model ([`actors::tickets`]),
//!    without the round trip.
//! 3. The handler sends the [`actors::session::Session`] a `Chat` message
//!    with the request and a bounded mailbox. The session runs the request
//!    on its [`upstream`] and sends back [`canonical::ChatEvent`]s.
//! 4. The handler peeks until the first real event, so failures before the
//!    first byte are retried on another session, then encodes the events as
//!    SSE or folds them into one body.
//!
//! Each pool's [`actors::pool::PoolSupervisor`] starts its sessions under an
//! actix `Supervisor`, which restarts a session that stops after a fault;
//! sessions classify every upstream failure once (cool-down, circuit,
//! credential refresh, restart) and [`actors::restart_log`] records each
//! such event. Conversation keys ([`canonical::conversation`]) keep a
//! conversation on the session and upstream thread that served it.
//!
//! Each upstream kind is a folder under [`upstream`] and one line in
//! [`upstream::registry`], which the pool supervisor, `troupe check`, the
//! configuration loader and shutdown ask. Kinds without native tools get
//! them from one layer the session applies
//! ([`upstream::text::tools`]): the request becomes text with an
//! instruction, and call blocks in the answer become tool-call events.
//!
//! Around that: [`config`] is the TOML schema, a public contract;
//! [`app`] wires it all (the server and its drain on SIGTERM, the placement
//! of the Router and the sessions on the HTTP worker threads, and the
//! reloader that applies a changed configuration without a restart);
//! [`metrics`] and [`http::trace`] record every request; [`admin`] serves
//! the admin API, the dashboard and its live feed; [`limits`] holds client
//! keys to their limits; [`store`] keeps stored responses; [`cluster`] is
//! what several replicas share through Redis (`[cluster]`), each piece
//! with a fallback to the replica's own state. The `troupe` binary
//! (`main.rs`, its subcommands in `src/cli/`) uses [`app`], [`config`],
//! [`restart_log`] and [`session_names`]. [`support`] holds the few
//! building blocks every folder may use (locks that survive a panic).

#![forbid(unsafe_code)]

pub(crate) mod actors;
pub(crate) mod admin;
pub mod app;
pub(crate) mod canonical;
pub(crate) mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod protocol;
pub(crate) mod store;
pub(crate) mod support;
pub(crate) mod upstream;

// What the `troupe` binary uses beyond `config` and `server`.
pub use actors::restart_log;
pub use upstream::session_names;

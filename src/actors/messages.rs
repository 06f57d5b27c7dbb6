//! Messages between handlers, the Router and Sessions. Tokens never pass
//! through the Router: it hands out leases, and text flows from the session
//! straight to the handler's mailbox.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::router::Router;
use super::session::Session;
use crate::canonical::{ChatEvent, ChatRequest};

/// Identifies a session for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

/// Where a session is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Establishing (or waiting out a restart backoff).
    Starting,
    /// Can take requests.
    Ready,
    /// A cool-down ended: one trial request decides between `Ready` and a
    /// longer cool-down.
    Trial,
    /// Takes no requests until `until` (429 with Retry-After on the whole
    /// account, or an open circuit after repeated upstream failures).
    CoolingDown { until: SystemTime, reason: String },
    /// Gave up after too many restarts; `reason` is the last failure. Stays
    /// so until an operator resets it or the configuration changes.
    Failed { reason: String },
    /// Removed by a configuration reload: finishing its requests, taking
    /// no new ones.
    Draining,
}

impl SessionState {
    /// Lower-case name shown by admin endpoints.
    pub fn name(&self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Ready => "ready",
            SessionState::Trial => "trial",
            SessionState::CoolingDown { .. } => "cooling_down",
            SessionState::Failed { .. } => "failed",
            SessionState::Draining => "draining",
        }
    }
}

/// A pool announces a new session to the Router.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub id: SessionId,
    pub pool: Arc<str>,
    pub name: Arc<str>,
    /// `None` when the pool declares the session before it runs; the
    /// session then registers again with its address as it starts.
    pub addr: Option<Addr<Session>>,
    /// Requests the session may run at once.
    pub max_concurrency: u32,
    /// Lower is preferred when several pools serve a model.
    pub priority: i32,
    /// Public model name and the name sent upstream.
    pub models: Vec<(Arc<str>, Arc<str>)>,
    /// Its upstream keeps conversations (known once the session runs).
    pub stateful: bool,
}

/// A session reports a change of state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StateChanged {
    pub id: SessionId,
    pub state: SessionState,
    /// The last failure, shown to operators.
    pub last_error: Option<Arc<str>>,
    /// Restarts since the session was created or reset.
    pub restarts: u32,
}

/// A session's upstream rate-limited one model (by its upstream name): the
/// Router routes that model elsewhere until `until`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ModelCooldown {
    pub id: SessionId,
    pub model: Arc<str>,
    pub until: Instant,
}

/// Redis is back: tell the other replicas again what they may have missed
/// (this replica's cool-downs and accounts it took out).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// A cool-down another replica saw (see [`crate::cluster`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SharedCooldown(pub crate::cluster::Cooldown);

/// A turn of a conversation succeeded on a session: later turns with
/// `key` prefer it. A stateful session also says which upstream
/// conversation holds it, for the other replicas (see [`crate::cluster`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remember {
    pub key: u64,
    pub id: SessionId,
    /// For stateful sessions: the upstream handle (if any) and whether it
    /// means anything on another machine.
    pub upstream: Option<(Option<String>, bool)>,
}

/// An operator clears a session's failures and cool-downs.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ResetSession {
    pub pool: String,
    pub session: String,
}

/// A reload removed a session: it takes no new requests, and leaves once
/// the ones it runs are over. Sent to the Router and to the session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire {
    pub id: SessionId,
}

/// A reload changed which models the configuration serves.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetModels {
    pub models: Vec<Arc<str>>,
}

/// Sent to a session by the Router on an operator reset.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reset;

/// A handler asks for a session serving `model`. The answer comes on
/// `reply`, at once or when a slot frees up; the handler bounds the wait.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acquire {
    pub model: Arc<str>,
    /// The session that just failed this request, never picked again.
    pub exclude: Option<SessionId>,
    /// Conversation key: the session that served it is preferred.
    pub affinity: Option<u64>,
    /// The account (pool, session name) that served the conversation on
    /// another replica: preferred over this replica's memory.
    pub prefer: Option<(Arc<str>, Arc<str>)>,
    pub reply: oneshot::Sender<Result<Lease, AcquireError>>,
}

/// Why no lease was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    #[error("no pool serves model `{0}`")]
    UnknownModel(String),
    #[error("every session serving model `{0}` has failed")]
    NoSessions(String),
    #[error("no other session serves model `{0}`")]
    NoOtherSession(String),
    #[error("too many requests are waiting")]
    QueueFull,
}

/// A permit to run one request on one session. Dropping it frees the slot.
#[derive(Debug)]
pub struct Lease {
    pub session: Addr<Session>,
    pub id: SessionId,
    pub pool: Arc<str>,
    pub session_name: Arc<str>,
    /// The model name to send upstream.
    pub upstream_model: Arc<str>,
    /// The session's `max_concurrency` (across replicas, with a cluster).
    pub max: u32,
    /// Held for its `Drop`, which returns the slot.
    pub(crate) _permit: Permit,
}

/// Returns a session slot when dropped. The slot's count is shared with
/// the Router, so a lease that ends is one atomic decrement; the Router is
/// sent a [`Release`] only while it has asked to hear of them (requests are
/// waiting, or a retired session is draining). Requests on other threads
/// than the Router's then cost it no message, and no wake-up, as they end.
#[derive(Debug)]
pub struct Permit {
    pub(crate) router: Addr<Router>,
    pub(crate) id: SessionId,
    pub(crate) in_flight: Arc<AtomicU32>,
    pub(crate) listening: Arc<AtomicBool>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Sequentially consistent, paired with the Router's store to
        // `listening` before it looks at the counts again: either the
        // Router sees this slot free, or this sees that it listens.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.listening.load(Ordering::SeqCst) {
            self.router.do_send(Release { id: self.id });
        }
    }
}

/// A lease ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub id: SessionId,
}

/// Run one request on a session; events go to `reply`, the request's
/// bounded mailbox. Closing the mailbox cancels the upstream call.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Chat {
    pub request: Arc<ChatRequest>,
    pub model: Arc<str>,
    pub reply: mpsc::Sender<ChatEvent>,
    /// What the cluster knows of the conversation's upstream handle.
    pub handle: Handle,
}

/// Where a stateful session finds a conversation's upstream handle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Handle {
    /// In its own memory (a single process, or nothing shared known).
    #[default]
    Local,
    /// This one, from the replica that ran the last turn.
    Use(String),
    /// Another replica ran the last turn on a handle that lives only there
    /// (or on another account): start afresh with the whole conversation.
    Fresh,
}

/// How much work is under way: leases held and requests waiting for one.
/// A shutdown drains until both are zero.
#[derive(Message)]
#[rtype(result = "(u32, usize)")]
pub struct Busy;

/// A snapshot of every session, for readiness and admin views.
#[derive(Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct Snapshot;

/// One session as the Router sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: SessionId,
    pub pool: Arc<str>,
    pub name: Arc<str>,
    pub state: SessionState,
    pub in_flight: u32,
    pub max_concurrency: u32,
    pub models: Vec<Arc<str>>,
    pub last_error: Option<Arc<str>>,
    pub restarts: u32,
    /// Models this session is cooling down for, with seconds left.
    pub model_cooldowns: Vec<(Arc<str>, f64)>,
}

/// Reload the configuration now: sent to the reloader (`app::reload`) by
/// SIGHUP, the admin API and the file watcher; answers a summary of what
/// changed, or why the new configuration was refused.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Reload {
    /// What asked for it, for the logs (`SIGHUP`, `admin`, `file`).
    pub source: &'static str,
}

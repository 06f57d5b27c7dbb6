//! The pool supervisor: one per configured pool. It builds each session's
//! upstream and starts the session under an actix `Supervisor`, which
//! restarts it when it stops after a fault. A watchdog re-creates a session
//! whose actor died outright (a panic is not supervised by actix).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::credentials::CredentialStore;
use super::messages::{Retire, SessionId};
use super::restart_log::{Cause, EventKind, RestartEvent, RestartLog};
use super::router::Router;
use super::session::{Registration, Session};
use crate::config::{PoolConfig, SupervisorConfig};
use crate::upstream::http::client::HttpClient;
use crate::upstream::{self, Upstream, UpstreamContext};

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// How often the watchdog looks for dead session actors.
const WATCHDOG_EVERY: Duration = Duration::from_secs(1);

/// Everything needed to (re)start one session.
struct Member {
    registration: Registration,
    upstream: Arc<dyn Upstream>,
    arbiter: Option<ArbiterHandle>,
    addr: Addr<Session>,
}

/// Supervises the sessions of one pool.
pub struct PoolSupervisor {
    cfg: PoolConfig,
    policy: SupervisorConfig,
    router: Addr<Router>,
    log: Addr<RestartLog>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    members: Vec<Member>,
    credentials: Option<CredentialStore>,
    /// One HTTP client per arbiter: a session's connections are then driven
    /// on its own thread, never handed across threads.
    http: Vec<HttpClient>,
    /// Sessions started so far, to spread them over the arbiters.
    started_count: usize,
}

impl PoolSupervisor {
    pub fn new(
        cfg: PoolConfig,
        defaults: &SupervisorConfig,
        router: Addr<Router>,
        log: Addr<RestartLog>,
        arbiters: Arc<Vec<ArbiterHandle>>,
    ) -> Self {
        let policy = cfg.supervisor.apply(defaults);
        PoolSupervisor {
            cfg,
            policy,
            router,
            log,
            arbiters,
            members: Vec::new(),
            credentials: None,
            http: Vec::new(),
            started_count: 0,
        }
    }

    /// Sessions keep their login state in `store` across restarts.
    pub fn with_credentials(mut self, store: CredentialStore) -> Self {
        self.credentials = Some(store);
        self
    }

    /// Session names: one per account, or `name-1..n` for account-less kinds.
    fn session_names(&self) -> Vec<String> {
        crate::upstream::session_names(&self.cfg)
    }

    fn spawn(
        &self,
        registration: &Registration,
        upstream: &Arc<dyn Upstream>,
        arbiter: Option<&ArbiterHandle>,
    ) -> Addr<Session> {
        let (registration, upstream) = (registration.clone(), upstream.clone());
        let (router, log, policy) = (self.router.clone(), self.log.clone(), self.policy.clone());
        let store = self.credentials.clone();
        let make = move |_: &mut Context<Session>| {
            Session::new(registration, upstream, router, log, policy).with_credentials(store)
        };
        match arbiter {
            Some(a) => Supervisor::start_in_arbiter(a, make),
            None => Supervisor::start(make),
        }
    }
}

impl PoolSupervisor {
    /// Builds and starts the session called `name` (an account, or a numbered
    /// session of an account-less kind).
    fn start_session(&mut self, name: &str) {
        let i = self.started_count;
        let Some(http) = self.http.get(i % self.http.len().max(1)).cloned() else {
            return;
        };
        let account = self.cfg.accounts.iter().find(|a| a.name == name);
        let data_dir = self.credentials.as_ref().map_or_else(
            || std::path::PathBuf::from("data"),
            |c| c.data_dir().to_path_buf(),
        );
        let place = upstream::Place {
            session: name,
            data_dir: &data_dir,
        };
        let upstream = match upstream::registry::build(
            UpstreamContext {
                pool: &self.cfg,
                account,
                http,
            },
            &place,
        ) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(pool = %self.cfg.name, session = %name, error = %e, "cannot build session");
                return;
            }
        };
        let registration = Registration {
            id: SessionId(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            pool: Arc::from(self.cfg.name.as_str()),
            name: Arc::from(name),
            max_concurrency: self.cfg.max_concurrency,
            priority: self.cfg.priority,
            models: self
                .cfg
                .models
                .iter()
                .map(|m| (Arc::from(m.public.as_str()), Arc::from(m.upstream.as_str())))
                .collect(),
            stateful: false,
        };
        self.started_count += 1;
        // Declared to the Router before it runs: a request failing over at
        // start-up then waits for this session instead of finding none.
        self.router.do_send(registration.message(None));
        let arbiter = self.arbiters.get(i % self.arbiters.len().max(1)).cloned();
        let addr = self.spawn(&registration, &upstream, arbiter.as_ref());
        self.members.push(Member {
            registration,
            upstream,
            arbiter,
            addr,
        });
    }

    /// Takes a session out: no new requests; it leaves once drained.
    fn retire(&mut self, index: usize) {
        let m = self.members.remove(index);
        self.router.do_send(Retire {
            id: m.registration.id,
        });
        m.addr.do_send(Retire {
            id: m.registration.id,
        });
    }
}

/// A reload changed only this pool's accounts: sessions of removed or
/// changed accounts are retired, new ones started, the rest keep running
/// (and keep their conversations).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateAccounts {
    pub cfg: PoolConfig,
}

/// A reload removed this pool (or changed more than its accounts).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetirePool;

impl Handler<UpdateAccounts> for PoolSupervisor {
    type Result = ();

    fn handle(&mut self, msg: UpdateAccounts, _: &mut Self::Context) {
        let old = std::mem::replace(&mut self.cfg, msg.cfg);
        let mut i = 0;
        while i < self.members.len() {
            let name = &*self.members[i].registration.name;
            let before = old.accounts.iter().find(|a| a.name == name);
            let after = self.cfg.accounts.iter().find(|a| a.name == name);
            if after.is_none() || before != after {
                tracing::info!(pool = %self.cfg.name, session = %name, "account removed or changed by a reload");
                self.retire(i);
            } else {
                i += 1;
            }
        }
        let names: Vec<String> = self
            .cfg
            .accounts
            .iter()
            .filter(|a| !self.members.iter().any(|m| *m.registration.name == a.name))
            .map(|a| a.name.clone())
            .collect();
        for name in names {
            tracing::info!(pool = %self.cfg.name, session = %name, "account added by a reload");
            self.start_session(&name);
        }
    }
}

impl Handler<RetirePool> for PoolSupervisor {
    type Result = ();

    fn handle(&mut self, _: RetirePool, ctx: &mut Self::Context) {
        while !self.members.is_empty() {
            self.retire(0);
        }
        ctx.stop();
    }
}

/// Set once the gateway has begun to stop (see [`begin_stopping`]).
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells every pool supervisor that the gateway is stopping, so sessions
/// ended by the shutdown are not re-created.
pub fn begin_stopping() {
    STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::Relaxed)
}

impl Actor for PoolSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let connect_timeout = self.cfg.connect_timeout.unwrap_or(Duration::from_secs(10));
        for _ in 0..self.arbiters.len().max(1) {
            match HttpClient::new(connect_timeout) {
                Ok(c) => self.http.push(c),
                Err(e) => {
                    tracing::error!(pool = %self.cfg.name, error = %e, "cannot build HTTP client");
                    return;
                }
            }
        }
        for name in self.session_names() {
            self.start_session(&name);
        }
        tracing::info!(pool = %self.cfg.name, kind = self.cfg.kind.as_str(), sessions = self.members.len(), "pool started");
        ctx.run_interval(WATCHDOG_EVERY, |act, _| {
            // Once the gateway stops, workers end and their sessions with
            // them: that is not a death to repair.
            if stopping() {
                return;
            }
            for i in 0..act.members.len() {
                if act.members[i].addr.connected() {
                    continue;
                }
                let m = &act.members[i];
                let reason = "session actor died; re-created by the watchdog";
                tracing::error!(pool = %m.registration.pool, session = %m.registration.name, reason);
                let mut ev = RestartEvent::now(
                    &m.registration.pool,
                    &m.registration.name,
                    EventKind::Respawn,
                    reason,
                );
                ev.cause = Some(Cause::ActorDied);
                act.log.do_send(ev);
                // An arbiter whose thread died takes no more actors: move
                // the session to the pool's own.
                let arbiter = m.arbiter.clone().filter(|a| a.spawn(async {}));
                let addr = act.spawn(&m.registration, &m.upstream, arbiter.as_ref());
                act.members[i].arbiter = arbiter;
                act.members[i].addr = addr;
            }
        });
    }
}

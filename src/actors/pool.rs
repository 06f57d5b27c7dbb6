//! The pool supervisor: one per configured pool. It builds each session's
//! upstream and starts the session under an actix `Supervisor`, which
//! restarts it when it stops.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::SessionId;
use super::router::Router;
use super::session::{Registration, Session};
use crate::config::{Kind, PoolConfig, SupervisorConfig};
use crate::upstream::{self, UpstreamContext};

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Supervises the sessions of one pool.
pub struct PoolSupervisor {
    cfg: PoolConfig,
    policy: SupervisorConfig,
    router: Addr<Router>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    sessions: Vec<(SessionId, Addr<Session>)>,
}

impl PoolSupervisor {
    pub fn new(
        cfg: PoolConfig,
        defaults: &SupervisorConfig,
        router: Addr<Router>,
        arbiters: Arc<Vec<ArbiterHandle>>,
    ) -> Self {
        let policy = cfg.supervisor.apply(defaults);
        PoolSupervisor {
            cfg,
            policy,
            router,
            arbiters,
            sessions: Vec::new(),
        }
    }

    /// Session names: one per account, or `name-1..n` for account-less kinds.
    fn session_names(&self) -> Vec<String> {
        if !self.cfg.accounts.is_empty() {
            return self.cfg.accounts.iter().map(|a| a.name.clone()).collect();
        }
        let n = match self.cfg.kind {
            Kind::Demo => self.cfg.sessions.unwrap_or(2),
            Kind::Openai => 0,
        };
        (1..=n).map(|i| format!("{}-{i}", self.cfg.name)).collect()
    }
}

impl Actor for PoolSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let http = match reqwest::Client::builder()
            .connect_timeout(self.cfg.connect_timeout.unwrap_or(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(pool = %self.cfg.name, error = %e, "cannot build HTTP client");
                return;
            }
        };
        let pool_name: Arc<str> = Arc::from(self.cfg.name.as_str());
        let models: Vec<(Arc<str>, Arc<str>)> = self
            .cfg
            .models
            .iter()
            .map(|m| (Arc::from(m.public.as_str()), Arc::from(m.upstream.as_str())))
            .collect();
        for (i, name) in self.session_names().into_iter().enumerate() {
            let account = self.cfg.accounts.iter().find(|a| a.name == name);
            let upstream = match upstream::build(UpstreamContext {
                pool: &self.cfg,
                account,
                http: http.clone(),
            }) {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(pool = %self.cfg.name, session = %name, error = %e, "cannot build session");
                    continue;
                }
            };
            let id = SessionId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
            let registration = Registration {
                id,
                pool: pool_name.clone(),
                name: Arc::from(name.as_str()),
                max_concurrency: self.cfg.max_concurrency,
                priority: self.cfg.priority,
                models: models.clone(),
            };
            let router = self.router.clone();
            let policy = self.policy.clone();
            let make = move |_: &mut Context<Session>| {
                Session::new(
                    registration.clone(),
                    upstream.clone(),
                    router.clone(),
                    policy.clone(),
                )
            };
            let addr = match self.arbiters.get(i % self.arbiters.len().max(1)) {
                Some(arbiter) => Supervisor::start_in_arbiter(arbiter, make),
                None => Supervisor::start(make),
            };
            self.sessions.push((id, addr));
        }
        tracing::info!(pool = %self.cfg.name, kind = self.cfg.kind.as_str(), sessions = self.sessions.len(), "pool started");
    }
}

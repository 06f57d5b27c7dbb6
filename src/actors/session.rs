//! A Session actor owns one upstream account or connection. It establishes
//! the upstream, runs requests on it, and stops on a fault that leaves it
//! unusable so its supervisor restarts it (with backoff) or gives up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng as _;

use super::messages::{Chat, Register, SessionId, SessionState, StateChanged};
use super::router::Router;
use crate::canonical::{ChatEvent, ErrorKind, UpstreamError};
use crate::config::SupervisorConfig;
use crate::upstream::{EventSink, Upstream};

/// What the Router needs to route to a session.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: SessionId,
    pub pool: Arc<str>,
    pub name: Arc<str>,
    pub max_concurrency: u32,
    pub priority: i32,
    pub models: Vec<(Arc<str>, Arc<str>)>,
}

/// One upstream session.
pub struct Session {
    id: SessionId,
    pool: Arc<str>,
    name: Arc<str>,
    /// Sent to the Router on first start, before any state change, so the
    /// Router never hears of a session it does not know.
    registration: Option<Registration>,
    upstream: Arc<dyn Upstream>,
    router: Addr<Router>,
    policy: SupervisorConfig,
    state: SessionState,
    /// When the recent restarts happened, for the restart-intensity limit.
    restarts: VecDeque<Instant>,
    /// Consecutive restarts, for the backoff.
    attempt: u32,
    last_error: Option<String>,
}

impl Session {
    pub fn new(
        registration: Registration,
        upstream: Arc<dyn Upstream>,
        router: Addr<Router>,
        policy: SupervisorConfig,
    ) -> Self {
        Session {
            id: registration.id,
            pool: registration.pool.clone(),
            name: registration.name.clone(),
            registration: Some(registration),
            upstream,
            router,
            policy,
            state: SessionState::Starting,
            restarts: VecDeque::new(),
            attempt: 0,
            last_error: None,
        }
    }

    fn set_state(&mut self, state: SessionState) {
        if self.state != state {
            self.state = state.clone();
            self.router.do_send(StateChanged { id: self.id, state });
        }
    }

    /// Exponential backoff with jitter for the current attempt.
    fn backoff(&self) -> Duration {
        if self.attempt == 0 {
            return Duration::ZERO;
        }
        let base = self.policy.backoff_initial.as_secs_f64()
            * self
                .policy
                .backoff_multiplier
                .powi(self.attempt.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.policy.backoff_max.as_secs_f64());
        let jitter = rand::thread_rng().gen_range(0.8..=1.2);
        Duration::from_secs_f64((capped * jitter).min(self.policy.backoff_max.as_secs_f64()))
    }

    fn establish(&mut self, ctx: &mut Context<Self>) {
        let upstream = self.upstream.clone();
        ctx.wait(
            async move { upstream.establish().await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(()) => {
                        act.attempt = 0;
                        act.set_state(SessionState::Ready);
                        tracing::info!(pool = %act.pool, session = %act.name, "session ready");
                    }
                    Err(e) => act.fault(e.to_string(), ctx),
                }),
        );
    }

    /// The session cannot serve: restart it, or give up after too many
    /// restarts within the window.
    fn fault(&mut self, reason: String, ctx: &mut Context<Self>) {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.restart_window)
        {
            self.restarts.pop_front();
        }
        self.last_error = Some(reason.clone());
        if self.restarts.len() as u32 >= self.policy.max_restarts {
            tracing::error!(pool = %self.pool, session = %self.name, %reason, "session failed, giving up");
            self.set_state(SessionState::Failed { reason });
            return;
        }
        self.restarts.push_back(now);
        tracing::warn!(pool = %self.pool, session = %self.name, %reason, "session fault, restarting");
        self.set_state(SessionState::Starting);
        ctx.stop();
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(r) = self.registration.take() {
            self.router.do_send(Register {
                id: r.id,
                pool: r.pool,
                name: r.name,
                addr: ctx.address(),
                max_concurrency: r.max_concurrency,
                priority: r.priority,
                models: r.models,
            });
        }
        self.set_state(SessionState::Starting);
        let delay = self.backoff();
        if delay.is_zero() {
            self.establish(ctx);
        } else {
            ctx.run_later(delay, |act, ctx| act.establish(ctx));
        }
    }
}

impl actix::Supervised for Session {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.attempt = self.attempt.saturating_add(1);
    }
}

impl Handler<Chat> for Session {
    type Result = ();

    fn handle(&mut self, msg: Chat, ctx: &mut Self::Context) {
        let sink = EventSink::new(msg.reply);
        if self.state != SessionState::Ready {
            // Leased just before it failed: let the handler retry elsewhere.
            let err = UpstreamError::new(ErrorKind::SessionLost, "session is not ready");
            let _ = sink_try_error(&sink, err);
            return;
        }
        let upstream = self.upstream.clone();
        let fut = async move {
            let result = tokio::select! {
                biased;
                _ = sink.closed() => return None,
                r = upstream.chat(&msg.request, &msg.model, &sink) => r,
            };
            match result {
                Ok(()) => None,
                Err(e) if e.kind == ErrorKind::Cancelled => None,
                Err(e) => {
                    let fatal = e.is_fatal_to_session().then(|| e.to_string());
                    let _ = sink.send(ChatEvent::Error(e)).await;
                    fatal
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|fatal, act, ctx| {
            if let Some(reason) = fatal {
                act.fault(reason, ctx);
            }
        }));
    }
}

fn sink_try_error(sink: &EventSink, err: UpstreamError) -> Result<(), UpstreamError> {
    sink.try_send(ChatEvent::Error(err))
}

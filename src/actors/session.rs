//! A Session actor owns one upstream account or connection. It establishes
//! the upstream, runs requests on it, classifies every failure once, and
//! acts on it: a rate limit cools the model or the account down, repeated
//! upstream failures open a circuit, refused credentials are refreshed once,
//! and a fault that leaves the session unusable stops the actor so its
//! supervisor restarts it with backoff, or gives up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use actix::prelude::*;
use rand::Rng as _;

use super::credentials::{CredentialStore, Login};
use super::messages::{
    Chat, Handle, ModelCooldown, Register, Remember, Reset, Retire, SessionId, SessionState,
    StateChanged,
};
use super::restart_log::{Cause, EventKind, RestartEvent, RestartLog};
use super::router::Router;
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, UpstreamError};
use crate::config::SupervisorConfig;
use crate::support::sync::lock;
use crate::upstream::text::tools;
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
    /// Whether its upstream keeps conversations (set by the session).
    pub stateful: bool,
}

impl Registration {
    /// The Router's `Register` message for this session.
    pub fn message(&self, addr: Option<Addr<Session>>) -> Register {
        Register {
            id: self.id,
            pool: self.pool.clone(),
            name: self.name.clone(),
            addr,
            max_concurrency: self.max_concurrency,
            priority: self.priority,
            models: self.models.clone(),
            stateful: self.stateful,
        }
    }
}

/// How long a 429 without `Retry-After` cools a model down.
const DEFAULT_RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(5);
/// Refresh expiring credentials this long before they expire.
const REFRESH_AHEAD: Duration = Duration::from_secs(60);

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
    log: Addr<RestartLog>,
    policy: SupervisorConfig,
    state: SessionState,
    /// When the recent restarts happened, for the restart-intensity limit.
    restarts: VecDeque<Instant>,
    /// Restarts since creation or the last reset, for operators.
    total_restarts: u32,
    /// Consecutive restarts, for the backoff.
    attempt: u32,
    /// Consecutive upstream failures, for the circuit.
    failures: u32,
    /// Consecutive circuit openings, for the cool-down length.
    opened: u32,
    last_error: Option<Arc<str>>,
    /// Pending timer for the end of a cool-down or a credential refresh.
    timer: Option<SpawnHandle>,
    refreshing: bool,
    /// The upstream calls of the requests running on this session, each its
    /// own task (see `Handler<Chat>`); [`Reaper`] takes their ends, so the
    /// set's length is the requests in flight. Dropping it stops them all.
    calls: tokio::task::JoinSet<Outcome>,
    /// A fault wants a restart once no call is left in `calls`.
    stopping: bool,
    /// Times in a row the session gave up, for the wait before it is tried
    /// again; a served request clears it.
    gave_up: u32,
    /// Why the latest fault happened, for the restart log and metrics.
    cause: Cause,
    /// A revival's one try is under way: a fault now gives up at once.
    reviving: bool,
    credentials: Option<Arc<CredentialStore>>,
    /// Conversation key → upstream conversation handle, for stateful kinds.
    /// Shared with running requests, which record their turn before the
    /// client sees the answer end, so an immediate next turn finds it.
    conversations: Arc<std::sync::Mutex<lru::LruCache<u64, (String, Instant)>>>,
}

/// A refresh of a session's credentials, made only when one is needed.
#[derive(Clone)]
struct Refresher {
    upstream: Arc<dyn Upstream>,
    store: Option<Arc<CredentialStore>>,
    pool: Arc<str>,
    name: Arc<str>,
}

/// A refresh under way.
type Refreshing =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, UpstreamError>> + Send>>;

impl Refresher {
    /// The refresh: once across the cluster, when there is one (see
    /// [`CredentialStore::once`]). Boxed: a request's future holds only a
    /// pointer to it, not room for a refresh it will almost never make.
    fn run(self) -> Refreshing {
        Box::pin(async move {
            let Refresher {
                upstream,
                store,
                pool,
                name,
            } = self;
            match store {
                Some(s) => {
                    s.once(&pool, &name, &*upstream, Login::Refresh, || {
                        upstream.refresh()
                    })
                    .await
                }
                None => upstream.refresh().await,
            }
        })
    }
}

/// Upstream conversations a session remembers, and for how long.
const CONVERSATIONS: usize = 10_000;
const CONVERSATION_TTL: Duration = Duration::from_secs(3600);

/// How one request ended, as far as the session is concerned.
struct Outcome {
    model: Arc<str>,
    error: Option<UpstreamError>,
    /// Credentials were refreshed during the request (and with what result).
    refreshed: Option<Result<bool, String>>,
}

impl Session {
    pub fn new(
        mut registration: Registration,
        upstream: Arc<dyn Upstream>,
        router: Addr<Router>,
        log: Addr<RestartLog>,
        policy: SupervisorConfig,
    ) -> Self {
        registration.stateful = upstream.stateful();
        Session {
            id: registration.id,
            pool: registration.pool.clone(),
            name: registration.name.clone(),
            registration: Some(registration),
            upstream,
            router,
            log,
            policy,
            state: SessionState::Starting,
            restarts: VecDeque::new(),
            total_restarts: 0,
            attempt: 0,
            failures: 0,
            opened: 0,
            last_error: None,
            timer: None,
            refreshing: false,
            calls: tokio::task::JoinSet::new(),
            stopping: false,
            gave_up: 0,
            cause: Cause::EstablishFailed,
            reviving: false,
            credentials: None,
            // Grown as conversations come, capped in `put`: a bounded
            // cache allocates its whole table up front, 270 KiB a session
            // even for kinds that never keep a conversation.
            conversations: Arc::new(std::sync::Mutex::new(lru::LruCache::unbounded())),
        }
    }

    /// Keeps the upstream's login state in `store` across restarts.
    pub fn with_credentials(mut self, store: Option<CredentialStore>) -> Self {
        self.credentials = store.map(Arc::new);
        self
    }

    /// Writes the upstream's current login state to the cache.
    fn save_credentials(&self) {
        let (Some(store), Some(value)) = (&self.credentials, self.upstream.export_credentials())
        else {
            return;
        };
        if let Err(e) = store.save(&self.pool, &self.name, &value) {
            tracing::warn!(pool = %self.pool, session = %self.name, error = %e, "cannot write the credential cache");
        }
    }

    fn report(&self) {
        self.router.do_send(StateChanged {
            id: self.id,
            state: self.state.clone(),
            last_error: self.last_error.clone(),
            restarts: self.total_restarts,
        });
    }

    fn set_state(&mut self, state: SessionState) {
        // A retired session never comes back.
        if self.state == SessionState::Draining {
            return;
        }
        if self.state != state {
            self.state = state;
            self.report();
        }
    }

    fn record(&self, event: EventKind, reason: &str, attempt: u32, backoff: Option<Duration>) {
        let mut ev = RestartEvent::now(&self.pool, &self.name, event, reason);
        if matches!(event, EventKind::Restart | EventKind::GiveUp) {
            ev.cause = Some(self.cause);
        }
        ev.attempt = attempt;
        ev.backoff_ms = backoff.map(|d| d.as_millis() as u64);
        self.log.do_send(ev);
    }

    /// Exponential backoff with jitter for the current attempt.
    fn backoff(&self) -> Duration {
        if self.attempt == 0 {
            return Duration::ZERO;
        }
        exp_delay(
            self.policy.backoff_initial,
            self.policy.backoff_multiplier,
            self.attempt,
            self.policy.backoff_max,
        )
    }

    fn establish(&mut self, ctx: &mut Context<Self>) {
        if let Some(cached) = self
            .credentials
            .as_ref()
            .and_then(|s| s.load(&self.pool, &self.name))
        {
            if self.upstream.import_credentials(cached) {
                tracing::info!(pool = %self.pool, session = %self.name, "reusing cached credentials");
            }
        }
        let (upstream, store) = (self.upstream.clone(), self.credentials.clone());
        let (pool, name) = (self.pool.clone(), self.name.clone());
        ctx.wait(
            async move {
                let establish = || async { upstream.establish().await.map(|()| true) };
                match store {
                    Some(s) => s
                        .once(&pool, &name, &*upstream, Login::Establish, establish)
                        .await
                        .map(drop),
                    None => upstream.establish().await,
                }
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(()) => {
                    act.reviving = false;
                    act.save_credentials();
                    act.set_state(SessionState::Ready);
                    act.schedule_refresh(ctx);
                    act.watch_connection(ctx);
                    tracing::info!(pool = %act.pool, session = %act.name, "session ready");
                }
                Err(e) => act.fault(e.to_string(), Cause::EstablishFailed, ctx),
            }),
        );
    }

    /// Restarts the session when its upstream connection goes away, even
    /// with no request running. A restart drops this watcher with the
    /// actor's other futures.
    fn watch_connection(&mut self, ctx: &mut Context<Self>) {
        let upstream = self.upstream.clone();
        ctx.spawn(
            async move { upstream.lost().await }
                .into_actor(self)
                .map(|reason, act, ctx| {
                    // A fault already under way (or given up) needs no second one.
                    if !matches!(
                        act.state,
                        SessionState::Starting | SessionState::Failed { .. }
                    ) {
                        act.fault(reason, Cause::ConnectionLost, ctx);
                    }
                }),
        );
    }

    /// Plans the next credential refresh ahead of expiry, for kinds whose
    /// credentials expire.
    fn schedule_refresh(&mut self, ctx: &mut Context<Self>) {
        let Some(expires) = self.upstream.expires_at() else {
            return;
        };
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let ahead = REFRESH_AHEAD.min(left / 5);
        ctx.run_later(left.saturating_sub(ahead), |act, ctx| {
            act.refresh(ctx, "credentials about to expire")
        });
    }

    /// What a request needs to refresh this session's credentials, should
    /// its upstream refuse them: a few reference counts, no future yet.
    fn refresher(&self) -> Refresher {
        Refresher {
            upstream: self.upstream.clone(),
            store: self.credentials.clone(),
            pool: self.pool.clone(),
            name: self.name.clone(),
        }
    }

    /// One refresh at a time per account.
    fn refresh(&mut self, ctx: &mut Context<Self>, why: &'static str) {
        if self.refreshing || matches!(self.state, SessionState::Failed { .. }) {
            return;
        }
        self.refreshing = true;
        let refresh = self.refresher().run();
        ctx.spawn(refresh.into_actor(self).map(move |res, act, ctx| {
            act.refreshing = false;
            match res {
                Ok(_) => {
                    act.record(EventKind::Refresh, why, 0, None);
                    act.save_credentials();
                    act.schedule_refresh(ctx);
                }
                Err(e) => act.fault(
                    format!("credential refresh failed: {e}"),
                    Cause::RefreshFailed,
                    ctx,
                ),
            }
        }));
    }

    /// The session cannot serve: restart it, or give up after too many
    /// restarts within the window.
    fn fault(&mut self, reason: String, cause: Cause, ctx: &mut Context<Self>) {
        self.cause = cause;
        if self.stopping || self.state == SessionState::Draining {
            // Already on its way to a restart: one fault, one restart.
            self.last_error = Some(Arc::from(reason.as_str()));
            return;
        }
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.restart_window)
        {
            self.restarts.pop_front();
        }
        self.last_error = Some(Arc::from(reason.as_str()));
        if self.reviving || self.restarts.len() as u32 >= self.policy.max_restarts {
            self.give_up(reason, ctx);
            return;
        }
        self.restarts.push_back(now);
        self.total_restarts += 1;
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.backoff();
        self.record(EventKind::Restart, &reason, self.attempt, Some(delay));
        self.set_state(SessionState::Starting);
        // The supervisor restarts the actor; `started` waits out the backoff.
        // Requests already running were accepted with working credentials
        // or a live connection: let them end on their own first.
        self.stopping = true;
        if self.calls.is_empty() {
            ctx.stop();
        }
    }

    /// Too many restarts: the session is `failed`. Unattended, it is tried
    /// again after `failed_retry`, doubling with each failed try up to
    /// `failed_retry_max`, so a pool heals when its upstream does.
    fn give_up(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.reviving = false;
        self.gave_up = self.gave_up.saturating_add(1);
        let wait = exp_delay(
            self.policy.failed_retry,
            2.0,
            self.gave_up,
            self.policy.failed_retry_max,
        );
        tracing::error!(pool = %self.pool, session = %self.name, %reason, retry_in_secs = wait.as_secs(), "session failed, giving up for now");
        self.record(EventKind::GiveUp, &reason, self.attempt, Some(wait));
        self.set_state(SessionState::Failed { reason });
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.revive(ctx);
        }));
    }

    /// One try of a `failed` session: a fault before it serves gives up
    /// again at once, with a longer wait.
    fn revive(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, SessionState::Failed { .. }) {
            return;
        }
        let reason = format!("trying again after giving up {} time(s)", self.gave_up);
        tracing::info!(pool = %self.pool, session = %self.name, "{reason}");
        self.record(EventKind::Revive, &reason, self.attempt, None);
        self.restarts.clear();
        self.attempt = 0;
        self.failures = 0;
        self.opened = 0;
        self.reviving = true;
        self.state = SessionState::Starting;
        self.report();
        self.establish(ctx);
    }

    fn cool_down(&mut self, until_in: Duration, reason: String, ctx: &mut Context<Self>) {
        let until_in = until_in.min(self.policy.cooldown_max);
        self.record(EventKind::Cooldown, &reason, self.opened, Some(until_in));
        self.last_error = Some(Arc::from(reason.as_str()));
        self.set_state(SessionState::CoolingDown {
            until: SystemTime::now() + until_in,
            reason,
        });
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.timer = Some(ctx.run_later(until_in, |act, _| {
            act.timer = None;
            if matches!(act.state, SessionState::CoolingDown { .. }) {
                act.set_state(SessionState::Trial);
            }
        }));
    }

    fn on_outcome(&mut self, out: Outcome, ctx: &mut Context<Self>) {
        if let Some(r) = &out.refreshed {
            match r {
                Ok(true) => {
                    self.record(
                        EventKind::Refresh,
                        "upstream refused the credentials",
                        0,
                        None,
                    );
                    self.save_credentials();
                }
                Ok(false) => {}
                Err(e) => self.record(EventKind::Refresh, &format!("refresh failed: {e}"), 0, None),
            }
        }
        let Some(err) = out.error else {
            self.succeeded();
            return;
        };
        if err.kind != ErrorKind::Cancelled {
            if let Some(m) = crate::metrics::get() {
                m.upstream_errors
                    .with_label_values(&[&self.pool, err.kind.as_str()])
                    .inc();
            }
        }
        match err.kind {
            // The client's own fault or the client leaving says nothing
            // about the upstream's health.
            ErrorKind::InvalidRequest | ErrorKind::Cancelled => self.succeeded(),
            ErrorKind::RateLimited => {
                let wait = err
                    .retry_after
                    .unwrap_or(DEFAULT_RATE_LIMIT_COOLDOWN)
                    .min(self.policy.cooldown_max);
                let reason = format!("rate limited on {}: {}", out.model, err.message);
                if self.state == SessionState::Trial {
                    self.opened += 1;
                    self.cool_down(wait, reason, ctx);
                } else {
                    self.record(EventKind::Cooldown, &reason, 0, Some(wait));
                    self.last_error = Some(Arc::from(reason.as_str()));
                    self.router.do_send(ModelCooldown {
                        id: self.id,
                        model: out.model,
                        until: Instant::now() + wait,
                    });
                    self.report();
                }
            }
            ErrorKind::Unavailable
            | ErrorKind::Protocol
            | ErrorKind::Connect
            | ErrorKind::Timeout => {
                self.failures += 1;
                self.last_error = Some(Arc::from(err.to_string().as_str()));
                if self.state == SessionState::Trial
                    || self.failures >= self.policy.circuit_threshold
                {
                    self.opened += 1;
                    self.failures = 0;
                    let wait = exp_delay(
                        self.policy.cooldown_initial,
                        2.0,
                        self.opened,
                        self.policy.cooldown_max,
                    );
                    self.cool_down(wait, format!("circuit open: {err}"), ctx);
                } else {
                    self.report();
                }
            }
            ErrorKind::Auth => self.fault(err.to_string(), Cause::Auth, ctx),
            ErrorKind::SessionLost => self.fault(err.to_string(), Cause::SessionLost, ctx),
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.gave_up = 0;
        // Served a request: the run of restarts is over, backoff starts afresh.
        self.attempt = 0;
        if self.state == SessionState::Trial {
            self.opened = 0;
            self.record(EventKind::CooldownEnd, "trial request succeeded", 0, None);
            self.set_state(SessionState::Ready);
        }
    }
}

/// `initial * multiplier^(n-1)`, capped, with ±20 % jitter (still capped).
pub fn exp_delay(initial: Duration, multiplier: f64, n: u32, max: Duration) -> Duration {
    let exp = n.saturating_sub(1).min(60) as i32;
    let base = (initial.as_secs_f64() * multiplier.powi(exp)).min(max.as_secs_f64());
    let jitter = rand::thread_rng().gen_range(0.8..=1.2);
    Duration::from_secs_f64((base * jitter).min(max.as_secs_f64()))
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(r) = self.registration.take() {
            self.router.do_send(r.message(Some(ctx.address())));
        }
        if matches!(
            self.state,
            SessionState::Failed { .. } | SessionState::Draining
        ) {
            // A retired session starts nothing: once the last address to it
            // is gone, it stops for good.
            return;
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
        self.timer = None;
        self.refreshing = false;
        self.stopping = false;
        // A restart comes once no call runs; one that still did would stop
        // with its set, as it did with the context's futures.
        self.calls = tokio::task::JoinSet::new();
    }
}

/// Takes the ends of a session's calls while it has any: started with the
/// first call into an empty set, done when the set is empty again.
///
/// Each call is a task of its own in the session's `JoinSet`, not a future
/// spawned into the actor's context: the context keeps its futures in a
/// list that grows with the most calls ever in flight and never shrinks
/// (after 10,000 streams on 8 sessions, 8 lists of 48 KiB, for good). The
/// set keeps one entry per running call and nothing after.
struct Reaper;

impl ActorFuture<Session> for Reaper {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        act: &mut Session,
        ctx: &mut Context<Session>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        loop {
            let out = match act.calls.poll_join_next(task) {
                Poll::Ready(Some(out)) => out,
                // Done with the last call: a session that waits to stop
                // stops now, and one that runs on needs no reaper until
                // its next call (one left in the context would keep a
                // session alive that nothing refers to any more).
                Poll::Ready(None) => {
                    if act.stopping {
                        ctx.stop();
                    }
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            };
            match out {
                Ok(out) => act.on_outcome(out, ctx),
                // The call's mailbox closed with it, so its handler retries
                // or reports the loss; the session itself is sound.
                Err(e) if e.is_panic() => {
                    tracing::error!(pool = %act.pool, session = %act.name, error = %e, "an upstream call panicked; its client got an error");
                    crate::metrics::task_failed("session");
                }
                Err(_) => {}
            }
        }
    }
}

impl Handler<Chat> for Session {
    type Result = ();

    fn handle(&mut self, msg: Chat, ctx: &mut Self::Context) {
        let stateful = self.upstream.stateful();
        let conversation = msg.request.conversation;
        // The answer's text is needed only to key the next turn of an
        // implicitly keyed conversation on a stateful upstream.
        let implicit = conversation.is_some_and(|c| c.explicit.is_none());
        let mut sink = EventSink::new(msg.reply);
        if stateful && implicit {
            sink = sink.keeping_transcript();
        }
        if !matches!(self.state, SessionState::Ready | SessionState::Trial) {
            // Leased just before it changed state: let the handler retry elsewhere.
            let err = UpstreamError::new(ErrorKind::SessionLost, "session is not ready");
            let _ = sink.try_send(ChatEvent::Error(Box::new(err)));
            return;
        }
        // Kinds without native tools get them from one layer: the request
        // rewritten into text, the answer's call blocks taken back out.
        let native_tools = self.upstream.native_tools();
        let emulating = !native_tools && tools::applies(&msg.request);
        let handle = match (conversation.and_then(|c| c.route_key()), &msg.handle) {
            (Some(_), Handle::Use(h)) if stateful => Some(h.clone()),
            (Some(key), Handle::Local) if stateful => lock(&self.conversations)
                .get(&key)
                .filter(|(_, at)| at.elapsed() <= CONVERSATION_TTL)
                .map(|(h, _)| h.clone()),
            _ => None,
        };
        let portable = self.upstream.portable_handles();
        let (conversations, router, id) =
            (self.conversations.clone(), self.router.clone(), self.id);
        // The call reaches its upstream through the refresher's handle: one
        // handle fewer in every call's task. Those 16 bytes took the task
        // (1,024 bytes with tokio's header) to the allocator's next size,
        // 1,280.
        let refresh = self.refresher();
        // Prepared here, not in the call's task, where the sink was kept
        // twice (the task's input, and the sink with the extractor: 232
        // bytes each). The rewritten request is boxed: the call's task keeps
        // it for its whole life, and inline it would make every task,
        // emulating or not, as large.
        let (prepared, extractor) = if emulating {
            let (req, extractor) = tools::prepare(&msg.request);
            (Some(Box::new(req)), extractor)
        } else {
            (None, None)
        };
        let sink = sink.extracting_tools(extractor);
        let fut = async move {
            let req: &ChatRequest = match &prepared {
                Some(req) => req,
                None => &msg.request,
            };
            let run = async {
                let mut refreshed = None;
                let turn = |handle| refresh.upstream.chat_turn(req, &msg.model, &sink, handle);
                let mut result = turn(handle.as_deref()).await;
                if matches!(&result, Err(e) if e.kind == ErrorKind::Auth) {
                    // One refresh and one retry; nothing reached the client yet.
                    let r = refresh.clone().run().await.map_err(|e| e.to_string());
                    if matches!(r, Ok(true)) {
                        result = turn(handle.as_deref()).await;
                    }
                    refreshed = Some(r);
                }
                if result.is_ok() {
                    if let Err(e) = sink.flush().await {
                        result = Err(e);
                    }
                }
                (result, refreshed)
            };
            let (result, refreshed) = tokio::select! {
                biased;
                _ = sink.closed() => (Err(UpstreamError::new(ErrorKind::Cancelled, "client went away")), None),
                r = run => r,
            };
            let error = match result {
                // Only a finished turn is remembered; a cancelled or failed
                // one leaves no entry. Recorded while the mailbox is still
                // open: the client cannot start its next turn before this.
                Ok(new_handle) => {
                    let remember = conversation.and_then(|c| match (c.explicit, stateful) {
                        (Some(k), _) => Some((k, new_handle)),
                        (None, true) => {
                            let text = sink.transcript().unwrap_or_default();
                            Some((c.next_key(req, &text), new_handle))
                        }
                        (None, false) => None,
                    });
                    if let Some((key, handle)) = remember {
                        if let Some(h) = &handle {
                            let mut kept = lock(&conversations);
                            kept.put(key, (h.clone(), Instant::now()));
                            if kept.len() > CONVERSATIONS {
                                kept.pop_lru();
                            }
                        }
                        let upstream = stateful.then_some((handle, portable));
                        // Awaited: with a cluster, the next turn may come
                        // to another replica as soon as this one ends.
                        // Boxed, as the rare step it is (200 bytes).
                        let _ = Box::pin(router.send(Remember { key, id, upstream })).await;
                    }
                    None
                }
                Err(e) => {
                    if e.kind != ErrorKind::Cancelled {
                        // Boxed, as the rare step it is: inline, its future
                        // (208 bytes) would be room in every call's task.
                        let _ = Box::pin(sink.send(ChatEvent::Error(Box::new(e.clone())))).await;
                    }
                    Some(e)
                }
            };
            drop(sink);
            Outcome {
                model: msg.model,
                error,
                refreshed,
            }
        };
        // The call runs as its own task: an actor polls every future it
        // runs whenever any of them wakes, so a session with n answers in
        // flight would poll all n for each chunk of each one. [`Reaper`]
        // takes its end; a session that stops or restarts drops the set,
        // which stops the call.
        if self.calls.is_empty() {
            ctx.spawn(Reaper);
        }
        self.calls.spawn_local(fut);
    }
}

impl Handler<Retire> for Session {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.set_state(SessionState::Draining);
        tracing::info!(pool = %self.pool, session = %self.name, in_flight = self.calls.len(), "session retired by a reload");
        self.stopping = true;
        if self.calls.is_empty() {
            ctx.stop();
        }
    }
}

impl Handler<Reset> for Session {
    type Result = ();

    fn handle(&mut self, _: Reset, ctx: &mut Self::Context) {
        self.restarts.clear();
        self.total_restarts = 0;
        self.gave_up = 0;
        self.reviving = false;
        self.attempt = 0;
        self.failures = 0;
        self.opened = 0;
        self.last_error = None;
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.record(EventKind::Reset, "reset by an operator", 0, None);
        match self.state {
            SessionState::Failed { .. } | SessionState::Starting => {
                self.state = SessionState::Starting;
                self.report();
                self.establish(ctx);
            }
            _ => self.set_state(SessionState::Ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let init = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let first = exp_delay(init, 2.0, 1, max);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let third = exp_delay(init, 2.0, 3, max);
        assert!(third >= Duration::from_millis(320) && third <= Duration::from_millis(480));
        for n in 5..70 {
            assert!(exp_delay(init, 2.0, n, max) <= max);
        }
    }
}

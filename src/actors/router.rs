//! The Router: knows every session's state and load, hands out leases, and
//! parks requests in a bounded queue when every session is busy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::messages::{
    Acquire, AcquireError, Busy, Lease, ModelCooldown, Register, Release, Remember, Reset,
    ResetSession, Resync, Retire, SessionId, SessionInfo, SessionState, SetModels, SharedCooldown,
    Snapshot, StateChanged,
};
use super::session::Session;
use super::tickets::{claim, Offer, Ticket, Tickets};

struct Slot {
    id: SessionId,
    pool: Arc<str>,
    name: Arc<str>,
    /// `None` once a retired session has left.
    addr: Option<Addr<Session>>,
    /// A reload removed it: no new leases; it leaves once drained.
    retiring: bool,
    state: SessionState,
    /// Leases out now: raised here, lowered by the leases' permits.
    in_flight: Arc<AtomicU32>,
    max: u32,
    models: Vec<Arc<str>>,
    last_error: Option<Arc<str>>,
    restarts: u32,
    /// Another replica took the account out (its circuit opened, its
    /// credentials were refused): not used here until then, or until that
    /// replica's trial request passes.
    out_until: Option<Instant>,
    /// This replica told the others the account is out.
    told_out: bool,
}

impl Slot {
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Whether the session takes requests at all: running, not retired,
    /// ready or due its trial request.
    fn open(&self) -> bool {
        !self.retiring
            && self.addr.is_some()
            && matches!(self.state, SessionState::Ready | SessionState::Trial)
            && self.out_until.is_none_or(|t| t <= Instant::now())
    }

    /// Requests it may run at once now.
    fn cap(&self) -> u32 {
        match self.state {
            // One trial request decides whether the cool-down is over.
            SessionState::Trial => 1,
            _ => self.max,
        }
    }

    /// Whether the session can take one more request now.
    fn has_room(&self) -> bool {
        self.open() && self.in_flight() < self.cap()
    }
}

/// A model's route to a session, with the name to send upstream.
struct Route {
    slot: usize,
    priority: i32,
    upstream_model: Arc<str>,
    /// The upstream rate-limited this model on this session until then.
    cool_until: Option<Instant>,
}

impl Route {
    fn cooling(&self, now: Instant) -> bool {
        self.cool_until.is_some_and(|t| t > now)
    }
}

struct Waiter {
    model: Arc<str>,
    exclude: Option<SessionId>,
    affinity: Option<u64>,
    reply: oneshot::Sender<Result<Lease, AcquireError>>,
}

/// How long past the end of a cool-down the other replicas keep an account
/// out, waiting for the trial request of the replica that cooled it; the
/// trial's success lifts it sooner.
const TRIAL_GRACE: Duration = Duration::from_secs(30);
/// How long the other replicas keep out an account whose session gave up
/// here (`failed`), unless it is revived sooner.
const FAILED_OUT: Duration = Duration::from_secs(300);

/// How long the other replicas should keep out an account in `state` here,
/// or `None` when it is usable.
fn out_for(state: &SessionState) -> Option<Duration> {
    match state {
        SessionState::CoolingDown { until, .. } => Some(
            until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                + TRIAL_GRACE,
        ),
        SessionState::Failed { .. } => Some(FAILED_OUT),
        _ => None,
    }
}

/// The one Router actor.
pub struct Router {
    slots: Vec<Slot>,
    index: HashMap<SessionId, usize>,
    routes: HashMap<Arc<str>, Vec<Route>>,
    queue: VecDeque<Waiter>,
    max_queue: usize,
    /// Models the configuration promises; a request for one of them waits
    /// while its sessions are still registering instead of failing.
    known: std::collections::HashSet<Arc<str>>,
    /// Conversation key → the session that served its last turn.
    affinity: lru::LruCache<u64, (SessionId, Instant)>,
    /// Conversations remembered at most.
    affinity_cap: usize,
    affinity_ttl: Duration,
    /// Rotates the choice among equally good sessions.
    turn: std::cell::Cell<usize>,
    /// Whether permits that end should tell the Router (see [`Permit`]).
    listening: Arc<AtomicBool>,
    /// Idle sessions handlers may lease without asking (see [`Tickets`]).
    tickets: Arc<Tickets>,
    /// Replicas told of this one's cool-downs, if any.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Conversations remembered by default, and for how long.
const AFFINITY_CAPACITY: usize = 100_000;
const AFFINITY_TTL: Duration = Duration::from_secs(3600);

impl Router {
    /// A router whose queue holds at most `max_queue` waiting requests.
    pub fn new(max_queue: usize) -> Self {
        Router {
            slots: Vec::new(),
            index: HashMap::new(),
            routes: HashMap::new(),
            queue: VecDeque::new(),
            max_queue,
            known: Default::default(),
            // Grown as conversations come and capped in `Remember`: a
            // bounded cache allocates its whole table (2 MiB) up front.
            affinity: lru::LruCache::unbounded(),
            affinity_cap: AFFINITY_CAPACITY,
            affinity_ttl: AFFINITY_TTL,
            turn: std::cell::Cell::new(0),
            listening: Arc::new(AtomicBool::new(false)),
            tickets: Arc::default(),
            cluster: None,
        }
    }

    /// Publishes this replica's cool-downs to the other replicas.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The tickets this Router issues, for the handlers.
    pub fn tickets(&self) -> Arc<Tickets> {
        self.tickets.clone()
    }

    /// The ticket for `model`: the sessions the Router would pick when idle
    /// (ready or due their trial request, the model not cooling down on
    /// them, of the best priority any such session has), in its order, the
    /// first turn after session `after`.
    fn ticket(&self, model: &str, after: Option<SessionId>, router: Addr<Router>) -> Ticket {
        let now = Instant::now();
        let routes = self.routes.get(model).map_or(&[][..], Vec::as_slice);
        let open = |r: &&Route| self.slots[r.slot].open() && !r.cooling(now);
        let best = routes.iter().filter(open).map(|r| r.priority).min();
        let offers = routes
            .iter()
            .filter(open)
            .filter(|r| Some(r.priority) == best)
            .filter_map(|r| self.offer(r.slot, r.upstream_model.clone()))
            .collect::<Vec<_>>();
        let turn = offers
            .iter()
            .position(|o| Some(o.id) == after)
            .map_or(0, |i| i + 1);
        Ticket {
            router,
            listening: self.listening.clone(),
            offers,
            turn: turn.into(),
        }
    }

    /// The session that served a conversation, if still remembered.
    fn preferred(&self, key: Option<u64>) -> Option<SessionId> {
        let (id, at) = self.affinity.peek(&key?)?;
        (at.elapsed() <= self.affinity_ttl).then_some(*id)
    }

    /// Declares the configured models before their sessions register.
    pub fn with_models(mut self, models: impl IntoIterator<Item = Arc<str>>) -> Self {
        self.known.extend(models);
        self
    }

    /// The ready session with a free slot: the one that served the
    /// conversation first, then lowest priority value, then least loaded.
    fn pick(
        &self,
        model: &str,
        exclude: Option<SessionId>,
        affinity: Option<u64>,
    ) -> Option<(usize, Arc<str>)> {
        let routes = self.routes.get(model)?;
        let now = Instant::now();
        let preferred = self.preferred(affinity);
        // Equal candidates take turns, so idle accounts share the load
        // (and their rate limits) instead of the first one taking it all.
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        let n = routes.len().max(1);
        routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let s = &self.slots[r.slot];
                s.has_room() && Some(s.id) != exclude && !r.cooling(now)
            })
            .min_by_key(|(i, r)| {
                let s = &self.slots[r.slot];
                (
                    Some(s.id) != preferred,
                    r.priority,
                    s.in_flight(),
                    (i + n - turn % n) % n,
                )
            })
            .map(|(_, r)| (r.slot, r.upstream_model.clone()))
    }

    /// A slot's session, to lease (`None` once it has left).
    fn offer(&self, slot: usize, upstream_model: Arc<str>) -> Option<Offer> {
        let s = &self.slots[slot];
        Some(Offer {
            session: s.addr.clone()?,
            id: s.id,
            pool: s.pool.clone(),
            name: s.name.clone(),
            upstream_model,
            in_flight: s.in_flight.clone(),
            max: s.max,
        })
    }

    /// A lease on a picked slot: `None` for a slot that has left (which
    /// `pick` never returns), or whose last room a ticket has taken on
    /// another thread since `pick`.
    fn lease(&self, slot: usize, upstream_model: Arc<str>, router: Addr<Router>) -> Option<Lease> {
        let offer = self.offer(slot, upstream_model)?;
        if !claim(&offer.in_flight, self.slots[slot].cap()) {
            return None;
        }
        Some(offer.into_lease(router, self.listening.clone()))
    }

    /// Drops a retired session once its last request is over.
    fn leave_if_drained(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.retiring && s.in_flight() == 0 && s.addr.is_some() {
            s.addr = None;
            for routes in self.routes.values_mut() {
                routes.retain(|r| r.slot != slot);
            }
            self.routes.retain(|_, rs| !rs.is_empty());
        }
    }

    /// Why a request for `model` cannot even wait, if so.
    fn hopeless(&self, model: &str, exclude: Option<SessionId>) -> Option<AcquireError> {
        let Some(routes) = self.routes.get(model) else {
            if self.known.contains(model) {
                return None;
            }
            return Some(AcquireError::UnknownModel(model.to_owned()));
        };
        let alive = |r: &&Route| {
            let s = &self.slots[r.slot];
            !s.retiring && !matches!(s.state, SessionState::Failed { .. })
        };
        if !routes.iter().any(|r| alive(&r)) {
            // Failed sessions stay failed until reset: nothing to wait for.
            // Retiring ones are being replaced by a reload: wait for those.
            let all_failed = routes.iter().all(|r| {
                let s = &self.slots[r.slot];
                s.retiring || matches!(s.state, SessionState::Failed { .. })
            }) && routes.iter().any(|r| !self.slots[r.slot].retiring);
            if all_failed || !self.known.contains(model) {
                return Some(AcquireError::NoSessions(model.to_owned()));
            }
            return None;
        }
        if exclude.is_some()
            && !routes
                .iter()
                .filter(alive)
                .any(|r| Some(self.slots[r.slot].id) != exclude)
        {
            return Some(AcquireError::NoOtherSession(model.to_owned()));
        }
        None
    }

    /// Hands freed slots to waiting requests, oldest first, then tells the
    /// permits whether the Router must hear of leases that end.
    fn drain_queue(&mut self, ctx: &mut Context<Self>) {
        loop {
            self.drain_queue_inner(ctx);
            let listen =
                !self.queue.is_empty() || self.slots.iter().any(|s| s.retiring && s.addr.is_some());
            let was = self.listening.swap(listen, Ordering::SeqCst);
            // Starting to listen: a lease may have ended unheard just
            // before, so look at the counts once more.
            if !listen || was {
                break;
            }
            for slot in 0..self.slots.len() {
                self.leave_if_drained(slot);
            }
        }
        if let Some(m) = crate::metrics::get() {
            m.queue_depth.set(self.queue.len() as i64);
        }
    }

    fn drain_queue_inner(&mut self, ctx: &mut Context<Self>) {
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].reply.is_closed() {
                self.queue.remove(i);
                continue;
            }
            let (model, exclude, affinity) = (
                self.queue[i].model.clone(),
                self.queue[i].exclude,
                self.queue[i].affinity,
            );
            if let Some(err) = self.hopeless(&model, exclude) {
                if let Some(w) = self.queue.remove(i) {
                    let _ = w.reply.send(Err(err));
                }
                continue;
            }
            match self.pick(&model, exclude, affinity) {
                Some((slot, upstream)) => {
                    if let Some(w) = self.queue.remove(i) {
                        match self.lease(slot, upstream, ctx.address()) {
                            // A waiter that gave up drops the lease, which frees the slot again.
                            Some(lease) => {
                                let _ = w.reply.send(Ok(lease));
                            }
                            None => self.queue.push_front(w),
                        }
                    }
                }
                None => i += 1,
            }
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Waiters whose handler gave up still count against max_queue until
        // swept.
        ctx.run_interval(Duration::from_millis(500), |act, ctx| {
            act.queue.retain(|w| !w.reply.is_closed());
            act.drain_queue(ctx);
        });
    }
}

impl Handler<Register> for Router {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Self::Context) {
        self.tickets.clear();
        if msg.stateful && msg.addr.is_some() {
            self.tickets
                .mark_stateful(msg.models.iter().map(|(public, _)| public.clone()));
        }
        if let Some(&slot) = self.index.get(&msg.id) {
            // A declared session started, or the watchdog re-created a dead
            // session actor.
            let s = &mut self.slots[slot];
            if let (false, Some(addr)) = (s.retiring, msg.addr) {
                s.addr = Some(addr);
                s.state = SessionState::Starting;
            }
            return;
        }
        let slot = self.slots.len();
        self.index.insert(msg.id, slot);
        for (public, upstream) in &msg.models {
            let routes = self.routes.entry(public.clone()).or_default();
            routes.push(Route {
                slot,
                priority: msg.priority,
                upstream_model: upstream.clone(),
                cool_until: None,
            });
        }
        self.slots.push(Slot {
            id: msg.id,
            pool: msg.pool,
            name: msg.name,
            addr: msg.addr,
            retiring: false,
            state: SessionState::Starting,
            in_flight: Arc::new(AtomicU32::new(0)),
            max: msg.max_concurrency,
            models: msg.models.into_iter().map(|(p, _)| p).collect(),
            last_error: None,
            restarts: 0,
            out_until: None,
            told_out: false,
        });
        self.drain_queue(ctx);
    }
}

impl Handler<StateChanged> for Router {
    type Result = ();

    fn handle(&mut self, msg: StateChanged, ctx: &mut Self::Context) {
        if let Some(&slot) = self.index.get(&msg.id) {
            let s = &mut self.slots[slot];
            if s.state != msg.state {
                self.tickets.clear();
            }
            s.state = msg.state;
            s.last_error = msg.last_error;
            s.restarts = msg.restarts;
            if let Some(cluster) = &self.cluster {
                // The other replicas keep the account out while it is out
                // here, and through its one trial request: one trial in
                // the cluster, not one per replica.
                let out = out_for(&s.state);
                match out {
                    Some(wait) => {
                        s.told_out = true;
                        cluster.publish_cooldown(&s.pool, &s.name, None, wait);
                    }
                    None if s.told_out && s.state == SessionState::Ready => {
                        s.told_out = false;
                        cluster.publish_cooldown(&s.pool, &s.name, None, Duration::ZERO);
                    }
                    None => {}
                }
            }
            self.drain_queue(ctx);
        }
    }
}

impl Handler<Acquire> for Router {
    type Result = ();

    fn handle(&mut self, msg: Acquire, ctx: &mut Self::Context) {
        if let Some(err) = self.hopeless(&msg.model, msg.exclude) {
            let _ = msg.reply.send(Err(err));
            return;
        }
        if let (Some(key), Some((pool, name))) = (msg.affinity, &msg.prefer) {
            // Another replica served the conversation's last turn: its
            // account wins over what this replica remembers.
            let slot = self
                .slots
                .iter()
                .find(|s| s.pool == *pool && s.name == *name && s.addr.is_some());
            if let Some(s) = slot {
                self.affinity.put(key, (s.id, Instant::now()));
            }
        }
        let picked = self.pick(&msg.model, msg.exclude, msg.affinity);
        // A first attempt without a conversation to follow: the next ones
        // may take an idle session without asking, continuing the turns
        // after this one.
        if msg.exclude.is_none() && msg.affinity.is_none() && !self.tickets.has(&msg.model) {
            let after = picked.as_ref().map(|(slot, _)| self.slots[*slot].id);
            let ticket = self.ticket(&msg.model, after, ctx.address());
            self.tickets.issue(msg.model.clone(), ticket);
        }
        if let Some((slot, upstream)) = picked {
            if let Some(lease) = self.lease(slot, upstream, ctx.address()) {
                let _ = msg.reply.send(Ok(lease));
                return;
            }
        }
        if self.queue.len() >= self.max_queue {
            let _ = msg.reply.send(Err(AcquireError::QueueFull));
            return;
        }
        self.queue.push_back(Waiter {
            model: msg.model,
            exclude: msg.exclude,
            affinity: msg.affinity,
            reply: msg.reply,
        });
        // Starts listening for leases that end, and catches one that ended
        // since the look above.
        self.drain_queue(ctx);
    }
}

impl Handler<Release> for Router {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Self::Context) {
        // The permit has lowered the count already.
        if let Some(&slot) = self.index.get(&msg.id) {
            self.leave_if_drained(slot);
            self.drain_queue(ctx);
        }
    }
}

impl Handler<Retire> for Router {
    type Result = ();

    fn handle(&mut self, msg: Retire, ctx: &mut Self::Context) {
        if let Some(&slot) = self.index.get(&msg.id) {
            self.slots[slot].retiring = true;
            self.tickets.clear();
            self.leave_if_drained(slot);
            // Waiters that only this session could serve learn it now.
            self.drain_queue(ctx);
        }
    }
}

impl Handler<SetModels> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetModels, ctx: &mut Self::Context) {
        self.known = msg.models.into_iter().collect();
        self.tickets.clear();
        self.drain_queue(ctx);
    }
}

impl Handler<Remember> for Router {
    /// Resolves once the other replicas can see the turn too.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Remember, _: &mut Self::Context) -> Self::Result {
        self.affinity.put(msg.key, (msg.id, Instant::now()));
        if self.affinity.len() > self.affinity_cap {
            self.affinity.pop_lru();
        }
        if let (Some(cluster), Some((handle, portable))) = (&self.cluster, msg.upstream) {
            if let Some(s) = self.index.get(&msg.id).map(|&i| &self.slots[i]) {
                let (cluster, pool, name) = (cluster.clone(), s.pool.clone(), s.name.clone());
                return Box::pin(async move {
                    cluster
                        .remember_conversation(msg.key, &pool, &name, handle, portable)
                        .await
                });
            }
        }
        Box::pin(std::future::ready(()))
    }
}

impl Router {
    /// Cools `model` (the upstream name) down on the session in `slot`
    /// until `until`; false if no route of that slot sends that model.
    fn cool(&mut self, slot: usize, model: &str, until: Instant, ctx: &mut Context<Self>) -> bool {
        // The upstream limited its model name; every public name mapped to
        // it on this session cools down together.
        let mut any = false;
        for route in self.routes.values_mut().flatten() {
            if route.slot == slot && &*route.upstream_model == model {
                route.cool_until = Some(until);
                any = true;
            }
        }
        if any {
            self.tickets.clear();
            // Waiters may be served once the cool-down ends, and tickets
            // offer the session again.
            let wait = until.saturating_duration_since(Instant::now());
            ctx.run_later(wait, |act, ctx| {
                act.tickets.clear();
                act.drain_queue(ctx);
            });
        }
        any
    }
}

impl Handler<ModelCooldown> for Router {
    type Result = ();

    fn handle(&mut self, msg: ModelCooldown, ctx: &mut Self::Context) {
        let Some(&slot) = self.index.get(&msg.id) else {
            return;
        };
        if self.cool(slot, &msg.model, msg.until, ctx) {
            if let Some(cluster) = &self.cluster {
                let s = &self.slots[slot];
                let wait = msg.until.saturating_duration_since(Instant::now());
                cluster.publish_cooldown(&s.pool, &s.name, Some(&msg.model), wait);
            }
        }
    }
}

impl Handler<Resync> for Router {
    type Result = ();

    fn handle(&mut self, _: Resync, _: &mut Self::Context) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let now = Instant::now();
        let mut told = 0;
        for s in self.slots.iter().filter(|s| s.told_out) {
            let wait = out_for(&s.state).unwrap_or(TRIAL_GRACE);
            cluster.publish_cooldown(&s.pool, &s.name, None, wait);
            told += 1;
        }
        for r in self.routes.values().flatten() {
            if let Some(until) = r.cool_until.filter(|t| *t > now) {
                let s = &self.slots[r.slot];
                cluster.publish_cooldown(&s.pool, &s.name, Some(&r.upstream_model), until - now);
                told += 1;
            }
        }
        if told > 0 {
            tracing::info!(
                told,
                "cluster: told the other replicas this replica's cool-downs again"
            );
        }
    }
}

impl Handler<SharedCooldown> for Router {
    type Result = ();

    /// Another replica's cool-down: the same account (pool and account
    /// name) of this replica's configuration cools down too.
    fn handle(&mut self, msg: SharedCooldown, ctx: &mut Self::Context) {
        let cd = msg.0;
        let until = Instant::now() + Duration::from_millis(cd.wait_ms);
        let slots: Vec<usize> = (0..self.slots.len())
            .filter(|&i| *self.slots[i].pool == *cd.pool && *self.slots[i].name == *cd.account)
            .collect();
        for slot in slots {
            if !cd.circuit {
                self.cool(slot, &cd.model, until, ctx);
                continue;
            }
            self.tickets.clear();
            if cd.wait_ms == 0 {
                self.slots[slot].out_until = None;
                self.drain_queue(ctx);
            } else {
                self.slots[slot].out_until = Some(until);
                ctx.run_later(
                    until.saturating_duration_since(Instant::now()),
                    |act, ctx| {
                        act.tickets.clear();
                        act.drain_queue(ctx);
                    },
                );
            }
        }
    }
}

impl Handler<ResetSession> for Router {
    type Result = bool;

    fn handle(&mut self, msg: ResetSession, _: &mut Self::Context) -> bool {
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| *s.pool == msg.pool && *s.name == msg.session)
        else {
            return false;
        };
        for routes in self.routes.values_mut() {
            for r in routes.iter_mut().filter(|r| r.slot == slot) {
                r.cool_until = None;
            }
        }
        self.tickets.clear();
        match &self.slots[slot].addr {
            Some(addr) => {
                addr.do_send(Reset);
                true
            }
            None => false,
        }
    }
}

impl Handler<Busy> for Router {
    type Result = MessageResult<Busy>;

    fn handle(&mut self, _: Busy, _: &mut Self::Context) -> Self::Result {
        self.queue.retain(|w| !w.reply.is_closed());
        let leased = self.slots.iter().map(Slot::in_flight).sum();
        MessageResult((leased, self.queue.len()))
    }
}

impl Handler<Snapshot> for Router {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        MessageResult(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.addr.is_some())
                .map(|(i, s)| SessionInfo {
                    id: s.id,
                    pool: s.pool.clone(),
                    name: s.name.clone(),
                    state: s.state.clone(),
                    in_flight: s.in_flight(),
                    max_concurrency: s.max,
                    models: s.models.clone(),
                    last_error: s.last_error.clone(),
                    restarts: s.restarts,
                    model_cooldowns: self
                        .routes
                        .iter()
                        .flat_map(|(model, rs)| {
                            rs.iter()
                                .filter(move |r| r.slot == i)
                                .filter_map(|r| r.cool_until)
                                .filter(|t| *t > now)
                                .map(move |t| (model.clone(), (t - now).as_secs_f64()))
                        })
                        .collect(),
                })
                .collect(),
        )
    }
}

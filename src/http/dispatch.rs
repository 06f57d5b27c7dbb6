//! Running a request on the pools: lease a session, hand it the request and
//! a bounded mailbox, and peek at the answer before anything reaches the
//! client, so a failure before the first byte is retried on another session.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout_at;

use super::error::ApiError;
use super::trace::Trace;
use crate::actors::messages::{Acquire, Chat, Handle};
use crate::actors::router::Router;
use crate::actors::tickets::Tickets;
use crate::actors::{Lease, SessionId};
use crate::canonical::{Answer, ChatEvent, ChatRequest, ErrorKind, UpstreamError};
use crate::cluster::{ClientHeld, Cluster, Grant, Held};
use crate::config::ServerConfig;
use crate::limits::{Limiter, LocalPass};

/// Events buffered in a request's mailbox before the upstream waits.
pub const MAILBOX: usize = 64;

/// What dispatching needs from the gateway.
#[derive(Clone)]
pub struct Dispatcher {
    pub router: Addr<Router>,
    /// Idle sessions a request may lease without asking the Router.
    pub tickets: Arc<Tickets>,
    pub server: Arc<ServerConfig>,
    /// Other sessions tried before the first byte.
    pub retry_budget: u32,
    /// Turns true when the drain deadline of a shutdown has passed: answers
    /// still running end with the protocol's error instead of a cut.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Replicas sharing accounts' concurrency, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// Client keys' limits on this replica (alone, or while Redis is away).
    pub limiter: Arc<Limiter>,
}

/// A request's place under its client key's limits, from its first try
/// to its end; it is charged the answer's tokens and dropped when the
/// request's trace finishes.
#[derive(Debug)]
pub enum Pass {
    Local(LocalPass),
    /// Boxed: the cluster's pass is 96 bytes, and every open stream keeps
    /// its request's pass in its trace.
    Shared(Box<ClientHeld>),
}

impl Pass {
    pub fn charge(&mut self, tokens: u64) {
        match self {
            Pass::Local(p) => p.charge(tokens),
            Pass::Shared(p) => p.charge(tokens),
        }
    }
}

/// An answer that has begun: the lease keeps the session slot, `head` holds
/// the events peeked so far, the rest arrive on `rx`.
pub struct Opened {
    pub lease: Lease,
    pub rx: mpsc::Receiver<ChatEvent>,
    pub head: Vec<ChatEvent>,
    /// When the whole request must be over.
    pub deadline: tokio::time::Instant,
    /// The request's hold on its account across the cluster, held for its
    /// `Drop`. Boxed: 56 bytes that every open stream would keep room for,
    /// cluster or not.
    pub _shared: Option<Box<Held>>,
}

/// Resolves once a shutdown's drain deadline has passed; never when the
/// sender is gone without one (as in tests).
pub async fn draining(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Retry bookkeeping across the attempts of one request.
struct Attempts {
    left: u32,
    exclude: Option<SessionId>,
    last: Option<UpstreamError>,
    /// What the cluster knows of the conversation, once asked.
    conversation: Option<Option<crate::cluster::Conversation>>,
}

impl Attempts {
    /// Records a retryable failure; false when the budget is spent.
    fn retry(&mut self, session: SessionId, err: UpstreamError) -> bool {
        tracing::debug!(session = session.0, error = %err, "attempt failed before the first byte");
        self.exclude = Some(session);
        self.last = Some(err);
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

impl Dispatcher {
    async fn acquire(
        &self,
        model: &Arc<str>,
        exclude: Option<SessionId>,
        affinity: Option<u64>,
        prefer: Option<(Arc<str>, Arc<str>)>,
    ) -> Result<Lease, ApiError> {
        if exclude.is_none() && affinity.is_none() {
            if let Some(lease) = self.tickets.lease(model) {
                return Ok(lease);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.router.do_send(Acquire {
            model: model.clone(),
            exclude,
            affinity,
            prefer,
            reply: tx,
        });
        let wait = self.server.queue_timeout;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(lease))) => Ok(lease),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(ApiError::Unavailable("the router is shutting down".into())),
            Err(_) => Err(ApiError::QueueTimeout {
                waited_secs: wait.as_secs(),
            }),
        }
    }

    /// A lease that also holds across the cluster, when there is one: an
    /// account whose `max_concurrency` the replicas already run together
    /// is given back and asked again, after a short pause, until a slot
    /// frees or the queue timeout passes. With Redis out of reach the
    /// lease holds on this replica alone. The request's first try also
    /// takes its place under its client key's limits (`trace.pass`), in
    /// the same round trip.
    async fn acquire_shared(
        &self,
        model: &Arc<str>,
        exclude: Option<SessionId>,
        affinity: Option<u64>,
        prefer: Option<(Arc<str>, Arc<str>)>,
        trace: &mut Trace,
    ) -> Result<(Lease, Option<Held>), ApiError> {
        let pending = match (&trace.client, &trace.pass) {
            (Some(c), None) if c.limited() => Some(c.clone()),
            _ => None,
        };
        let Some(cluster) = &self.cluster else {
            if let Some(c) = pending {
                trace.pass = Some(Pass::Local(self.limiter.admit(&c)?));
            }
            return Ok((self.acquire(model, exclude, affinity, prefer).await?, None));
        };
        let give_up = tokio::time::Instant::now() + self.server.queue_timeout;
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            let lease = self
                .acquire(model, exclude, affinity, prefer.clone())
                .await?;
            let client = pending.as_deref();
            match cluster
                .enter(&lease.pool, &lease.session_name, lease.max, client)
                .await
            {
                Grant::Held(held, pass) => {
                    if let Some(p) = pass {
                        trace.pass = Some(Pass::Shared(Box::new(p)));
                    }
                    return Ok((lease, Some(held)));
                }
                Grant::Local => {
                    if let Some(c) = &pending {
                        trace.pass = Some(Pass::Local(self.limiter.admit(c)?));
                    }
                    return Ok((lease, None));
                }
                Grant::Limited(refusal) => return Err(refusal.into()),
                Grant::Full => drop(lease),
            }
            if tokio::time::Instant::now() + pause >= give_up {
                return Err(ApiError::QueueTimeout {
                    waited_secs: self.server.queue_timeout.as_secs(),
                });
            }
            // Replicas that found the account full together do not retry
            // in step.
            let jitter = rand::random::<u64>() % (pause.as_millis() as u64 + 1);
            tokio::time::sleep(pause + std::time::Duration::from_millis(jitter)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
    }

    /// One attempt: lease, send, and wait for the first event that commits
    /// the answer (anything but preamble).
    async fn attempt(
        &self,
        req: &Arc<ChatRequest>,
        model: &Arc<str>,
        attempts: &mut Attempts,
        deadline: tokio::time::Instant,
        trace: &mut Trace,
    ) -> Result<Result<Opened, (SessionId, UpstreamError)>, ApiError> {
        let affinity = req.conversation.and_then(|c| c.route_key());
        let asked = Instant::now();
        // A turn of a stateful conversation asks the cluster, once, which
        // account and upstream handle the last turn used.
        if let (Some(cluster), Some(key), None) = (&self.cluster, affinity, &attempts.conversation)
        {
            if self.tickets.is_stateful(model) {
                attempts.conversation = Some(cluster.conversation(key).await);
            }
        }
        let known = attempts.conversation.as_ref().and_then(Option::as_ref);
        let prefer = known.map(|c| (Arc::from(c.pool.as_str()), Arc::from(c.account.as_str())));
        let (lease, shared) = match self
            .acquire_shared(model, attempts.exclude, affinity, prefer, trace)
            .await
        {
            Ok(l) => {
                trace.queued(asked.elapsed());
                l
            }
            // Nobody else can take it: the last upstream error says more.
            Err(e @ ApiError::Unavailable(_)) => {
                return Err(attempts.last.take().map_or(e, ApiError::Upstream));
            }
            Err(e) => return Err(e),
        };
        let (tx, mut rx) = mpsc::channel(MAILBOX);
        trace.upstream_begin(&lease.pool, &lease.session_name);
        let handle = match known {
            None => Handle::Local,
            Some(c) if *c.pool == *lease.pool && *c.account == *lease.session_name => {
                match (&c.handle, &self.cluster) {
                    (Some(h), Some(cl)) if c.portable || c.replica == cl.replica() => {
                        Handle::Use(h.clone())
                    }
                    _ => Handle::Fresh,
                }
            }
            // Its account is busy or gone here: a new upstream conversation.
            Some(_) => Handle::Fresh,
        };
        lease.session.do_send(Chat {
            request: req.clone(),
            model: lease.upstream_model.clone(),
            reply: tx,
            handle,
        });
        let first_deadline =
            (tokio::time::Instant::now() + self.server.first_token_timeout).min(deadline);
        let mut head = Vec::new();
        let result = loop {
            match timeout_at(first_deadline, rx.recv()).await {
                Ok(Some(ChatEvent::Error(e))) => break Err((lease.id, *e)),
                Ok(Some(ev)) if ev.is_preamble() => head.push(ev),
                Ok(Some(ev)) => {
                    head.push(ev);
                    return Ok(Ok(Opened {
                        lease,
                        rx,
                        head,
                        deadline,
                        _shared: shared.map(Box::new),
                    }));
                }
                Ok(None) => {
                    break Err((
                        lease.id,
                        UpstreamError::new(
                            ErrorKind::SessionLost,
                            "the session ended before answering",
                        ),
                    ))
                }
                Err(_) => {
                    let secs = self.server.first_token_timeout.as_secs();
                    break Err((
                        lease.id,
                        UpstreamError::new(
                            ErrorKind::Timeout,
                            format!("no first token within {secs}s"),
                        ),
                    ));
                }
            }
        };
        trace.upstream_end();
        Ok(result)
    }

    /// Starts an answer, retrying on other sessions while nothing has been
    /// committed to the client.
    pub async fn open(
        &self,
        req: &Arc<ChatRequest>,
        trace: &mut Trace,
    ) -> Result<Opened, ApiError> {
        let mut attempts = Attempts {
            left: self.retry_budget,
            exclude: None,
            last: None,
            conversation: None,
        };
        let deadline = tokio::time::Instant::now() + self.server.request_timeout;
        self.open_with(req, &mut attempts, deadline, trace).await
    }

    async fn open_with(
        &self,
        req: &Arc<ChatRequest>,
        attempts: &mut Attempts,
        deadline: tokio::time::Instant,
        trace: &mut Trace,
    ) -> Result<Opened, ApiError> {
        let model: Arc<str> = Arc::from(req.model.as_str());
        loop {
            match self.attempt(req, &model, attempts, deadline, trace).await? {
                Ok(opened) => return Ok(opened),
                Err((session, err)) => {
                    if !err.is_retryable() || !attempts.retry(session, err.clone()) {
                        return Err(ApiError::Upstream(err));
                    }
                }
            }
        }
    }

    /// Runs a non-streaming request to its end. Nothing reaches the client
    /// before the end, so a retryable failure anywhere is retried.
    pub async fn complete(
        &self,
        req: &Arc<ChatRequest>,
        trace: &mut Trace,
    ) -> Result<Answer, ApiError> {
        let mut attempts = Attempts {
            left: self.retry_budget,
            exclude: None,
            last: None,
            conversation: None,
        };
        let deadline = tokio::time::Instant::now() + self.server.request_timeout;
        loop {
            // The attempt's upstream clock keeps running until the answer ends.
            let mut opened = self.open_with(req, &mut attempts, deadline, trace).await?;
            let mut answer = Answer::default();
            let mut failure = None;
            for ev in opened.head.drain(..) {
                if let Err(e) = answer.push(ev) {
                    failure = Some(e);
                }
            }
            let mut shutdown = self.shutdown.clone();
            while failure.is_none() {
                let next = tokio::select! {
                    next = timeout_at(deadline, opened.rx.recv()) => next,
                    _ = draining(&mut shutdown) => {
                        return Err(ApiError::Unavailable("the gateway is shutting down".into()));
                    }
                };
                match next {
                    // An upstream that fails after the answer's stop (before
                    // its usage or end marker) still gave the whole answer.
                    Ok(Some(ChatEvent::Error(_)) | None) if answer.stop.is_some() => {
                        trace.upstream_end();
                        trace.usage = Some(answer.settle_usage(req).await);
                        return Ok(answer);
                    }
                    Ok(Some(ev)) => {
                        if let Err(e) = answer.push(ev) {
                            failure = Some(e);
                        }
                    }
                    Ok(None) => {
                        failure = Some(UpstreamError::new(
                            ErrorKind::SessionLost,
                            "the session ended before the answer did",
                        ))
                    }
                    Err(_) => {
                        return Err(ApiError::RequestTimeout(
                            self.server.request_timeout.as_secs(),
                        ))
                    }
                }
            }
            trace.upstream_end();
            if let Some(err) = failure {
                let session = opened.lease.id;
                drop(opened);
                if !err.is_retryable() || !attempts.retry(session, err.clone()) {
                    return Err(ApiError::Upstream(err));
                }
            }
        }
    }
}

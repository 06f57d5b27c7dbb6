//! Actor-level tests of supervision: restarts with backoff, giving up,
//! cool-downs with a trial request, resets, on tokio's paused clock so
//! minutes of backoff take no time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::messages::{Acquire, Chat, ResetSession, SessionId, Snapshot};
use super::restart_log::{EventKind, Recent, RestartLog};
use super::router::Router;
use super::session::{Registration, Session};
use super::{Lease, SessionState};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, StopReason, UpstreamError};
use crate::config::SupervisorConfig;
use crate::upstream::{EventSink, Upstream};

/// An upstream whose establish fails `fail_establish` times, and whose
/// requests fail with the scripted kinds, one per request, then succeed.
struct Scripted {
    fail_establish: AtomicU32,
    establishes: AtomicU32,
    script: std::sync::Mutex<Vec<UpstreamError>>,
}

impl Scripted {
    fn new(fail_establish: u32, script: Vec<UpstreamError>) -> Arc<Self> {
        Arc::new(Scripted {
            fail_establish: AtomicU32::new(fail_establish),
            establishes: AtomicU32::new(0),
            script: std::sync::Mutex::new(script),
        })
    }
}

#[async_trait]
impl Upstream for Scripted {
    async fn establish(&self) -> Result<(), UpstreamError> {
        self.establishes.fetch_add(1, Ordering::SeqCst);
        let left = self.fail_establish.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_establish.store(left - 1, Ordering::SeqCst);
            return Err(UpstreamError::new(ErrorKind::Connect, "cannot log in"));
        }
        Ok(())
    }

    async fn chat(&self, _: &ChatRequest, _: &str, sink: &EventSink) -> Result<(), UpstreamError> {
        let next = {
            let mut s = self.script.lock().unwrap();
            (!s.is_empty()).then(|| s.remove(0))
        };
        if let Some(e) = next {
            return Err(e);
        }
        sink.send(ChatEvent::TextDelta("ok".into())).await?;
        sink.send(ChatEvent::Stop(StopReason::End)).await
    }
}

fn policy() -> SupervisorConfig {
    SupervisorConfig {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        backoff_multiplier: 2.0,
        max_restarts: 3,
        restart_window: Duration::from_secs(600),
        retry_budget: 1,
        cooldown_max: Duration::from_secs(60),
        cooldown_initial: Duration::from_secs(5),
        circuit_threshold: 2,
        failed_retry: Duration::from_secs(300),
        failed_retry_max: Duration::from_secs(3600),
    }
}

struct Rig {
    router: Addr<Router>,
    tickets: Arc<super::tickets::Tickets>,
    log: Addr<RestartLog>,
    dir: std::path::PathBuf,
}

impl Rig {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("troupe-actors-{}", uuid::Uuid::new_v4().simple()));
        let router = Router::new(16);
        Rig {
            tickets: router.tickets(),
            router: router.start(),
            log: RestartLog::open(&dir, 1 << 20, 2, 100).start(),
            dir,
        }
    }

    fn registration(id: u32) -> Registration {
        Registration {
            id: SessionId(id),
            pool: Arc::from("p"),
            name: Arc::from(format!("s{id}").as_str()),
            max_concurrency: 2,
            priority: 0,
            models: vec![(Arc::from("m"), Arc::from("m-up"))],
            stateful: false,
        }
    }

    fn session(&self, id: u32, upstream: Arc<dyn Upstream>) {
        let reg = Self::registration(id);
        let (router, log) = (self.router.clone(), self.log.clone());
        Supervisor::start(move |_| Session::new(reg, upstream, router, log, policy()));
    }

    async fn state(&self, id: u32) -> SessionState {
        let snap = self.router.send(Snapshot).await.unwrap();
        snap.into_iter()
            .find(|s| s.id == SessionId(id))
            .unwrap()
            .state
    }

    async fn events(&self) -> Vec<EventKind> {
        self.log
            .send(Recent)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    /// Asks the Router for a lease on model `m`; the answer comes on the
    /// receiver.
    fn ask(&self, exclude: Option<u32>, affinity: Option<u64>) -> Asked {
        let (tx, rx) = oneshot::channel();
        self.router.do_send(Acquire {
            model: Arc::from("m"),
            exclude: exclude.map(SessionId),
            affinity,
            prefer: None,
            reply: tx,
        });
        rx
    }

    async fn lease(&self) -> Result<Lease, super::AcquireError> {
        self.ask(None, None).await.unwrap()
    }

    /// Runs one request on a leased session; returns the error event if any.
    async fn run(&self) -> Option<UpstreamError> {
        let lease = self.lease().await.unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        lease.session.do_send(Chat {
            request: Arc::new(ChatRequest::default()),
            model: lease.upstream_model.clone(),
            reply: tx,
            handle: Default::default(),
        });
        let mut err = None;
        while let Some(ev) = rx.recv().await {
            if let ChatEvent::Error(e) = ev {
                err = Some(*e);
            }
        }
        err
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Asked = oneshot::Receiver<Result<Lease, super::AcquireError>>;

/// The lease a request gets within `limit` (panics otherwise).
async fn answered_within(rx: Asked, limit: Duration) -> Lease {
    tokio::time::timeout(limit, rx)
        .await
        .expect("no answer in time")
        .expect("the Router dropped the request")
        .expect("no lease")
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[actix::test]
async fn restarts_back_off_then_give_up_and_reset_revives() {
    tokio::time::pause();
    let rig = Rig::new();
    let up = Scripted::new(10, vec![]);
    rig.session(1, up.clone());
    settle().await;
    // First establish failed at once; restarts follow after 1s, 2s, 4s backoff.
    assert_eq!(up.establishes.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        up.establishes.load(Ordering::SeqCst),
        1,
        "no restart before the backoff"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(up.establishes.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(up.establishes.load(Ordering::SeqCst), 4);
    assert!(matches!(rig.state(1).await, SessionState::Failed { .. }));
    assert_eq!(
        rig.events().await,
        vec![
            EventKind::Restart,
            EventKind::Restart,
            EventKind::Restart,
            EventKind::GiveUp
        ]
    );
    let backoffs: Vec<u64> = rig
        .log
        .send(Recent)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.backoff_ms)
        .collect();
    assert!(
        backoffs[0] < backoffs[1] && backoffs[1] < backoffs[2],
        "{backoffs:?}"
    );
    // A failed session stays failed, and takes no requests...
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(up.establishes.load(Ordering::SeqCst), 4);
    assert!(rig.lease().await.is_err());
    // ...until an operator resets it.
    up.fail_establish.store(0, Ordering::SeqCst);
    assert!(rig
        .router
        .send(ResetSession {
            pool: "p".into(),
            session: "s1".into()
        })
        .await
        .unwrap());
    settle().await;
    assert_eq!(rig.state(1).await, SessionState::Ready);
    assert_eq!(rig.events().await.last(), Some(&EventKind::Reset));
}

#[actix::test]
async fn repeated_failures_open_the_circuit_and_a_trial_closes_it() {
    tokio::time::pause();
    let rig = Rig::new();
    let unavailable = || UpstreamError::new(ErrorKind::Unavailable, "502 from upstream");
    let up = Scripted::new(0, vec![unavailable(), unavailable(), unavailable()]);
    rig.session(1, up.clone());
    settle().await;
    assert_eq!(rig.state(1).await, SessionState::Ready);
    assert!(rig.run().await.is_some());
    settle().await;
    assert_eq!(
        rig.state(1).await,
        SessionState::Ready,
        "one failure is below the threshold"
    );
    assert!(rig.run().await.is_some());
    settle().await;
    assert!(matches!(
        rig.state(1).await,
        SessionState::CoolingDown { .. }
    ));
    // The cool-down ends (5s ± jitter); the trial request fails: a longer one.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(rig.state(1).await, SessionState::Trial);
    assert!(rig.run().await.is_some());
    settle().await;
    assert!(matches!(
        rig.state(1).await,
        SessionState::CoolingDown { .. }
    ));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        matches!(rig.state(1).await, SessionState::CoolingDown { .. }),
        "second cool-down is longer"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(rig.state(1).await, SessionState::Trial);
    // The script is spent: the trial succeeds and the session is ready again.
    assert!(rig.run().await.is_none());
    settle().await;
    assert_eq!(rig.state(1).await, SessionState::Ready);
    let ev = rig.events().await;
    assert_eq!(
        ev,
        vec![
            EventKind::Cooldown,
            EventKind::Cooldown,
            EventKind::CooldownEnd
        ]
    );
}

#[actix::test]
async fn client_errors_never_cool_down_and_rate_limits_cool_one_model() {
    tokio::time::pause();
    let rig = Rig::new();
    let mut bad = UpstreamError::new(ErrorKind::InvalidRequest, "404 model");
    bad.status = Some(404);
    let mut limited = UpstreamError::new(ErrorKind::RateLimited, "slow down");
    limited.retry_after = Some(Duration::from_secs(3));
    let up = Scripted::new(0, vec![bad.clone(), bad.clone(), bad, limited]);
    rig.session(1, up);
    settle().await;
    for _ in 0..3 {
        assert_eq!(
            rig.run().await.map(|e| e.kind),
            Some(ErrorKind::InvalidRequest)
        );
    }
    settle().await;
    assert_eq!(rig.state(1).await, SessionState::Ready);
    assert!(rig.events().await.is_empty());
    assert_eq!(
        rig.run().await.map(|e| e.kind),
        Some(ErrorKind::RateLimited)
    );
    settle().await;
    // The model is cooled on this session: a lease waits until Retry-After passes.
    let snap = rig.router.send(Snapshot).await.unwrap();
    assert_eq!(snap[0].model_cooldowns.len(), 1);
    let waiting = tokio::time::timeout(Duration::from_secs(2), rig.lease()).await;
    assert!(waiting.is_err(), "leased a rate-limited model");
    let lease = tokio::time::timeout(Duration::from_secs(2), rig.lease()).await;
    assert!(matches!(lease, Ok(Ok(_))), "{lease:?}");
}

/// A stateful upstream: every turn reports the handle it was given and
/// continues (or opens) an upstream conversation.
struct Threads {
    seen: std::sync::Mutex<Vec<Option<String>>>,
    opened: AtomicU32,
}

#[async_trait]
impl Upstream for Threads {
    fn stateful(&self) -> bool {
        true
    }

    async fn chat(&self, _: &ChatRequest, _: &str, _: &EventSink) -> Result<(), UpstreamError> {
        Err(UpstreamError::new(
            ErrorKind::Protocol,
            "chat_turn expected",
        ))
    }

    async fn chat_turn(
        &self,
        _: &ChatRequest,
        _: &str,
        sink: &EventSink,
        handle: Option<&str>,
    ) -> Result<Option<String>, UpstreamError> {
        self.seen.lock().unwrap().push(handle.map(str::to_owned));
        let handle = match handle {
            Some(h) => h.to_owned(),
            None => format!("thread-{}", self.opened.fetch_add(1, Ordering::SeqCst)),
        };
        sink.send(ChatEvent::TextDelta("answer".into())).await?;
        sink.send(ChatEvent::Stop(StopReason::End)).await?;
        Ok(Some(handle))
    }
}

#[actix::test]
async fn conversations_continue_on_their_session_and_upstream_thread() {
    use crate::canonical::{Conversation, Message, Role};
    let rig = Rig::new();
    let threads = [
        Arc::new(Threads {
            seen: Default::default(),
            opened: AtomicU32::new(0),
        }),
        Arc::new(Threads {
            seen: Default::default(),
            opened: AtomicU32::new(100),
        }),
    ];
    rig.session(1, threads[0].clone());
    rig.session(2, threads[1].clone());
    settle().await;
    let turn = |msgs: Vec<Message>| {
        let mut r = ChatRequest {
            messages: msgs,
            ..Default::default()
        };
        r.conversation = Some(Conversation::of(&r, Some("client-key"), None));
        Arc::new(r)
    };
    async fn send(rig: &Rig, req: Arc<ChatRequest>) -> SessionId {
        let affinity = req.conversation.and_then(|c| c.route_key());
        let lease = rig.ask(None, affinity).await.unwrap().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        lease.session.do_send(Chat {
            request: req,
            model: lease.upstream_model.clone(),
            reply: tx,
            handle: Default::default(),
        });
        while rx.recv().await.is_some() {}
        settle().await;
        lease.id
    }
    let first = send(&rig, turn(vec![Message::text(Role::User, "hi")])).await;
    // The second turn carries the first answer back: same session, same thread,
    // however many times it is asked.
    for _ in 0..3 {
        let again = send(
            &rig,
            turn(vec![
                Message::text(Role::User, "hi"),
                Message::text(Role::Assistant, "answer"),
                Message::text(Role::User, "more"),
            ]),
        )
        .await;
        assert_eq!(again, first);
    }
    let t = &threads[(first.0 - 1) as usize];
    let seen = t.seen.lock().unwrap().clone();
    assert_eq!(seen[0], None);
    let opened = if first.0 == 1 {
        "thread-0"
    } else {
        "thread-100"
    };
    assert!(
        seen[1..].iter().all(|h| h.as_deref() == Some(opened)),
        "{seen:?}"
    );
    // Another client's identical conversation starts its own thread.
    let mut other = ChatRequest {
        messages: vec![
            Message::text(Role::User, "hi"),
            Message::text(Role::Assistant, "answer"),
            Message::text(Role::User, "more"),
        ],
        ..Default::default()
    };
    other.conversation = Some(Conversation::of(&other, Some("another-key"), None));
    let id = send(&rig, Arc::new(other)).await;
    let seen = threads[(id.0 - 1) as usize].seen.lock().unwrap().clone();
    assert_eq!(seen.last().unwrap(), &None);
}

#[actix::test]
async fn the_watchdog_recreates_a_session_whose_actor_died() {
    use super::pool::PoolSupervisor;
    let rig = Rig::new();
    let cfg = crate::config::from_value(
        serde_json::json!({
            "pools": [{"name": "w", "kind": "demo", "models": ["m"], "sessions": 1, "chunk_delay": "0s"}]
        }),
        crate::upstream::registry::check_pool,
    )
    .unwrap();
    // The session lives on its own thread; that thread dies under it.
    let doomed = actix::Arbiter::new();
    let arbiters = Arc::new(vec![doomed.handle()]);
    PoolSupervisor::new(
        cfg.pools[0].clone(),
        &cfg.supervisor,
        rig.router.clone(),
        rig.log.clone(),
        arbiters,
    )
    .start();
    let ready = |snap: Vec<super::SessionInfo>| {
        snap.first().is_some_and(|s| s.state == SessionState::Ready)
    };
    for _ in 0..100 {
        if ready(rig.router.send(Snapshot).await.unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready(rig.router.send(Snapshot).await.unwrap()));
    doomed.stop();
    let _ = doomed.join();
    let mut respawned = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rig.events().await.contains(&EventKind::Respawn)
            && ready(rig.router.send(Snapshot).await.unwrap())
        {
            respawned = true;
            break;
        }
    }
    assert!(respawned, "events: {:?}", rig.events().await);
    // And it serves again.
    assert!(rig.run().await.is_none());
}

#[actix::test]
async fn a_declared_session_is_waited_for_not_given_up_on() {
    // Pools declare their sessions before they run: a request that must
    // leave session 1 at start-up waits for session 2 instead of failing.
    let rig = Rig::new();
    rig.router.do_send(Rig::registration(2).message(None));
    rig.session(1, Scripted::new(0, vec![]));
    settle().await;
    let mut rx = rig.ask(Some(1), None);
    settle().await;
    assert!(rx.try_recv().is_err(), "answered before session 2 ran");
    rig.session(2, Scripted::new(0, vec![]));
    let lease = answered_within(rx, Duration::from_secs(5)).await;
    assert_eq!(lease.id, SessionId(2));
}

#[actix::test]
async fn ended_leases_free_slots_for_waiters_and_let_retired_sessions_leave() {
    // Slots come back through the permits' shared counts; the Router hears
    // of ended leases only while a request waits or a session drains.
    use super::messages::{Busy, Retire};
    let rig = Rig::new();
    rig.session(1, Scripted::new(0, vec![]));
    settle().await;
    let (a, b) = (rig.lease().await.unwrap(), rig.lease().await.unwrap());
    let mut rx = rig.ask(None, None);
    settle().await;
    assert!(rx.try_recv().is_err(), "leased beyond max_concurrency");
    assert_eq!(rig.router.send(Busy).await.unwrap(), (2, 1));
    drop(a);
    // Well within the Router's half-second sweep, which would also serve it.
    let c = answered_within(rx, Duration::from_millis(200)).await;
    assert_eq!(rig.router.send(Busy).await.unwrap(), (2, 0));
    drop((b, c));
    assert_eq!(rig.router.send(Busy).await.unwrap(), (0, 0));
    // Nobody waits now: an ended lease is counted at once all the same.
    let d = rig.lease().await.unwrap();
    assert_eq!(rig.router.send(Busy).await.unwrap(), (1, 0));
    drop(d);
    assert_eq!(rig.router.send(Busy).await.unwrap(), (0, 0));
    // A retired session stays while a lease runs, and leaves after it.
    let e = rig.lease().await.unwrap();
    rig.router.do_send(Retire { id: SessionId(1) });
    settle().await;
    let listed =
        |snap: Vec<super::messages::SessionInfo>| snap.iter().any(|s| s.id == SessionId(1));
    assert!(
        listed(rig.router.send(Snapshot).await.unwrap()),
        "left while busy"
    );
    drop(e);
    settle().await;
    assert!(
        !listed(rig.router.send(Snapshot).await.unwrap()),
        "stayed once drained"
    );
}

#[actix::test]
async fn idle_sessions_are_leased_from_the_routers_ticket_in_turn() {
    use super::messages::{Busy, ModelCooldown};
    let rig = Rig::new();
    rig.session(1, Scripted::new(0, vec![]));
    rig.session(2, Scripted::new(0, vec![]));
    settle().await;
    assert!(
        rig.tickets.lease("m").is_none(),
        "a ticket before any Acquire"
    );
    let acquire = |exclude: Option<u32>| rig.ask(exclude, None);
    let first = acquire(None).await.unwrap().unwrap().id;
    // Idle sessions still take turns, one request after another.
    let turns: Vec<SessionId> = (0..4)
        .map(|_| rig.tickets.lease("m").expect("no lease from the ticket").id)
        .collect();
    let other = SessionId(3 - first.0);
    assert_eq!(turns, vec![other, first, other, first]);
    // The ticket offers idle sessions only, counted where the Router counts.
    let a = rig.tickets.lease("m").expect("no lease from the ticket");
    let b = rig
        .tickets
        .lease("m")
        .expect("no second lease from the ticket");
    assert_ne!(a.id, b.id);
    assert_eq!(a.upstream_model.as_ref(), "m-up");
    assert!(rig.tickets.lease("m").is_none(), "leased a busy session");
    assert!(
        rig.tickets.lease("other").is_none(),
        "another model's ticket"
    );
    assert_eq!(rig.router.send(Busy).await.unwrap(), (2, 0));
    // The Router still fills each session to its max_concurrency of 2, and
    // no further.
    let (c, d) = (
        acquire(None).await.unwrap().unwrap(),
        acquire(None).await.unwrap().unwrap(),
    );
    let mut waiting = acquire(None);
    settle().await;
    assert!(waiting.try_recv().is_err(), "leased beyond max_concurrency");
    assert_eq!(rig.router.send(Busy).await.unwrap(), (4, 1));
    drop(a);
    let e = answered_within(waiting, Duration::from_millis(200)).await;
    drop((b, c, d, e));
    assert_eq!(rig.router.send(Busy).await.unwrap(), (0, 0));
    // A request waiting in the Router's queue comes before the ticket.
    let s2 = |rx: Asked| async {
        let lease: Lease = rx.await.unwrap().unwrap();
        assert_eq!(lease.id, SessionId(2));
        lease
    };
    let (f, g) = (s2(acquire(Some(1))).await, s2(acquire(Some(1))).await);
    let mut waiting = acquire(Some(1));
    settle().await;
    assert!(waiting.try_recv().is_err());
    assert!(rig.tickets.lease("m").is_none(), "jumped the queue");
    drop(f);
    let h = answered_within(waiting, Duration::from_millis(200)).await;
    drop((g, h));
    settle().await;
    assert!(
        rig.tickets.lease("m").is_some(),
        "no lease once the queue is empty"
    );
    // A cool-down withdraws the ticket; the next one leaves the session out.
    rig.router.do_send(ModelCooldown {
        id: SessionId(1),
        model: Arc::from("m-up"),
        until: tokio::time::Instant::now() + Duration::from_secs(60),
    });
    settle().await;
    assert!(
        rig.tickets.lease("m").is_none(),
        "the ticket outlived a cool-down"
    );
    drop(acquire(None).await.unwrap().unwrap());
    let held: Vec<Lease> = (0..2).filter_map(|_| rig.tickets.lease("m")).collect();
    assert_eq!(
        held.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![SessionId(2)]
    );
}

#[actix::test]
async fn a_session_due_its_trial_request_is_offered_by_the_ticket() {
    tokio::time::pause();
    let rig = Rig::new();
    let unavailable = || UpstreamError::new(ErrorKind::Unavailable, "502 from upstream");
    rig.session(1, Scripted::new(0, vec![unavailable(), unavailable()]));
    settle().await;
    for _ in 0..2 {
        assert!(rig.run().await.is_some());
        settle().await;
    }
    assert!(matches!(
        rig.state(1).await,
        SessionState::CoolingDown { .. }
    ));
    rig.session(2, Scripted::new(0, vec![]));
    settle().await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(rig.state(1).await, SessionState::Trial);
    drop(rig.lease().await.unwrap());
    // Taken and ended one after another: the turns reach the trial session.
    let got: Vec<SessionId> = (0..2)
        .map(|_| rig.tickets.lease("m").expect("no lease from the ticket").id)
        .collect();
    assert!(
        got.contains(&SessionId(1)),
        "the trial session was never offered: {got:?}"
    );
}

//! Where actors run. The Router and the sessions live on the HTTP worker
//! threads, not on threads of their own: a request whose handler, Router and
//! session share a thread never crosses one (with `workers = 1`, none does),
//! and on a small machine a thread hand-off (an eventfd wake, a context
//! switch) costs more than everything else a request does.
//!
//! The worker threads exist only once the server runs, so each worker joins
//! here when it builds its app; the Router, whose address handlers need from
//! the start, begins on the first worker to join, and the pools start once
//! every worker has joined.

use std::sync::Mutex;
use std::thread::ThreadId;

use actix::dev::channel::AddressReceiver;
use actix::prelude::*;
use actix::ArbiterHandle;
use tokio::sync::oneshot;

/// An actor whose address exists before it runs: messages sent to it wait
/// in its mailbox until `run` starts it on the current thread.
pub struct Deferred<A: Actor<Context = Context<A>>> {
    actor: A,
    rx: AddressReceiver<A>,
}

impl<A: Actor<Context = Context<A>>> Deferred<A> {
    pub fn new(actor: A) -> (Addr<A>, Self) {
        let (tx, rx) = actix::dev::channel::channel(16);
        (Addr::new(tx), Deferred { actor, rx })
    }

    /// The actor, to finish setting it up before it runs.
    pub fn actor_mut(&mut self) -> &mut A {
        &mut self.actor
    }

    /// Starts the actor on the current arbiter.
    pub fn run(self) -> Addr<A> {
        Context::with_receiver(self.rx).run(self.actor)
    }
}

type Start = Box<dyn FnOnce() + Send>;

struct Joined {
    threads: Vec<(ThreadId, ArbiterHandle)>,
    /// Started on the first worker to join.
    first: Option<Start>,
    /// Told the workers' arbiters once all have joined.
    all: Option<oneshot::Sender<Vec<ArbiterHandle>>>,
}

/// The HTTP workers, gathered as they start.
pub struct Placement {
    workers: usize,
    joined: Mutex<Joined>,
}

impl Placement {
    /// Expects `workers` threads; `first` runs on the first one to join.
    /// The receiver yields every worker's arbiter once all have joined.
    pub fn new(workers: usize, first: Start) -> (Self, oneshot::Receiver<Vec<ArbiterHandle>>) {
        let (tx, rx) = oneshot::channel();
        let placement = Placement {
            workers: workers.max(1),
            joined: Mutex::new(Joined {
                threads: Vec::new(),
                first: Some(first),
                all: Some(tx),
            }),
        };
        (placement, rx)
    }

    /// Called by each worker as it builds its app (more than once is fine).
    pub fn join(&self) {
        let Some(here) = Arbiter::try_current() else {
            return;
        };
        let id = std::thread::current().id();
        let mut j = match self.joined.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if j.threads.iter().any(|(t, _)| *t == id) {
            return;
        }
        j.threads.push((id, here));
        if let Some(first) = j.first.take() {
            first();
        }
        if j.threads.len() >= self.workers {
            if let Some(all) = j.all.take() {
                let _ = all.send(j.threads.iter().map(|(_, h)| h.clone()).collect());
            }
        }
    }
}

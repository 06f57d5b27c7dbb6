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
        let mut j = crate::support::sync::lock(&self.joined);
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Actor for Echo {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Double(u32);

    impl Handler<Double> for Echo {
        type Result = u32;
        fn handle(&mut self, msg: Double, _: &mut Context<Self>) -> u32 {
            msg.0 * 2
        }
    }

    #[actix::test]
    async fn messages_sent_before_the_actor_runs_are_answered_once_it_does() {
        let (addr, later) = Deferred::new(Echo);
        let early = addr.send(Double(21));
        let early = actix::spawn(early);
        tokio::task::yield_now().await;
        assert!(!early.is_finished(), "answered before the actor ran");
        later.run();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), early).await;
        assert_eq!(answer.unwrap().unwrap().unwrap(), 42);
        assert_eq!(addr.send(Double(2)).await.unwrap(), 4);
    }

    #[actix::test]
    async fn every_worker_joins_once_and_the_first_starts_the_deferred_work() {
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = started.clone();
        let (placement, all) = Placement::new(
            2,
            Box::new(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        let placement = std::sync::Arc::new(placement);
        placement.join();
        placement.join(); // the same thread again: no second entry
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = Arbiter::new();
        let p = placement.clone();
        other.spawn_fn(move || p.join());
        let arbiters = tokio::time::timeout(std::time::Duration::from_secs(5), all)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(arbiters.len(), 2);
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
        other.stop();
    }
}

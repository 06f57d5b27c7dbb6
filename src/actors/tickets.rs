//! Standing offers from the Router: the idle sessions a handler may lease
//! without a round trip to the Router.
//!
//! A lease normally costs an `Acquire` message to the Router and its reply.
//! When the handler runs on another thread than the Router, that is two
//! thread hand-offs for every request, each waking the other CPU when it
//! sleeps. So when the Router answers an `Acquire` for a model, it also
//! leaves a ticket for the model: the sessions it would pick when they are
//! idle (ready or due their trial request, the model not cooling down on
//! them, of the best priority on offer), in its order. The next request for the model leases the next idle one of them
//! itself, taking turns as the Router does, if no request waits in the
//! Router's queue; otherwise, and on retries and for conversations that
//! have a session of their own, it asks the Router as before.
//!
//! Only an idle session is taken this way, so the Router's least-loaded
//! choice stands: a ticket only stands in for the Router when some session
//! is idle, which is when the Router would pick one of the idle ones in
//! turn. Counts are the same atomics the Router reads, raised with a
//! compare-and-swap on both sides, so a session never runs more than its
//! `max_concurrency`. The Router withdraws every ticket when a session's
//! state, cool-down, registration or retirement changes, and issues new
//! ones on the next `Acquire`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use actix::Addr;

use super::messages::{Lease, Permit, SessionId};
use super::router::Router;
use super::session::Session;
use crate::support::sync::{read, write};

/// A session and the model name to send it: what a lease is made of.
#[derive(Clone)]
pub(super) struct Offer {
    pub session: Addr<Session>,
    pub id: SessionId,
    pub pool: Arc<str>,
    pub name: Arc<str>,
    pub upstream_model: Arc<str>,
    /// The slot's lease count, shared with the Router.
    pub in_flight: Arc<AtomicU32>,
    /// The session's `max_concurrency`.
    pub max: u32,
}

impl Offer {
    /// The lease on this session, its slot already claimed.
    pub fn into_lease(self, router: Addr<Router>, listening: Arc<AtomicBool>) -> Lease {
        Lease {
            session: self.session,
            id: self.id,
            pool: self.pool,
            session_name: self.name,
            upstream_model: self.upstream_model,
            max: self.max,
            _permit: Permit {
                router,
                id: self.id,
                in_flight: self.in_flight,
                listening,
            },
        }
    }
}

/// The idle sessions handlers may lease for one model.
pub(super) struct Ticket {
    pub router: Addr<Router>,
    pub listening: Arc<AtomicBool>,
    /// In the Router's order; empty when no session is open.
    pub offers: Vec<Offer>,
    /// Rotates among the offers, as the Router does among equals.
    pub turn: AtomicUsize,
}

/// The tickets, by model.
#[derive(Default)]
pub struct Tickets {
    by_model: RwLock<HashMap<Arc<str>, Ticket>>,
    /// Models some running session keeps conversations upstream for: a
    /// turn of theirs asks the cluster which account and handle hold it.
    stateful: RwLock<std::collections::HashSet<Arc<str>>>,
}

/// Raises a slot's count if it is below `cap`.
pub(super) fn claim(count: &AtomicU32, cap: u32) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

impl Tickets {
    /// Whether a session that keeps conversations upstream serves `model`.
    pub fn is_stateful(&self, model: &str) -> bool {
        read(&self.stateful).contains(model)
    }

    pub(super) fn mark_stateful(&self, models: impl IntoIterator<Item = Arc<str>>) {
        write(&self.stateful).extend(models);
    }

    /// A lease on an idle session of the ticket for `model`, if any.
    pub fn lease(&self, model: &str) -> Option<Lease> {
        let tickets = read(&self.by_model);
        let ticket = tickets.get(model)?;
        let n = ticket.offers.len();
        // Requests waiting in the Router's queue come first.
        if n == 0 || ticket.listening.load(Ordering::SeqCst) {
            return None;
        }
        let start = ticket.turn.fetch_add(1, Ordering::Relaxed);
        let offer = (0..n)
            .map(|k| &ticket.offers[(start + k) % n])
            .find(|o| claim(&o.in_flight, 1))?;
        Some(
            offer
                .clone()
                .into_lease(ticket.router.clone(), ticket.listening.clone()),
        )
    }

    /// Whether there is a ticket for `model` (possibly an empty one).
    pub(super) fn has(&self, model: &str) -> bool {
        read(&self.by_model).contains_key(model)
    }

    pub(super) fn issue(&self, model: Arc<str>, ticket: Ticket) {
        write(&self.by_model).insert(model, ticket);
    }

    /// Withdraws every ticket.
    pub(super) fn clear(&self) {
        let mut tickets = write(&self.by_model);
        if !tickets.is_empty() {
            tickets.clear();
        }
    }
}

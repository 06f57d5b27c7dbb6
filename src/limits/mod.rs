//! Per-client-key limits (`server.api_keys` entries with `rpm`, `tpm`,
//! `max_concurrency`, `models`).
//!
//! Rates use GCRA, the generic cell rate algorithm: each key keeps one
//! "theoretical arrival time" (TAT) per limit instead of a window of
//! timestamps. A request costs `60 s / rpm`; it is let in while the TAT it
//! would push stays within a minute of now, so a key may spend its whole
//! minute in a burst and then one request per interval. Tokens are known
//! only when an answer ends, so `tpm` works as a debt: an answer's tokens
//! push the TAT by `tokens × 60 s / tpm`, and a request is refused while
//! more than a minute of tokens is owed.
//!
//! This module is the one process's state; with a cluster the same rules
//! run as a Redis script ([`crate::cluster`]) and this state is the
//! fallback while Redis is away.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ApiKey;
use crate::support::sync::lock;

/// The window every rate is counted over.
pub(crate) const WINDOW_MS: f64 = 60_000.0;

/// Who a request comes from, as `server.api_keys` describes it.
#[derive(Debug)]
pub(crate) struct Client {
    /// The key's name, or `key-<n>`: a label in metrics, never the key.
    pub name: Arc<str>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u32>,
    /// Public model names it may use; `None`: every model.
    pub models: Option<HashSet<String>>,
}

impl Client {
    /// The client of the `index`th (0-based) configured key.
    pub(crate) fn of(index: usize, key: &ApiKey) -> Self {
        Client {
            name: key
                .name
                .clone()
                .unwrap_or_else(|| format!("key-{}", index + 1))
                .into(),
            rpm: key.rpm,
            tpm: key.tpm,
            max_concurrency: key.max_concurrency,
            models: key.models.as_ref().map(|m| m.iter().cloned().collect()),
        }
    }

    /// Whether any of its limits needs counting per request.
    pub(crate) fn limited(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_concurrency.is_some()
    }

    pub(crate) fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Requests(u32),
    Tokens(u64),
    Concurrency(u32),
}

impl Limit {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::Requests(_) => "rpm",
            Limit::Tokens(_) => "tpm",
            Limit::Concurrency(_) => "max_concurrency",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Requests(n) => write!(f, "{n} requests per minute (rpm)"),
            Limit::Tokens(n) => write!(f, "{n} tokens per minute (tpm)"),
            Limit::Concurrency(n) => write!(f, "{n} requests at once (max_concurrency)"),
        }
    }
}

/// A request a client's limits refused, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub client: Arc<str>,
    pub limit: Limit,
    pub retry_after: Duration,
}

/// A concurrency slot freed at the earliest when some request ends: this
/// is what a client is told to wait.
pub(crate) const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// The TAT after one more cost of `interval` ms at `now`, or the wait (ms)
/// before it would fit in the window.
pub(crate) fn gcra(tat: Option<f64>, now: f64, interval: f64) -> Result<f64, f64> {
    let next = tat.unwrap_or(now).max(now) + interval;
    if next - now > WINDOW_MS {
        Err(next - now - WINDOW_MS)
    } else {
        Ok(next)
    }
}

/// Whether a debt TAT (tokens) lets a request in, or the wait (ms).
pub(crate) fn owed(tat: Option<f64>, now: f64) -> Result<(), f64> {
    match tat {
        Some(t) if t - now > WINDOW_MS => Err(t - now - WINDOW_MS),
        _ => Ok(()),
    }
}

fn wait(ms: f64) -> Duration {
    Duration::from_millis(ms.max(1.0).ceil() as u64)
}

#[derive(Debug, Default)]
struct Bucket {
    requests: Option<f64>,
    tokens: Option<f64>,
    running: u32,
}

/// This process's count of every limited client, by name (so a reload
/// that keeps a name keeps its count).
#[derive(Debug)]
pub(crate) struct Limiter {
    epoch: Instant,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            epoch: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl Limiter {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }

    /// Lets a request of `client` in, or says which limit refuses it. The
    /// pass holds its concurrency slot and charges the answer's tokens
    /// when dropped.
    pub(crate) fn admit(self: &Arc<Self>, client: &Arc<Client>) -> Result<LocalPass, Refusal> {
        let now = self.now();
        let refuse = |limit, ms| Refusal {
            client: client.name.clone(),
            limit,
            retry_after: wait(ms),
        };
        let mut buckets = lock(&self.buckets);
        let b = buckets.entry(client.name.clone()).or_default();
        if let Some(max) = client.max_concurrency {
            if b.running >= max {
                return Err(Refusal {
                    client: client.name.clone(),
                    limit: Limit::Concurrency(max),
                    retry_after: CONCURRENCY_RETRY,
                });
            }
        }
        if let Some(tpm) = client.tpm {
            owed(b.tokens, now).map_err(|ms| refuse(Limit::Tokens(tpm), ms))?;
        }
        if let Some(rpm) = client.rpm {
            let tat = gcra(b.requests, now, WINDOW_MS / f64::from(rpm))
                .map_err(|ms| refuse(Limit::Requests(rpm), ms))?;
            b.requests = Some(tat);
        }
        b.running += 1;
        Ok(LocalPass {
            limiter: self.clone(),
            client: client.clone(),
            tokens: 0,
        })
    }

    fn leave(&self, client: &Client, tokens: u64) {
        let now = self.now();
        let mut buckets = lock(&self.buckets);
        if let Some(b) = buckets.get_mut(&client.name) {
            b.running = b.running.saturating_sub(1);
            if let (Some(tpm), true) = (client.tpm, tokens > 0) {
                let cost = tokens as f64 * WINDOW_MS / tpm as f64;
                b.tokens = Some(b.tokens.unwrap_or(now).max(now) + cost);
            }
        }
    }
}

/// A request let in by this process's [`Limiter`].
#[derive(Debug)]
pub(crate) struct LocalPass {
    limiter: Arc<Limiter>,
    client: Arc<Client>,
    tokens: u64,
}

impl LocalPass {
    /// The answer's tokens, charged when the pass is dropped.
    pub(crate) fn charge(&mut self, tokens: u64) {
        self.tokens = tokens;
    }
}

impl Drop for LocalPass {
    fn drop(&mut self) {
        self.limiter.leave(&self.client, self.tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(rpm: Option<u32>, tpm: Option<u64>, conc: Option<u32>) -> Arc<Client> {
        Arc::new(Client {
            name: "team".into(),
            rpm,
            tpm,
            max_concurrency: conc,
            models: None,
        })
    }

    #[test]
    fn a_minute_of_requests_in_a_burst_then_one_per_interval() {
        let l = Arc::new(Limiter::default());
        let c = client(Some(3), None, None);
        for _ in 0..3 {
            l.admit(&c).map(drop).expect("within rpm");
        }
        let r = l.admit(&c).expect_err("the fourth is over");
        assert_eq!(r.limit, Limit::Requests(3));
        // One interval is 20 s; nearly all of it is left to wait.
        assert!(r.retry_after > Duration::from_secs(19), "{r:?}");
        assert!(r.retry_after <= Duration::from_secs(20), "{r:?}");
    }

    #[test]
    fn concurrency_frees_when_a_pass_drops() {
        let l = Arc::new(Limiter::default());
        let c = client(None, None, Some(1));
        let first = l.admit(&c).expect("first");
        assert_eq!(
            l.admit(&c).expect_err("second at once").limit,
            Limit::Concurrency(1)
        );
        drop(first);
        l.admit(&c).expect("after the first ended");
    }

    #[test]
    fn tokens_are_a_debt_paid_over_a_minute() {
        let l = Arc::new(Limiter::default());
        let c = client(None, Some(1000), None);
        let mut p = l.admit(&c).expect("nothing owed");
        // More than a minute's worth: the next request must wait.
        p.charge(1500);
        drop(p);
        let r = l.admit(&c).expect_err("a minute and a half owed");
        assert_eq!(r.limit, Limit::Tokens(1000));
        assert!(r.retry_after > Duration::from_secs(29), "{r:?}");
        assert!(r.retry_after <= Duration::from_secs(30), "{r:?}");
    }

    #[test]
    fn gcra_refuses_with_the_wait() {
        assert_eq!(gcra(None, 0.0, 1000.0), Ok(1000.0));
        assert_eq!(gcra(Some(60_000.0), 0.0, 1000.0), Err(1000.0));
        assert_eq!(gcra(Some(10.0), 500.0, 1000.0), Ok(1500.0));
    }
}

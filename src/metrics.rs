//! Prometheus metrics. Labels are low-cardinality by construction: the
//! frontend, a configured model, pool or client key name, a status code, a state name,
//! an event or error kind; never a client-chosen string.

use std::sync::OnceLock;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric troupe exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by frontend, model, pool and final status.
    pub requests: IntCounterVec,
    /// Whole request time, by frontend.
    pub duration: HistogramVec,
    /// Time to the first byte of the answer, by frontend.
    pub first_token: HistogramVec,
    /// Time spent in troupe itself: total minus the time waiting on upstreams.
    pub overhead: HistogramVec,
    /// Tokens by direction (`in`, `out`) and model.
    pub tokens: IntCounterVec,
    /// Requests waiting for a free session now.
    pub queue_depth: IntGauge,
    /// How long requests waited for a session.
    pub queue_wait: Histogram,
    /// Sessions by pool and state, refreshed at each scrape.
    pub sessions: IntGaugeVec,
    /// Restarts, give-ups, cool-downs, refreshes... by pool and event.
    pub session_events: IntCounterVec,
    /// Session restarts by pool and reason (a closed set: `Cause`).
    pub session_restarts: IntCounterVec,
    /// Upstream failures by pool and kind.
    pub upstream_errors: IntCounterVec,
    /// Tasks that failed (panicked) where no error was expected, by where:
    /// `handler`, `stream`, `session`, `tokenizer`. Each one is a bug.
    pub task_failures: IntCounterVec,
    /// Token counts refused because the counting queue was full.
    pub tokenizer_busy: prometheus::IntCounter,
    /// 1 while this replica reaches the cluster's Redis (0 also without one).
    pub cluster_up: IntGauge,
    /// Cluster operations that fell back to this replica's own state.
    pub cluster_fallbacks: prometheus::IntCounter,
    /// Requests by client key name (`server.api_keys`) and final status.
    pub client_requests: IntCounterVec,
    /// Tokens by client key name and direction.
    pub client_tokens: IntCounterVec,
    /// Requests a client key's limits refused, by name and limit.
    pub client_refused: IntCounterVec,
}

/// Latency buckets from 1 ms to 5 min.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// troupe's own overhead is small: finer buckets from 50 µs.
const OVERHEAD: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("troupe".into()), None)?;
    let counter =
        |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
    let histogram = |name: &str,
                     help: &str,
                     buckets: &[f64],
                     labels: &[&str]|
     -> Result<HistogramVec, prometheus::Error> {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )?;
        registry.register(Box::new(h.clone()))?;
        Ok(h)
    };
    let requests = counter(
        "requests_total",
        "Requests by frontend, model, pool and status.",
        &["frontend", "model", "pool", "status"],
    )?;
    let duration = histogram(
        "request_duration_seconds",
        "Whole request time.",
        LATENCY,
        &["frontend"],
    )?;
    let first_token = histogram(
        "time_to_first_token_seconds",
        "Time to the first byte of the answer.",
        LATENCY,
        &["frontend"],
    )?;
    let overhead = histogram(
        "overhead_seconds",
        "Request time not spent waiting on upstreams.",
        OVERHEAD,
        &["frontend"],
    )?;
    let tokens = counter(
        "tokens_total",
        "Tokens by direction and model.",
        &["direction", "model"],
    )?;
    let session_events = counter(
        "session_events_total",
        "Restarts, give-ups, cool-downs, credential refreshes, resets.",
        &["pool", "event"],
    )?;
    let session_restarts = counter(
        "session_restarts_total",
        "Session restarts by pool and reason.",
        &["pool", "reason"],
    )?;
    let upstream_errors = counter(
        "upstream_errors_total",
        "Upstream failures by kind.",
        &["pool", "kind"],
    )?;
    let task_failures = counter(
        "task_failures_total",
        "Tasks that panicked, by where; the request got an error.",
        &["where"],
    )?;
    let client_requests = counter(
        "client_requests_total",
        "Requests by client key name (server.api_keys) and status.",
        &["client", "status"],
    )?;
    let client_tokens = counter(
        "client_tokens_total",
        "Tokens by client key name and direction.",
        &["client", "direction"],
    )?;
    let client_refused = counter(
        "client_refused_total",
        "Requests refused by a client key's limits, by name and limit.",
        &["client", "limit"],
    )?;
    let tokenizer_busy =
        prometheus::IntCounter::new("tokenizer_busy_total", "Token counts refused: queue full.")?;
    registry.register(Box::new(tokenizer_busy.clone()))?;
    let cluster_up = IntGauge::new(
        "cluster_redis_up",
        "1 while the cluster's Redis answers ([cluster] redis_url).",
    )?;
    registry.register(Box::new(cluster_up.clone()))?;
    let cluster_fallbacks = prometheus::IntCounter::new(
        "cluster_fallbacks_total",
        "Cluster operations that used this replica's own state: Redis slow or down.",
    )?;
    registry.register(Box::new(cluster_fallbacks.clone()))?;
    let queue_depth = IntGauge::new("queue_depth", "Requests waiting for a free session.")?;
    registry.register(Box::new(queue_depth.clone()))?;
    let queue_wait = Histogram::with_opts(
        HistogramOpts::new("queue_wait_seconds", "Time waiting for a session.")
            .buckets(LATENCY.to_vec()),
    )?;
    registry.register(Box::new(queue_wait.clone()))?;
    let sessions = IntGaugeVec::new(
        Opts::new("sessions", "Sessions by pool and state."),
        &["pool", "state"],
    )?;
    registry.register(Box::new(sessions.clone()))?;
    Ok(Metrics {
        registry,
        requests,
        duration,
        first_token,
        overhead,
        tokens,
        queue_depth,
        queue_wait,
        sessions,
        session_events,
        session_restarts,
        upstream_errors,
        task_failures,
        tokenizer_busy,
        cluster_up,
        cluster_fallbacks,
        client_requests,
        client_tokens,
        client_refused,
    })
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The process's metrics; `None` only if they could not be registered,
/// which leaves the gateway serving without them.
pub fn get() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "metrics unavailable");
                None
            }
        })
        .as_ref()
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Records a task that panicked (see [`Metrics::task_failures`]).
pub fn task_failed(place: &'static str) {
    if let Some(m) = get() {
        m.task_failures.with_label_values(&[place]).inc();
    }
}

//! One request's timings and outcome, recorded once when it ends: the
//! metrics, the request log line and the `x-troupe-overhead-ms` header all
//! come from here. A stream's trace travels into its body and is recorded
//! when the stream ends, or is dropped because the client left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;

use crate::canonical::Usage;

/// The request id header, read from the client or made up, and echoed.
pub const REQUEST_ID: &str = "x-request-id";
/// troupe's own share of the request time so far, in milliseconds.
pub const OVERHEAD_HEADER: &str = "x-troupe-overhead-ms";

/// Timings of one request.
#[derive(Debug)]
pub struct Trace {
    pub id: String,
    pub frontend: &'static str,
    /// The public model, once known to be served (never a client's free text).
    pub model: Option<String>,
    pub pool: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
    start: Instant,
    queue_wait: Duration,
    upstream: Duration,
    attempt_started: Option<Instant>,
    first_byte: Option<Instant>,
    pub attempts: u32,
    pub usage: Option<Usage>,
    /// Whose key the request presented (`None` when keyless).
    pub client: Option<Arc<crate::limits::Client>>,
    /// The request's place under its key's limits, given back (with the
    /// answer's tokens) when the trace finishes.
    pub pass: Option<super::dispatch::Pass>,
    /// Recording is this trace's duty (false once handed to a stream).
    armed: bool,
}

impl Trace {
    /// Starts timing a request; the id is the client's `x-request-id` if
    /// it is a sane one.
    pub fn start(req: &HttpRequest, frontend: &'static str) -> Self {
        let id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| random_id(""));
        Trace {
            id,
            frontend,
            model: None,
            pool: None,
            session: None,
            start: Instant::now(),
            queue_wait: Duration::ZERO,
            upstream: Duration::ZERO,
            attempt_started: None,
            first_byte: None,
            attempts: 0,
            usage: None,
            client: None,
            pass: None,
            armed: true,
        }
    }

    /// A lease came after waiting this long.
    pub fn queued(&mut self, wait: Duration) {
        self.queue_wait += wait;
        if let Some(m) = crate::metrics::get() {
            m.queue_wait.observe(wait.as_secs_f64());
        }
    }

    /// An attempt was handed to a session.
    pub fn upstream_begin(&mut self, pool: &Arc<str>, session: &Arc<str>) {
        self.attempts += 1;
        self.pool = Some(pool.clone());
        self.session = Some(session.clone());
        self.attempt_started = Some(Instant::now());
    }

    /// The current attempt's upstream work ended (answer over or failed).
    pub fn upstream_end(&mut self) {
        if let Some(t) = self.attempt_started.take() {
            self.upstream += t.elapsed();
        }
    }

    /// The first byte of the answer is about to be written.
    pub fn first_byte(&mut self) {
        self.first_byte.get_or_insert_with(Instant::now);
    }

    /// Time so far not spent waiting on an upstream.
    pub fn overhead(&self) -> Duration {
        let upstream = self.upstream + self.attempt_started.map_or(Duration::ZERO, |t| t.elapsed());
        self.start.elapsed().saturating_sub(upstream)
    }

    /// Never records (for requests that are not chat requests).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Moves the duty to record into the returned trace (a stream's body);
    /// this one keeps what the response headers need.
    pub fn hand_off(&mut self) -> Trace {
        self.armed = false;
        Trace {
            id: self.id.clone(),
            frontend: self.frontend,
            model: self.model.clone(),
            pool: self.pool.clone(),
            session: self.session.clone(),
            start: self.start,
            queue_wait: self.queue_wait,
            upstream: self.upstream,
            attempt_started: self.attempt_started,
            first_byte: self.first_byte,
            attempts: self.attempts,
            usage: self.usage,
            client: self.client.clone(),
            pass: self.pass.take(),
            armed: true,
        }
    }

    /// Adds the request id and overhead headers to a response, and records
    /// the request unless a stream body took over that duty.
    pub fn respond(&mut self, mut resp: actix_web::HttpResponse) -> actix_web::HttpResponse {
        use actix_web::http::header::{HeaderName, HeaderValue};
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            headers.insert(HeaderName::from_static(REQUEST_ID), v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&millis(self.overhead())) {
            headers.insert(HeaderName::from_static(OVERHEAD_HEADER), v);
        }
        let status = resp.status();
        self.finish(status.as_str());
        resp
    }

    /// Records the request: metrics and one log line. `status` is the HTTP
    /// status, or a word for streams (`stream_error`, `client_closed`).
    pub fn finish(&mut self, status: &str) {
        if !self.armed {
            return;
        }
        self.armed = false;
        self.upstream_end();
        let tokens = self
            .usage
            .as_ref()
            .map_or(0, |u| u64::from(u.prompt_total()) + u64::from(u.output));
        if let Some(mut pass) = self.pass.take() {
            pass.charge(tokens);
        }
        let total = self.start.elapsed();
        let overhead = total.saturating_sub(self.upstream);
        let ttft = self.first_byte.map(|t| t.duration_since(self.start));
        let model = self.model.as_deref().unwrap_or("-");
        let pool = self.pool.as_deref().unwrap_or("-");
        if let Some(m) = crate::metrics::get() {
            m.requests
                .with_label_values(&[self.frontend, model, pool, status])
                .inc();
            m.duration
                .with_label_values(&[self.frontend])
                .observe(total.as_secs_f64());
            m.overhead
                .with_label_values(&[self.frontend])
                .observe(overhead.as_secs_f64());
            if let Some(c) = &self.client {
                m.client_requests
                    .with_label_values(&[&c.name, status])
                    .inc();
                if let Some(u) = &self.usage {
                    m.client_tokens
                        .with_label_values(&[&c.name, "in"])
                        .inc_by(u64::from(u.prompt_total()));
                    m.client_tokens
                        .with_label_values(&[&c.name, "out"])
                        .inc_by(u64::from(u.output));
                }
            }
            if let Some(t) = ttft {
                m.first_token
                    .with_label_values(&[self.frontend])
                    .observe(t.as_secs_f64());
            }
            if let Some(u) = &self.usage {
                m.tokens
                    .with_label_values(&["in", model])
                    .inc_by(u64::from(u.prompt_total()));
                m.tokens
                    .with_label_values(&["out", model])
                    .inc_by(u64::from(u.output));
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "troupe::request",
            id = %self.id,
            frontend = self.frontend,
            model,
            pool,
            session = self.session.as_deref().unwrap_or("-"),
            status,
            total_ms = ms(total),
            ttft_ms = ttft.map(ms),
            overhead_ms = ms(overhead),
            queue_ms = ms(self.queue_wait),
            attempts = self.attempts,
            tokens_in = self.usage.map(|u| u.prompt_total()),
            tokens_out = self.usage.map(|u| u.output),
            "request"
        );
    }
}

pub use crate::support::ids::random_id;

/// `d` in milliseconds with three decimals (`12.345`), written without the
/// float formatting machinery: this is on every response.
fn millis(d: Duration) -> Vec<u8> {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut out = (micros / 1000).to_string().into_bytes();
    let frac = (micros % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    out
}

impl Drop for Trace {
    fn drop(&mut self) {
        // Dropped unrecorded: the client left mid-request.
        self.finish("client_closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_written_with_three_decimals() {
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (12_345, "12.345"),
            (1_000_050, "1000.050"),
            (999_999, "999.999"),
        ] {
            let d = Duration::from_micros(micros);
            assert_eq!(std::str::from_utf8(&millis(d)).unwrap(), text);
            assert_eq!(text, format!("{:.3}", micros as f64 / 1000.0));
        }
    }

    #[test]
    fn random_ids_are_prefixed_hex_and_differ() {
        let a = random_id("chatcmpl-");
        let b = random_id("chatcmpl-");
        assert_ne!(a, b);
        let hex = a.strip_prefix("chatcmpl-").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}

//! The SSE writer: turns an opened answer into a response body, with
//! keep-alive comments during silence, a total deadline, and the protocol's
//! error event when the answer breaks after the first byte.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponse;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use tokio::time::{Instant, Sleep};

use super::dispatch::Opened;
use super::trace::Trace;
use crate::canonical::{tokens, ChatEvent, ChatRequest, ErrorKind, UpstreamError};
pub use crate::protocol::EventEncoder;

/// Most events written in one body chunk when several are waiting.
const BATCH: usize = 32;

/// Room made for a chunk before its first event is written: most chunks
/// (one event's JSON and its SSE framing) are about 200 bytes.
const CHUNK: usize = 256;

struct State<E> {
    opened: Option<Opened>,
    /// Fires after `keepalive` of silence or at the deadline, whichever
    /// comes first. It is re-armed only when it fires: a write just moves
    /// `last`, so a busy stream does not touch the timer wheel.
    timer: Pin<Box<Sleep>>,
    /// When the stream last woke up to write.
    last: Instant,
    /// Turns true when a shutdown's drain time is over.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Recorded when the stream ends (or, if the client leaves, when dropped).
    trace: Trace,
    rx_done: bool,
    enc: E,
    req: Arc<ChatRequest>,
    keepalive: Duration,
    /// What the next body chunk is written into. It is handed to actix
    /// whole, memory and all (see [`State::chunk`]), so a stream waiting
    /// for its next event holds no buffer: with a buffer kept for reuse,
    /// every open stream kept 512 bytes.
    buf: BytesMut,
    /// The answer stopped, then its upstream failed: end it normally.
    whole: bool,
}

impl<E: EventEncoder> State<E> {
    /// Makes room for a chunk if the last one took the buffer.
    fn room(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK);
        }
    }

    /// What was written since the last chunk, with its memory. actix copies
    /// a chunk into the connection's buffer at once and drops it, so this
    /// costs one allocation per chunk and nothing between chunks.
    fn chunk(&mut self) -> Bytes {
        let written = Vec::from(std::mem::take(&mut self.buf));
        // Exact size: `Bytes` takes a boxed slice as it is, where a `Vec`
        // with room to spare would cost it another allocation (and mimalloc
        // shrinks a block in place when at least half of it stays).
        Bytes::from(written.into_boxed_slice())
    }

    fn write(&mut self, ev: &ChatEvent) {
        if let ChatEvent::Error(e) = ev {
            if self.enc.stopped() {
                // The upstream said the answer was over; what broke after
                // that (its usage, its end marker) is not worth an error to
                // a client that has the whole answer: it ends normally.
                tracing::debug!(error = %e, "upstream failed after the answer's stop");
                self.whole = true;
                return;
            }
        }
        self.room();
        self.enc.event(ev, &mut self.buf);
        if let ChatEvent::Error(e) = ev {
            self.end();
            self.trace.usage = self.enc.usage(&self.req);
            let status = if e.kind == crate::canonical::ErrorKind::Cancelled {
                "client_closed"
            } else {
                "stream_error"
            };
            self.trace.finish(status);
        }
    }

    /// Ends the answer: frees the session slot and closes the mailbox,
    /// which stops the upstream call if it is still running.
    fn end(&mut self) {
        self.rx_done = true;
        self.opened = None;
    }

    /// The protocol's normal end, with the usage counted off the workers
    /// if the upstream reported none.
    async fn finish(&mut self) {
        let req = self.req.clone();
        if let Some(tally) = self.enc.tally() {
            tally.settle(&req).await;
        }
        self.room();
        self.enc.finish(&req, &mut self.buf);
        self.end();
        self.trace.usage = self.enc.usage(&req);
        self.trace.finish("200");
    }

    fn fail(&mut self, e: UpstreamError) {
        self.enc
            .event(&ChatEvent::Error(Box::new(e)), &mut self.buf);
        self.end();
        self.trace.finish("stream_error");
    }
}

/// What woke the stream up.
enum Wake {
    Event(Option<ChatEvent>),
    Idle,
    Deadline,
    Shutdown,
}

/// The streaming body of an answer.
pub fn body<E: EventEncoder>(
    opened: Opened,
    enc: E,
    req: Arc<ChatRequest>,
    keepalive: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    trace: Trace,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let deadline = opened.deadline;
    let last = Instant::now();
    let state = State {
        timer: Box::pin(tokio::time::sleep_until((last + keepalive).min(deadline))),
        last,
        shutdown,
        trace,
        opened: Some(opened),
        rx_done: false,
        enc,
        req,
        keepalive,
        buf: BytesMut::new(),
        whole: false,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        // The events peeked before the answer was committed to (in `Opened`,
        // not kept twice: every byte of this state is kept per open stream).
        let head = match st.opened.as_mut() {
            Some(o) if !o.head.is_empty() => std::mem::take(&mut o.head),
            _ => Vec::new(),
        };
        if !head.is_empty() {
            let reported = head
                .iter()
                .any(|ev| matches!(ev, ChatEvent::Usage(u) if u.prompt_total() > 0));
            if st.enc.counts_prompt_first() && !reported {
                // Remembered in the request; the estimate if it cannot be made.
                // Boxed, as the one-off it is: inline, every open stream
                // would keep room for it.
                let _ = Box::pin(tokens::count_request(&st.req)).await;
            }
            for ev in head {
                st.write(&ev);
            }
            return Some((Ok(st.chunk()), st));
        }
        if st.rx_done {
            return None;
        }
        crate::canonical::fault::maybe_panic(&st.req, "stream");
        let opened = st.opened.as_mut()?;
        let next = loop {
            tokio::select! {
                ev = opened.rx.recv() => break Wake::Event(ev),
                _ = st.timer.as_mut() => {}
                _ = super::dispatch::draining(&mut st.shutdown) => break Wake::Shutdown,
            }
            let now = Instant::now();
            if now >= opened.deadline {
                break Wake::Deadline;
            }
            let quiet_until = st.last + st.keepalive;
            if now >= quiet_until {
                break Wake::Idle;
            }
            st.timer.as_mut().reset(quiet_until.min(opened.deadline));
        };
        st.last = Instant::now();
        if let Wake::Idle = next {
            st.timer
                .as_mut()
                .reset((st.last + st.keepalive).min(opened.deadline));
        }
        match next {
            Wake::Idle => {
                let ping = st.enc.keepalive();
                st.buf.extend_from_slice(ping);
            }
            Wake::Deadline => st.fail(UpstreamError::new(
                ErrorKind::Timeout,
                "the answer took longer than the request timeout",
            )),
            Wake::Shutdown => st.fail(UpstreamError::new(
                ErrorKind::Unavailable,
                "the gateway is shutting down",
            )),
            Wake::Event(Some(ev)) => {
                st.write(&ev);
                // Write whatever else is already waiting in one chunk.
                let mut n = 1;
                while n < BATCH && !st.rx_done && !st.whole {
                    let Some(opened) = st.opened.as_mut() else {
                        break;
                    };
                    match opened.rx.try_recv() {
                        Ok(ev) => {
                            st.write(&ev);
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                if st.whole {
                    Box::pin(st.finish()).await;
                }
            }
            Wake::Event(None) => {
                if st.enc.stopped() {
                    Box::pin(st.finish()).await;
                } else {
                    st.fail(UpstreamError::new(
                        ErrorKind::SessionLost,
                        "the upstream session ended before the answer did",
                    ));
                }
            }
        }
        Some((Ok(st.chunk()), st))
    });
    // A panic while writing would otherwise cut the stream with no end: the
    // client gets the protocol's error event instead, and the state, with
    // the session's lease, is dropped on the way.
    std::panic::AssertUnwindSafe(events)
        .catch_unwind()
        .map(|item| match item {
            Ok(item) => item,
            Err(panic) => {
                let message = crate::http::task_panicked("stream", panic.as_ref());
                let mut out = BytesMut::new();
                E::write_error(&UpstreamError::new(ErrorKind::Protocol, message), &mut out);
                Ok(out.freeze())
            }
        })
}

/// A `200 text/event-stream` response that proxies will not buffer.
pub fn response<S>(stream: S) -> HttpResponse
where
    S: Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    use actix_web::http::header::{HeaderName, HeaderValue, CACHE_CONTROL};
    // Static names and values: nothing to parse or copy per response.
    HttpResponse::Ok()
        .content_type(HeaderValue::from_static("text/event-stream"))
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ))
        .streaming(stream)
}

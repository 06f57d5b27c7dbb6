//! The encoder every client protocol implements for its streamed answers;
//! `http` drives it and writes its bytes.

use bytes::BytesMut;

use crate::canonical::answer::UsageTally;
use crate::canonical::{ChatEvent, ChatRequest, UpstreamError};

/// A protocol's way of writing events into an SSE body.
pub trait EventEncoder: 'static {
    /// Appends whatever `ev` becomes on the wire (an `Error` event becomes
    /// the protocol's error event).
    fn event(&mut self, ev: &ChatEvent, out: &mut BytesMut);
    /// Whether the answer reached its stop (so a normal end may follow).
    fn stopped(&self) -> bool;
    /// Appends the protocol's normal end.
    fn finish(&mut self, req: &ChatRequest, out: &mut BytesMut);
    /// The answer's usage, when the encoder knows it (for metrics).
    fn usage(&self, _req: &ChatRequest) -> Option<crate::canonical::Usage> {
        None
    }
    /// The encoder's usage tally, so its counts can be made off the HTTP
    /// workers before it writes them.
    fn tally(&mut self) -> Option<&mut UsageTally> {
        None
    }
    /// Whether the first event written carries the prompt's token count
    /// (Anthropic's `message_start`).
    fn counts_prompt_first(&self) -> bool {
        false
    }
    /// Appends the protocol's error event without the encoder's state: for
    /// a stream whose encoder was lost to a panic.
    fn write_error(e: &UpstreamError, out: &mut BytesMut)
    where
        Self: Sized;
    /// The keep-alive written after a silence.
    fn keepalive(&self) -> &'static [u8] {
        b": ping\n\n"
    }
}

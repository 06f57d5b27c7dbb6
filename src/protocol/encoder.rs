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

/// A tool call that started while another call's block (or item) was open:
/// written whole once that one is done, so blocks never overlap.
#[derive(Debug)]
pub(crate) struct HeldCall {
    pub index: u32,
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What a client encoder does with a tool-call event, given the call whose
/// block is open (if any): the ordering rule of the encoders whose blocks
/// are strictly sequential (Anthropic's, Responses'). Once a call's block is
/// open it stays open until the end, since any later fragment may still be
/// its own; calls that start meanwhile are held with their fragments.
#[derive(Debug, Default)]
pub(crate) struct CallOrder {
    held: Vec<HeldCall>,
}

/// Where a tool-call event goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CallRoute {
    /// Open a block for the call now.
    Open,
    /// Write the arguments into the open block.
    Write,
    /// Nothing to write now (held, or a repeated start).
    Hold,
    /// Arguments of a call never started: start one (with `id`), then route
    /// the arguments again.
    Orphan { id: String },
}

impl CallOrder {
    /// A call starts; `open` is the index of the call whose block is open.
    pub fn start(&mut self, open: Option<u32>, index: u32, id: &str, name: &str) -> CallRoute {
        if open == Some(index) || self.held.iter().any(|c| c.index == index) {
            // A repeated start of the same call adds nothing.
            CallRoute::Hold
        } else if open.is_some() {
            self.held.push(HeldCall {
                index,
                id: id.to_owned(),
                name: name.to_owned(),
                arguments: String::new(),
            });
            CallRoute::Hold
        } else {
            CallRoute::Open
        }
    }

    /// Argument text of call `index` (not empty); `id_prefix` names a call
    /// that never started.
    pub fn args(
        &mut self,
        open: Option<u32>,
        index: u32,
        json: &str,
        id_prefix: &str,
    ) -> CallRoute {
        if open == Some(index) {
            return CallRoute::Write;
        }
        match self.held.iter_mut().find(|c| c.index == index) {
            Some(call) => {
                call.arguments.push_str(json);
                CallRoute::Hold
            }
            None => CallRoute::Orphan {
                id: format!("{id_prefix}{index}"),
            },
        }
    }

    /// The held calls, in start order, to write whole at the end.
    pub fn take(&mut self) -> Vec<HeldCall> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_wait_while_another_call_is_open() {
        let mut order = CallOrder::default();
        assert_eq!(order.start(None, 0, "a", "f"), CallRoute::Open);
        assert_eq!(
            order.start(Some(0), 0, "a", "f"),
            CallRoute::Hold,
            "a repeated start"
        );
        assert_eq!(order.start(Some(0), 1, "b", "g"), CallRoute::Hold);
        assert_eq!(order.args(Some(0), 0, "{", "c_"), CallRoute::Write);
        assert_eq!(order.args(Some(0), 1, "{\"x\"", "c_"), CallRoute::Hold);
        assert_eq!(order.args(Some(0), 1, ":1}", "c_"), CallRoute::Hold);
        assert_eq!(
            order.args(Some(0), 7, "{}", "c_"),
            CallRoute::Orphan { id: "c_7".into() }
        );
        let held = order.take();
        assert_eq!(held.len(), 1);
        assert_eq!(
            (held[0].index, held[0].arguments.as_str()),
            (1, "{\"x\":1}")
        );
        assert!(order.take().is_empty());
    }
}

//! Folding an event stream into one answer (non-streaming responses) and
//! settling usage when the upstream reported none.

use std::sync::Arc;

use super::tokens;
use super::{ChatEvent, ChatRequest, StopReason, UpstreamError, Usage};

/// A tool call assembled from its start and argument fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallAcc {
    pub index: u32,
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A whole answer, folded from events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub thinking: String,
    pub signature: Option<String>,
    pub redacted_thinking: Vec<String>,
    /// The reasoning's `encrypted_content`, from an OpenAI Responses upstream.
    pub encrypted_reasoning: Option<String>,
    pub tool_calls: Vec<ToolCallAcc>,
    /// Blocks of an Anthropic upstream's answer that the canonical model
    /// does not carry, assembled (for an Anthropic client's whole answer),
    /// with the input JSON of each still arriving.
    pub anthropic_blocks: Vec<(serde_json::Value, String)>,
    /// Whether a passed-on block is being assembled (its deltas are its own).
    pub anthropic_open: bool,
    /// Citations of the text, from an Anthropic upstream's `citations_delta`s.
    pub text_citations: Vec<serde_json::Value>,
    pub stop: Option<StopReason>,
    /// The stop sequence that ended it, when the upstream said which.
    pub stop_sequence: Option<String>,
    /// Usage as the upstream reported it, if it did.
    pub reported_usage: Option<Usage>,
    /// The final usage, once [`Answer::settle_usage`] ran.
    pub settled: Option<Usage>,
}

impl Answer {
    /// Adds one event; an `Error` event is returned as the error.
    pub fn push(&mut self, ev: ChatEvent) -> Result<(), UpstreamError> {
        match ev {
            ChatEvent::Start { .. } => {}
            ChatEvent::TextDelta(t) => self.text.push_str(&t),
            ChatEvent::ThinkingDelta(t) => self.thinking.push_str(&t),
            ChatEvent::ThinkingSignature(s) => self.signature = Some(s),
            ChatEvent::RedactedThinking(d) => self.redacted_thinking.push(d),
            ChatEvent::EncryptedReasoning(d) => self.encrypted_reasoning = Some(d),
            ChatEvent::ToolCallStart { index, call } => {
                let super::event::ToolStart { id, name } = *call;
                self.tool_calls.push(ToolCallAcc {
                    index,
                    id,
                    name,
                    arguments: String::new(),
                })
            }
            ChatEvent::ToolCallArgsDelta { index, json } => {
                if let Some(call) = self.tool_calls.iter_mut().rev().find(|c| c.index == index) {
                    call.arguments.push_str(&json);
                }
            }
            ChatEvent::Usage(u) => self
                .reported_usage
                .get_or_insert_with(Usage::default)
                .merge(&u),
            ChatEvent::StopSequence(s) => self.stop_sequence = Some(s),
            ChatEvent::AnthropicBlock(json) => self.anthropic_block(&json),
            ChatEvent::Stop(r) => self.stop = Some(r),
            ChatEvent::Error(e) => return Err(*e),
        }
        Ok(())
    }

    /// Assembles a passed-on Anthropic block from its start, deltas and
    /// stop: input JSON, text and citations as Anthropic's own SDKs do.
    fn anthropic_block(&mut self, json: &str) {
        use serde_json::Value;
        let Ok(ev) = serde_json::from_str::<Value>(json) else {
            return;
        };
        match ev["type"].as_str() {
            Some("content_block_start") => {
                self.anthropic_open = true;
                self.anthropic_blocks
                    .push((ev["content_block"].clone(), String::new()));
            }
            // Outside a passed-on block: a citation of the text.
            Some("content_block_delta")
                if !self.anthropic_open && ev["delta"]["type"] == "citations_delta" =>
            {
                self.text_citations.push(ev["delta"]["citation"].clone());
            }
            Some("content_block_delta") if !self.anthropic_open => {}
            Some("content_block_delta") => {
                let Some((block, input)) = self.anthropic_blocks.last_mut() else {
                    return;
                };
                let d = &ev["delta"];
                match d["type"].as_str() {
                    Some("input_json_delta") => {
                        input.push_str(d["partial_json"].as_str().unwrap_or_default())
                    }
                    Some("text_delta") => {
                        let text = block["text"].as_str().unwrap_or_default().to_owned();
                        block["text"] =
                            Value::String(text + d["text"].as_str().unwrap_or_default());
                    }
                    Some("citations_delta") => {
                        if !block["citations"].is_array() {
                            block["citations"] = Value::Array(Vec::new());
                        }
                        if let Some(list) = block["citations"].as_array_mut() {
                            list.push(d["citation"].clone());
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_stop") => {
                self.anthropic_open = false;
                if let Some((block, input)) = self.anthropic_blocks.last_mut() {
                    if let Ok(v) = serde_json::from_str::<Value>(input) {
                        block["input"] = v;
                    }
                    input.clear();
                }
            }
            _ => {}
        }
    }

    /// The usage to report: settled by [`Answer::settle_usage`], else the
    /// upstream's, else counted here (in place only when cheap).
    pub fn usage(&self, req: &ChatRequest) -> Usage {
        match self.settled {
            Some(u) => u,
            None => self.tally().finish(req),
        }
    }

    /// Counts what the upstream did not report, off the HTTP workers when
    /// it is big, and keeps the result for [`Answer::usage`].
    pub async fn settle_usage(&mut self, req: &Arc<ChatRequest>) -> Usage {
        let mut tally = self.tally();
        tally.settle(req).await;
        let u = tally.finish(req);
        self.settled = Some(u);
        u
    }

    fn tally(&self) -> UsageTally {
        let mut tally = UsageTally::new(true);
        tally.reported = self.reported_usage;
        if !tally.has_output() {
            tally.generated.push_str(&self.text);
            tally.generated.push_str(&self.thinking);
            for c in &self.tool_calls {
                tally.generated.push_str(&c.name);
                tally.generated.push_str(&c.arguments);
            }
        }
        tally
    }
}

/// Tracks usage over a stream: keeps the upstream's report, or counts the
/// generated text when there is none. Nothing is kept when the client did
/// not ask for usage.
#[derive(Debug, Default)]
pub struct UsageTally {
    enabled: bool,
    reported: Option<Usage>,
    /// Generated text, counted at the end: BPE counts of separate deltas
    /// add up to more than the count of the whole text.
    generated: String,
    /// The count of `generated`, once [`UsageTally::settle`] made it.
    counted_output: Option<u32>,
}

impl UsageTally {
    /// A tally; `enabled == false` makes every call a no-op.
    pub fn new(enabled: bool) -> Self {
        UsageTally {
            enabled,
            ..Default::default()
        }
    }

    /// Looks at one event on its way to the client.
    pub fn observe(&mut self, ev: &ChatEvent) {
        if let ChatEvent::Usage(u) = ev {
            // Always kept: it costs nothing and feeds the metrics.
            self.reported.get_or_insert_with(Usage::default).merge(u);
            return;
        }
        if !self.enabled {
            return;
        }
        let text = match ev {
            ChatEvent::TextDelta(t) | ChatEvent::ThinkingDelta(t) => t,
            ChatEvent::ToolCallStart { call, .. } => &call.name,
            ChatEvent::ToolCallArgsDelta { json, .. } => json,
            _ => return,
        };
        if self.generated.capacity() == 0 {
            // Room for a short answer at once, not a growth per delta.
            self.generated.reserve(text.len().max(256));
        }
        self.generated.push_str(text);
    }

    /// The usage if it is known without extra work: counted when enabled,
    /// else what the upstream reported.
    pub fn known(&self, req: &ChatRequest) -> Option<Usage> {
        if self.enabled {
            Some(self.finish(req))
        } else {
            self.reported
        }
    }

    fn has_output(&self) -> bool {
        self.reported.is_some_and(|r| r.output > 0)
    }

    fn reported_input(&self) -> bool {
        self.reported.is_some_and(|u| u.prompt_total() > 0)
    }

    /// Input tokens: reported, else counted from the request (exact once
    /// [`tokens::count_request`] ran for it).
    pub fn input(&self, req: &ChatRequest) -> Usage {
        match self.reported {
            Some(u) if u.prompt_total() > 0 => u,
            _ => Usage {
                input: tokens::request_tokens_now(req),
                ..Usage::default()
            },
        }
    }

    /// Makes the counts [`UsageTally::finish`] will need, on the counting
    /// pool when they are big. A count that cannot be made (the pool is
    /// full) leaves the estimate: an answer never fails for its usage.
    pub async fn settle(&mut self, req: &Arc<ChatRequest>) {
        if !self.enabled {
            return;
        }
        if !self.reported_input() {
            let _ = tokens::count_request(req).await;
        }
        if !self.has_output() && self.counted_output.is_none() {
            let text = std::mem::take(&mut self.generated);
            let bytes = text.len();
            let n = tokens::count_text(text).await;
            self.counted_output = Some(n.unwrap_or_else(|_| tokens::estimate(bytes)));
        }
    }

    /// The final usage.
    pub fn finish(&self, req: &ChatRequest) -> Usage {
        let mut u = self.input(req);
        u.output = match (self.reported, self.counted_output) {
            (Some(r), _) if r.output > 0 => r.output,
            (_, Some(n)) => n,
            _ => tokens::count_text_now(&self.generated),
        };
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{ErrorKind, Message, Role};

    #[test]
    fn folds_text_tools_and_usage() {
        let mut a = Answer::default();
        for ev in [
            ChatEvent::Start { model: "m".into() },
            ChatEvent::TextDelta("Hel".into()),
            ChatEvent::TextDelta("lo".into()),
            ChatEvent::tool_call_start(0, "a".into(), "f".into()),
            ChatEvent::tool_call_start(1, "b".into(), "g".into()),
            ChatEvent::ToolCallArgsDelta {
                index: 0,
                json: "{}".into(),
            },
            ChatEvent::ToolCallArgsDelta {
                index: 1,
                json: "[1]".into(),
            },
            ChatEvent::Stop(StopReason::ToolUse),
        ] {
            a.push(ev).unwrap();
        }
        assert_eq!(a.text, "Hello");
        assert_eq!(a.tool_calls[0].arguments, "{}");
        assert_eq!(a.tool_calls[1].arguments, "[1]");
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "hello world")],
            ..Default::default()
        };
        let u = a.usage(&req);
        assert!(u.input > 0 && u.output > 0);
        a.push(ChatEvent::Usage(Usage {
            input: 9,
            output: 4,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            a.usage(&req),
            Usage {
                input: 9,
                output: 4,
                ..Default::default()
            }
        );
        let err = a.push(ChatEvent::Error(Box::new(UpstreamError::new(
            ErrorKind::Protocol,
            "x",
        ))));
        assert!(err.is_err());
    }

    #[tokio::test]
    async fn disabled_tally_counts_nothing() {
        let mut t = UsageTally::new(false);
        t.observe(&ChatEvent::TextDelta("hello".into()));
        assert!(t.generated.is_empty());
        assert_eq!(t.known(&ChatRequest::default()), None);
        t.observe(&ChatEvent::Usage(Usage {
            input: 3,
            output: 4,
            ..Default::default()
        }));
        assert_eq!(t.known(&ChatRequest::default()).map(|u| u.output), Some(4));
        let mut t = UsageTally::new(true);
        t.observe(&ChatEvent::TextDelta("hello ".into()));
        t.observe(&ChatEvent::TextDelta("world".into()));
        let req = Arc::new(ChatRequest::default());
        t.settle(&req).await;
        assert_eq!(t.finish(&req).output, 2);
    }
}

//! Writing the Anthropic wire format: canonical requests for `anthropic`
//! upstreams, and events as named SSE events or one message body for
//! Anthropic clients.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;

use bytes::{BufMut as _, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value};

use super::wire::{
    BlockOut, DeltaOut, ErrorOut, MessageDeltaOut, MessageOut, StreamEventOut, UsageOut,
};
use crate::canonical::{
    Answer, ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Role, StopReason,
    ToolChoice, UpstreamError, Usage, UsageTally,
};
use crate::protocol::EventEncoder;

// ---- upstream requests ----

/// `max_tokens` sent when the client gave none: Anthropic requires one, and
/// this is what its own SDK examples use.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The request body for an Anthropic upstream, borrowed from the canonical
/// request so the conversation is not copied.
#[derive(Serialize)]
pub struct UpstreamRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Cow<'a, str>>,
    messages: Vec<OutMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<OutMetadata<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Vec<OutBlock<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Text {
        text: &'a str,
    },
    Image {
        source: OutImageSource<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<OutBlock<'a>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct OutTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
}

#[derive(Serialize)]
struct OutToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Serialize)]
struct OutMetadata<'a> {
    user_id: &'a str,
}

/// Builds the upstream body, always streamed. Anthropic has no system role
/// inside `messages` and wants strictly alternating turns, so later system
/// messages join `system`, tool results become the user turn they answer,
/// and consecutive turns of one role are merged.
pub fn encode_request<'a>(req: &'a ChatRequest, upstream_model: &'a str) -> UpstreamRequest<'a> {
    let mut system: Option<Cow<'a, str>> = req
        .system
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(Cow::Borrowed);
    let mut messages: Vec<OutMessage<'a>> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::System => {
                for part in &m.content {
                    if let ContentPart::Text(t) = part {
                        if t.is_empty() {
                            continue;
                        }
                        match &mut system {
                            Some(s) => {
                                let s = s.to_mut();
                                s.push_str("\n\n");
                                s.push_str(t);
                            }
                            None => system = Some(Cow::Borrowed(t)),
                        }
                    }
                }
                continue;
            }
            Role::Assistant => "assistant",
            Role::User | Role::Tool => "user",
        };
        let blocks: Vec<OutBlock<'a>> = m.content.iter().filter_map(out_block).collect();
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(OutMessage {
                role,
                content: blocks,
            }),
        }
    }
    let s = &req.sampling;
    let has_tools = !req.tools.is_empty();
    let disable_parallel = (req.parallel_tool_calls == Some(false)).then_some(true);
    let tool_choice = if !has_tools {
        None
    } else {
        match (&req.tool_choice, disable_parallel) {
            (None, None) => None,
            (choice, disable) => {
                let (kind, name) = match choice {
                    None | Some(ToolChoice::Auto) => ("auto", None),
                    Some(ToolChoice::Required) => ("any", None),
                    Some(ToolChoice::None) => ("none", None),
                    Some(ToolChoice::Tool(n)) => ("tool", Some(n.as_str())),
                };
                Some(OutToolChoice {
                    kind,
                    name,
                    // Anthropic refuses the flag with `none`.
                    disable_parallel_tool_use: disable.filter(|_| kind != "none"),
                })
            }
        }
    };
    let max_tokens = s.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    UpstreamRequest {
        model: upstream_model,
        max_tokens,
        thinking: req
            .effective_thinking_budget(max_tokens)
            .map(|b| serde_json::json!({"type": "enabled", "budget_tokens": b})),
        system,
        messages,
        stream: true,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        stop_sequences: &s.stop,
        tools: req
            .tools
            .iter()
            .map(|t| OutTool {
                name: &t.name,
                description: t.description.as_deref(),
                input_schema: &t.parameters,
            })
            .collect(),
        tool_choice,
        metadata: req.user.as_deref().map(|user_id| OutMetadata { user_id }),
    }
}

/// One canonical part as an Anthropic block; `None` for what must not be
/// sent: empty text, and thinking without its signature, which Anthropic
/// rejects (it came from another provider or was never signed).
fn out_block(p: &ContentPart) -> Option<OutBlock<'_>> {
    Some(match p {
        ContentPart::Text(t) if t.is_empty() => return None,
        ContentPart::Text(t) => OutBlock::Text { text: t },
        ContentPart::Image(img) => OutBlock::Image {
            source: match img {
                ImageSource::Base64 { media_type, data } => {
                    OutImageSource::Base64 { media_type, data }
                }
                ImageSource::Url(url) => OutImageSource::Url { url },
            },
        },
        ContentPart::ToolCall {
            id,
            name,
            arguments,
        } => OutBlock::ToolUse {
            id,
            name,
            input: tool_input(arguments),
        },
        ContentPart::ToolResult {
            call_id,
            content,
            is_error,
        } => OutBlock::ToolResult {
            tool_use_id: call_id,
            content: content
                .iter()
                .filter(|p| matches!(p, ContentPart::Text(_) | ContentPart::Image(_)))
                .filter_map(out_block)
                .collect(),
            is_error: *is_error,
        },
        ContentPart::Thinking { text, signature } => match signature.as_deref() {
            Some(sig) if !sig.is_empty() => OutBlock::Thinking {
                thinking: text,
                signature: sig,
            },
            _ => return None,
        },
        ContentPart::RedactedThinking { data } => OutBlock::RedactedThinking { data },
    })
}

/// A tool call's arguments as the object Anthropic's `input` must be;
/// empty or unreadable arguments (a model's broken JSON) become `{}`.
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

// ---- client responses ----

/// Anthropic's `stop_reason` for a stop.
pub fn stop_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::End => "end_turn",
        StopReason::Length => "max_tokens",
        StopReason::ToolUse => "tool_use",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ContentFilter => "refusal",
    }
}

/// Canonical usage already keeps cached tokens apart, as Anthropic does.
pub fn usage_out(u: &Usage) -> UsageOut {
    UsageOut {
        input_tokens: u.input,
        output_tokens: u.output,
        cache_creation_input_tokens: u.cache_write,
        cache_read_input_tokens: u.cache_read,
    }
}

/// Anthropic's error `type` for a failure reported inside a stream.
pub fn stream_error_type(e: &UpstreamError) -> &'static str {
    match e.kind {
        ErrorKind::RateLimited | ErrorKind::Unavailable => "overloaded_error",
        _ => "api_error",
    }
}

/// The body of a non-streamed answer: thinking, text, then tool calls,
/// the order Anthropic models produce them in.
pub fn completion_body(answer: &Answer, req: &ChatRequest, id: &str) -> Vec<u8> {
    let mut content = Vec::with_capacity(2 + answer.tool_calls.len());
    if !answer.thinking.is_empty() || answer.signature.is_some() {
        content.push(BlockOut::Thinking {
            thinking: &answer.thinking,
            // Typed SDKs require the field; an empty one is dropped again
            // if the client sends this block back.
            signature: Some(answer.signature.as_deref().unwrap_or("")),
        });
    }
    for data in &answer.redacted_thinking {
        content.push(BlockOut::RedactedThinking { data });
    }
    if !answer.text.is_empty() {
        content.push(BlockOut::Text { text: &answer.text });
    }
    for call in &answer.tool_calls {
        content.push(BlockOut::ToolUse {
            id: &call.id,
            name: &call.name,
            input: tool_input(&call.arguments),
        });
    }
    let body = MessageOut {
        id,
        kind: "message",
        role: "assistant",
        model: &req.model,
        content,
        stop_reason: Some(stop_reason(answer.stop.unwrap_or(StopReason::End))),
        stop_sequence: None,
        usage: usage_out(&answer.usage(req)),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The kind of the content block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// `signed` once its signature went out: more thinking after that is a
    /// new block, or the signature would cover the wrong text.
    Thinking {
        signed: bool,
    },
    Tool(u32),
    RedactedThinking,
}

/// Encodes events as Anthropic's named SSE events: `message_start` before
/// the first content, one content block per text, thinking or tool call
/// run with indexes counting up, and `message_delta` + `message_stop` at
/// the end. The `message_delta` is written by [`EventEncoder::finish`], not
/// at `Stop`, because the final usage arrives after the stop.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    req: Arc<ChatRequest>,
    started: bool,
    /// The open block and its index.
    open: Option<(usize, Block)>,
    next_block: usize,
    /// Canonical tool call index → content block index.
    tool_blocks: Vec<(u32, usize)>,
    stop: Option<StopReason>,
    failed: bool,
    tally: UsageTally,
}

impl StreamEncoder {
    /// An encoder for the answer to `req`, whose public model name and
    /// prompt (for counting input tokens the upstream did not report) it
    /// needs before the end.
    pub fn new(id: String, req: Arc<ChatRequest>) -> Self {
        StreamEncoder {
            id,
            req,
            started: false,
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            stop: None,
            failed: false,
            tally: UsageTally::new(true),
        }
    }

    fn write(out: &mut BytesMut, ev: &StreamEventOut<'_>) {
        out.put_slice(b"event: ");
        out.put_slice(ev.name().as_bytes());
        out.put_slice(b"\ndata: ");
        let mut w = out.writer();
        // Writing to memory cannot fail; serialization of these types cannot either.
        let _ = serde_json::to_writer(&mut w, ev);
        let _ = w.write_all(b"\n\n");
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let mut usage = usage_out(&self.tally.input(&self.req));
        // The real count comes with `message_delta`.
        usage.output_tokens = 0;
        Self::write(
            out,
            &StreamEventOut::MessageStart {
                message: MessageOut {
                    id: &self.id,
                    kind: "message",
                    role: "assistant",
                    model: &self.req.model,
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage,
                },
            },
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            Self::write(out, &StreamEventOut::ContentBlockStop { index });
        }
    }

    /// Opens a new block, closing the one before.
    fn open_block(
        &mut self,
        block: Block,
        content_block: BlockOut<'_>,
        out: &mut BytesMut,
    ) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        Self::write(
            out,
            &StreamEventOut::ContentBlockStart {
                index,
                content_block,
            },
        );
        self.open = Some((index, block));
        index
    }

    /// The open text block, or a new one.
    fn text_block(&mut self, out: &mut BytesMut) -> usize {
        match self.open {
            Some((index, Block::Text)) => index,
            _ => self.open_block(Block::Text, BlockOut::Text { text: "" }, out),
        }
    }

    /// The open unsigned thinking block, or a new one.
    fn thinking_block(&mut self, out: &mut BytesMut) -> usize {
        match self.open {
            Some((index, Block::Thinking { signed: false })) => index,
            _ => self.open_block(
                Block::Thinking { signed: false },
                BlockOut::Thinking {
                    thinking: "",
                    signature: None,
                },
                out,
            ),
        }
    }

    fn tool_block(&mut self, index: u32, id: &str, name: &str, out: &mut BytesMut) -> usize {
        let block = self.open_block(
            Block::Tool(index),
            BlockOut::ToolUse {
                id,
                name,
                input: Value::Object(Map::new()),
            },
            out,
        );
        self.tool_blocks.retain(|(i, _)| *i != index);
        self.tool_blocks.push((index, block));
        block
    }

    fn delta(index: usize, delta: DeltaOut<'_>, out: &mut BytesMut) {
        Self::write(out, &StreamEventOut::ContentBlockDelta { index, delta });
    }

    fn error(&mut self, e: &UpstreamError, out: &mut BytesMut) {
        self.failed = true;
        Self::write_error(e, out);
    }

    /// Appends an `error` event; needs no state, so it can end a stream
    /// whose encoder is gone.
    pub fn write_error(e: &UpstreamError, out: &mut BytesMut) {
        Self::write(
            out,
            &StreamEventOut::Error {
                error: ErrorOut {
                    kind: stream_error_type(e),
                    message: &e.message,
                },
            },
        );
    }
}

impl EventEncoder for StreamEncoder {
    fn usage(&self, req: &ChatRequest) -> Option<Usage> {
        Some(self.tally.finish(req))
    }

    fn tally(&mut self) -> Option<&mut crate::canonical::UsageTally> {
        Some(&mut self.tally)
    }

    fn counts_prompt_first(&self) -> bool {
        true
    }

    fn write_error(e: &UpstreamError, out: &mut BytesMut) {
        Self::write_error(e, out)
    }

    fn event(&mut self, ev: &ChatEvent, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        self.tally.observe(ev);
        if ev.is_preamble() {
            return;
        }
        if let ChatEvent::Error(e) = ev {
            self.error(e, out);
            return;
        }
        self.start(out);
        match ev {
            ChatEvent::TextDelta(t) => {
                if !t.is_empty() {
                    let index = self.text_block(out);
                    Self::delta(index, DeltaOut::TextDelta { text: t }, out);
                }
            }
            ChatEvent::ThinkingDelta(t) => {
                if !t.is_empty() {
                    let index = self.thinking_block(out);
                    Self::delta(index, DeltaOut::ThinkingDelta { thinking: t }, out);
                }
            }
            ChatEvent::ThinkingSignature(s) => {
                let index = self.thinking_block(out);
                Self::delta(index, DeltaOut::SignatureDelta { signature: s }, out);
                self.open = Some((index, Block::Thinking { signed: true }));
            }
            ChatEvent::RedactedThinking(data) => {
                self.open_block(
                    Block::RedactedThinking,
                    BlockOut::RedactedThinking { data },
                    out,
                );
                self.close(out);
            }
            ChatEvent::ToolCallStart { index, id, name } => {
                self.tool_block(*index, id, name, out);
            }
            ChatEvent::ToolCallArgsDelta { index, json } => {
                let block = match self.tool_blocks.iter().find(|(i, _)| i == index) {
                    Some((_, b)) => *b,
                    // Arguments without a start: give the call a block
                    // rather than drop its input.
                    None => self.tool_block(*index, &format!("toolu_{index}"), "", out),
                };
                // A call streamed after a later one started (rare) still
                // names its own block: clients assemble blocks by index.
                Self::delta(block, DeltaOut::InputJsonDelta { partial_json: json }, out);
            }
            ChatEvent::Stop(r) => {
                if self.stop.is_none() {
                    self.stop = Some(*r);
                }
                self.close(out);
            }
            ChatEvent::Start { .. } | ChatEvent::Usage(_) | ChatEvent::Error(_) => {}
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_some()
    }

    /// Closes the open block and writes `message_delta` (stop reason and
    /// final usage) and `message_stop`.
    fn finish(&mut self, req: &ChatRequest, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        self.start(out);
        self.close(out);
        Self::write(
            out,
            &StreamEventOut::MessageDelta {
                delta: MessageDeltaOut {
                    stop_reason: Some(stop_reason(self.stop.unwrap_or(StopReason::End))),
                    stop_sequence: None,
                },
                usage: usage_out(&self.tally.finish(req)),
            },
        );
        Self::write(out, &StreamEventOut::MessageStop);
    }

    fn keepalive(&self) -> &'static [u8] {
        b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::answer::ToolCallAcc;
    use crate::canonical::{Message, Tool};
    use serde_json::json;

    /// Splits an SSE body into (event name, parsed data) pairs.
    fn sse_events(buf: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(buf)
            .unwrap()
            .split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (ev, data) = s.split_once('\n').unwrap();
                let name = ev.strip_prefix("event: ").unwrap().to_owned();
                let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                (name, data)
            })
            .collect()
    }

    fn request() -> Arc<ChatRequest> {
        Arc::new(ChatRequest {
            model: "public".into(),
            messages: vec![Message::text(Role::User, "hello world")],
            ..Default::default()
        })
    }

    fn encode(events: &[ChatEvent], finish: bool) -> Vec<(String, Value)> {
        let req = request();
        let mut enc = StreamEncoder::new("msg_1".into(), req.clone());
        let mut out = BytesMut::new();
        for ev in events {
            enc.event(ev, &mut out);
        }
        if finish {
            assert!(enc.stopped());
            enc.finish(&req, &mut out);
        }
        sse_events(&out)
    }

    #[test]
    fn stream_follows_anthropic_event_order() {
        let evs = encode(
            &[
                ChatEvent::Start { model: "up".into() },
                ChatEvent::Usage(Usage {
                    input: 12,
                    cache_read: 5,
                    ..Default::default()
                }),
                ChatEvent::ThinkingDelta("hmm".into()),
                ChatEvent::ThinkingSignature("sig".into()),
                ChatEvent::TextDelta("Hi".into()),
                ChatEvent::TextDelta(" there".into()),
                ChatEvent::ToolCallStart {
                    index: 0,
                    id: "t1".into(),
                    name: "f".into(),
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "{\"a\":".into(),
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "1}".into(),
                },
                ChatEvent::ToolCallStart {
                    index: 1,
                    id: "t2".into(),
                    name: "g".into(),
                },
                ChatEvent::Stop(StopReason::ToolUse),
                ChatEvent::Usage(Usage {
                    output: 9,
                    ..Default::default()
                }),
            ],
            true,
        );
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &evs {
            assert_eq!(data["type"], json!(name), "event name matches type");
        }
        assert_eq!(
            evs[0].1,
            json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "public",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 0,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5}}})
        );
        assert_eq!(
            evs[1].1["content_block"],
            json!({"type": "thinking", "thinking": ""})
        );
        assert_eq!(
            evs[3].1["delta"],
            json!({"type": "signature_delta", "signature": "sig"})
        );
        assert_eq!(
            evs[7].1,
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " there"}})
        );
        assert_eq!(
            evs[9].1,
            json!({"type": "content_block_start", "index": 2,
                   "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}})
        );
        assert_eq!(
            evs[11].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "1}"})
        );
        assert_eq!(evs[13].1["index"], 3);
        assert_eq!(
            evs[15].1,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 12, "output_tokens": 9,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5}})
        );
    }

    #[test]
    fn input_tokens_are_counted_when_not_reported() {
        let evs = encode(
            &[
                ChatEvent::Start { model: "up".into() },
                ChatEvent::TextDelta("Hi".into()),
                ChatEvent::Stop(StopReason::End),
            ],
            true,
        );
        let counted = crate::canonical::tokens::request_tokens_now(&request());
        assert!(counted > 0);
        assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], json!(counted));
        let last = &evs[evs.len() - 2].1;
        assert_eq!(last["delta"]["stop_reason"], "end_turn");
        assert_eq!(last["usage"]["output_tokens"], 1);
    }

    #[test]
    fn stop_reasons_map() {
        for (r, want) in [
            (StopReason::End, "end_turn"),
            (StopReason::Length, "max_tokens"),
            (StopReason::ToolUse, "tool_use"),
            (StopReason::StopSequence, "stop_sequence"),
            (StopReason::ContentFilter, "refusal"),
        ] {
            assert_eq!(stop_reason(r), want);
        }
    }

    #[test]
    fn signed_thinking_then_more_thinking_opens_a_new_block() {
        let evs = encode(
            &[
                ChatEvent::ThinkingDelta("a".into()),
                ChatEvent::ThinkingSignature("s1".into()),
                ChatEvent::ThinkingDelta("b".into()),
                ChatEvent::ThinkingSignature("s2".into()),
                ChatEvent::RedactedThinking("enc".into()),
                ChatEvent::Stop(StopReason::End),
            ],
            true,
        );
        let starts: Vec<&Value> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts.len(), 3);
        assert_eq!(starts[1]["index"], 1);
        assert_eq!(
            starts[2]["content_block"],
            json!({"type": "redacted_thinking", "data": "enc"})
        );
    }

    #[test]
    fn errors_after_the_start_end_the_stream() {
        let req = request();
        let mut enc = StreamEncoder::new("msg_1".into(), req.clone());
        let mut out = BytesMut::new();
        enc.event(&ChatEvent::TextDelta("Hi".into()), &mut out);
        let mut e = UpstreamError::new(ErrorKind::RateLimited, "slow down");
        e.status = Some(429);
        enc.event(&ChatEvent::Error(Box::new(e)), &mut out);
        enc.event(&ChatEvent::TextDelta("more".into()), &mut out);
        enc.finish(&req, &mut out);
        let evs = sse_events(&out);
        assert_eq!(evs.len(), 4);
        assert_eq!(
            evs[3],
            (
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "slow down"}})
            )
        );
        let e = UpstreamError::new(ErrorKind::Protocol, "broken");
        assert_eq!(stream_error_type(&e), "api_error");
        assert_eq!(
            enc.keepalive(),
            b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
        );
    }

    #[test]
    fn completion_body_has_blocks_and_usage() {
        let answer = Answer {
            text: "Hi".into(),
            thinking: "hmm".into(),
            signature: Some("sig".into()),
            redacted_thinking: vec![],
            tool_calls: vec![
                ToolCallAcc {
                    index: 0,
                    id: "t1".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                },
                ToolCallAcc {
                    index: 1,
                    id: "t2".into(),
                    name: "g".into(),
                    arguments: "{broken".into(),
                },
            ],
            stop: Some(StopReason::ToolUse),
            reported_usage: Some(Usage {
                input: 10,
                output: 4,
                cache_read: 3,
                cache_write: 2,
            }),
            ..Default::default()
        };
        let body: Value =
            serde_json::from_slice(&completion_body(&answer, &request(), "msg_1")).unwrap();
        assert_eq!(
            body,
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "public",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Hi"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "t2", "name": "g", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 4,
                          "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}
            })
        );
    }

    #[test]
    fn upstream_body_merges_turns_and_drops_unsigned_thinking() {
        let tool_result = |id: &str, text: &str| Message {
            role: Role::Tool,
            content: vec![ContentPart::ToolResult {
                call_id: id.into(),
                content: vec![ContentPart::Text(text.into())],
                is_error: id == "c2",
            }],
            name: None,
        };
        let req = ChatRequest {
            model: "public".into(),
            system: Some("sys".into()),
            messages: vec![
                Message::text(Role::User, "q"),
                Message::text(Role::User, ""),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentPart::Thinking {
                            text: "unsigned".into(),
                            signature: None,
                        },
                        ContentPart::Thinking {
                            text: "signed".into(),
                            signature: Some("sig".into()),
                        },
                        ContentPart::Text(String::new()),
                        ContentPart::ToolCall {
                            id: "c1".into(),
                            name: "f".into(),
                            arguments: String::new(),
                        },
                        ContentPart::ToolCall {
                            id: "c2".into(),
                            name: "f".into(),
                            arguments: r#"{"x":2}"#.into(),
                        },
                    ],
                    name: None,
                },
                tool_result("c1", "one"),
                tool_result("c2", "two"),
                Message::text(Role::User, "and?"),
                Message::text(Role::System, "later"),
                Message::text(Role::User, "more"),
            ],
            tools: vec![Tool {
                name: "f".into(),
                description: Some("d".into()),
                parameters: json!({"type": "object"}),
            }],
            parallel_tool_calls: Some(false),
            user: Some("u1".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(encode_request(&req, "claude-up")).unwrap();
        assert_eq!(
            v,
            json!({
                "model": "claude-up",
                "max_tokens": 4096,
                "system": "sys\n\nlater",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "signed", "signature": "sig"},
                        {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
                        {"type": "tool_use", "id": "c2", "name": "f", "input": {"x": 2}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "one"}]},
                        {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "two"}], "is_error": true},
                        {"type": "text", "text": "and?"},
                        {"type": "text", "text": "more"}
                    ]}
                ],
                "stream": true,
                "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "u1"}
            })
        );
        let mut req = req;
        req.tool_choice = Some(ToolChoice::Tool("f".into()));
        req.parallel_tool_calls = None;
        req.sampling.max_tokens = Some(7);
        req.sampling.top_k = Some(3);
        req.sampling.stop = vec!["X".into()];
        let v = serde_json::to_value(encode_request(&req, "claude-up")).unwrap();
        assert_eq!(v["tool_choice"], json!({"type": "tool", "name": "f"}));
        assert_eq!(
            (&v["max_tokens"], &v["top_k"], &v["stop_sequences"]),
            (&json!(7), &json!(3), &json!(["X"]))
        );
        req.tools.clear();
        let v = serde_json::to_value(encode_request(&req, "claude-up")).unwrap();
        assert!(v.get("tool_choice").is_none() && v.get("tools").is_none());
    }

    #[test]
    fn images_keep_their_source_kind() {
        let req = ChatRequest {
            messages: vec![Message {
                role: Role::User,
                content: vec![
                    ContentPart::Image(ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "AA==".into(),
                    }),
                    ContentPart::Image(ImageSource::Url("https://x/y.png".into())),
                ],
                name: None,
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(encode_request(&req, "m")).unwrap();
        assert_eq!(
            v["messages"][0]["content"],
            json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
            ])
        );
    }
}

//! Anthropic Messages, client side: what upstreams of this protocol get (the
//! request, encoded from the canonical one) and what they stream back
//! (decoded into canonical events).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use super::wire::{ErrorBodyIn, MessageIn, ResponseBlockIn, StreamEventIn, UsageIn};
use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Role, StopReason, ToolChoice,
    UpstreamError, Usage,
};

/// The upstream body made from an Anthropic client's own: only `model`
/// and `stream` change (the upstream call always streams), and
/// `max_tokens` is added if missing, as [`encode_request`] does. Every
/// other field (system blocks, `cache_control` where it was, fields this
/// gateway does not know) travels as the client wrote it.
pub fn encode_native(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, serde_json::Error> {
    use serde_json::value::to_raw_value;
    let model = to_raw_value(upstream_model)?;
    let yes = to_raw_value(&true)?;
    let max_tokens = to_raw_value(&DEFAULT_MAX_TOKENS)?;
    let mut members = crate::protocol::members(body)?;
    // `null` is read as absent here; Anthropic refuses it.
    members.retain(|(_, v)| v.get() != "null");
    crate::protocol::set_member(&mut members, "model", &model);
    crate::protocol::set_member(&mut members, "stream", &yes);
    if !members.iter().any(|(k, _)| k == "max_tokens") {
        members.push(("max_tokens".into(), &max_tokens));
    }
    Ok(crate::protocol::write_members(&members))
}

/// Whether the client's own body can go to an Anthropic upstream as it
/// is: not when it hands back thinking without a signature (from another
/// kind of upstream), which Anthropic refuses and [`encode_request`] drops.
pub fn native_ok(req: &ChatRequest) -> bool {
    !req.messages.iter().any(|m| {
        m.content.iter().any(|p| {
            matches!(p, ContentPart::Thinking { signature, .. }
                if signature.as_deref().is_none_or(str::is_empty))
        })
    })
}

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
        // Only an OpenAI Responses upstream reads its own reasoning.
        ContentPart::EncryptedReasoning { .. } => return None,
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

// ---- what upstreams stream back ----

/// Turns an Anthropic server's stream events into canonical events. Tool
/// calls are numbered by their order among the message's `tool_use`
/// blocks, not by content block index, so they line up with OpenAI's
/// `tool_calls[i].index` whatever text or thinking sits between them.
#[derive(Debug, Default)]
pub struct EventDecoder {
    /// Content block index → tool call index, for the open tool blocks.
    tool_blocks: Vec<(u32, u32)>,
    /// Blocks of types the canonical model does not carry, passed on as
    /// they came ([`ChatEvent::AnthropicBlock`]).
    opaque_blocks: Vec<u32>,
    next_tool: u32,
    stopped: bool,
    done: bool,
    content: bool,
}

/// The content blocks the canonical model carries; others travel opaque.
const KNOWN_BLOCKS: &[&str] = &["text", "tool_use", "thinking", "redacted_thinking"];

impl EventDecoder {
    /// Decodes one SSE event's `data` into `out`. An upstream `error` event
    /// is returned as the error.
    pub fn decode(&mut self, data: &str, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        let ev: StreamEventIn = serde_json::from_str(data).map_err(|e| {
            UpstreamError::new(
                ErrorKind::Protocol,
                format!("upstream sent an unreadable event: {e}"),
            )
        })?;
        let before = out.len();
        match ev {
            StreamEventIn::MessageStart { message } => {
                if let Some(u) = message.usage {
                    // `output_tokens` here is a placeholder; the real count
                    // comes with `message_delta`.
                    let mut usage = usage_from_wire(&u);
                    usage.output = 0;
                    if usage != Usage::default() {
                        out.push(ChatEvent::Usage(usage));
                    }
                }
                // A message_start with content already in it (some proxies
                // send whole messages this way).
                for (i, b) in message.content.into_iter().enumerate() {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    self.block_start(index, b, out);
                }
            }
            StreamEventIn::ContentBlockStart {
                index,
                content_block,
            } => {
                if !KNOWN_BLOCKS.contains(&content_block.kind.as_str()) {
                    self.opaque_blocks.push(index);
                    out.push(ChatEvent::AnthropicBlock(data.into()));
                }
                self.block_start(index, content_block, out)
            }
            StreamEventIn::ContentBlockDelta { index, .. }
                if self.opaque_blocks.contains(&index) =>
            {
                out.push(ChatEvent::AnthropicBlock(data.into()));
            }
            StreamEventIn::ContentBlockStop { index: Some(index) }
                if self.opaque_blocks.contains(&index) =>
            {
                out.push(ChatEvent::AnthropicBlock(data.into()));
            }
            StreamEventIn::ContentBlockDelta { index, delta } => match delta.kind.as_str() {
                "text_delta" => push_text(delta.text, out),
                "input_json_delta" => {
                    if let Some(json) = delta.partial_json.filter(|j| !j.is_empty()) {
                        let tool = self.tool_index(index).ok_or_else(|| {
                            UpstreamError::new(
                                ErrorKind::Protocol,
                                format!("upstream sent tool input for block {index}, which is not a tool_use block"),
                            )
                        })?;
                        out.push(ChatEvent::ToolCallArgsDelta { index: tool, json });
                    }
                }
                "thinking_delta" => {
                    if let Some(t) = delta.thinking.filter(|t| !t.is_empty()) {
                        out.push(ChatEvent::ThinkingDelta(t));
                    }
                }
                "signature_delta" => {
                    if let Some(s) = delta.signature.filter(|s| !s.is_empty()) {
                        out.push(ChatEvent::ThinkingSignature(s));
                    }
                }
                // A citation of the text block: passed on as it came, for
                // Anthropic clients.
                "citations_delta" => out.push(ChatEvent::AnthropicBlock(data.into())),
                // Later additions carry nothing the canonical model holds.
                _ => {}
            },
            StreamEventIn::ContentBlockStop { .. } | StreamEventIn::Ping => {}
            StreamEventIn::MessageDelta { delta, usage } => {
                if let Some(d) = delta {
                    if let Some(s) = d.stop_sequence {
                        out.push(ChatEvent::StopSequence(s));
                    }
                    if let Some(reason) = d.stop_reason {
                        self.stopped = true;
                        out.push(ChatEvent::Stop(stop_reason(&reason)));
                    }
                }
                if let Some(u) = usage {
                    let usage = usage_from_wire(&u);
                    if usage != Usage::default() {
                        out.push(ChatEvent::Usage(usage));
                    }
                }
            }
            StreamEventIn::MessageStop => self.done = true,
            StreamEventIn::Error { error } => return Err(upstream_error(error)),
            StreamEventIn::Unknown => {}
        }
        if out[before..].iter().any(|e| !e.is_preamble()) {
            self.content = true;
        }
        Ok(())
    }

    fn block_start(&mut self, index: u32, b: ResponseBlockIn, out: &mut Vec<ChatEvent>) {
        match b.kind.as_str() {
            "text" => push_text(b.text, out),
            "tool_use" => {
                let tool = self.next_tool;
                self.next_tool += 1;
                self.tool_blocks.retain(|(block, _)| *block != index);
                self.tool_blocks.push((index, tool));
                out.push(ChatEvent::tool_call_start(
                    tool,
                    b.id.unwrap_or_else(|| format!("toolu_{tool}")),
                    b.name.unwrap_or_default(),
                ));
                // Streams start with `input: {}` and send the input as
                // deltas; whole messages carry it here.
                match b.input {
                    Some(Value::Object(m)) if m.is_empty() => {}
                    None | Some(Value::Null) => {}
                    Some(v) => out.push(ChatEvent::ToolCallArgsDelta {
                        index: tool,
                        json: v.to_string(),
                    }),
                }
            }
            "thinking" => {
                if let Some(t) = b.thinking.filter(|t| !t.is_empty()) {
                    out.push(ChatEvent::ThinkingDelta(t));
                }
                if let Some(s) = b.signature.filter(|s| !s.is_empty()) {
                    out.push(ChatEvent::ThinkingSignature(s));
                }
            }
            "redacted_thinking" => {
                if let Some(d) = b.data.filter(|d| !d.is_empty()) {
                    out.push(ChatEvent::RedactedThinking(d));
                }
            }
            // Server tool blocks run upstream; their results show up in
            // the text that follows.
            _ => {}
        }
    }

    fn tool_index(&self, block: u32) -> Option<u32> {
        self.tool_blocks
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }

    /// Decodes a whole non-streamed message body (from a server that
    /// ignored `stream: true`) into `out`, ending with a stop.
    pub fn decode_message(
        &mut self,
        body: &[u8],
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(rename = "type", default)]
            kind: Option<String>,
            #[serde(default)]
            error: Option<ErrorBodyIn>,
            #[serde(flatten)]
            message: MessageIn,
        }
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            UpstreamError::new(
                ErrorKind::Protocol,
                format!("upstream sent an unreadable body: {e}"),
            )
        })?;
        if b.kind.as_deref() == Some("error") || b.error.is_some() {
            return Err(upstream_error(b.error.unwrap_or(ErrorBodyIn {
                kind: None,
                message: String::new(),
            })));
        }
        for (i, block) in b.message.content.into_iter().enumerate() {
            self.block_start(u32::try_from(i).unwrap_or(u32::MAX), block, out);
        }
        let reason = b
            .message
            .stop_reason
            .as_deref()
            .map_or(StopReason::End, stop_reason);
        self.stopped = true;
        self.done = true;
        self.content = true;
        out.push(ChatEvent::Stop(reason));
        if let Some(u) = b.message.usage {
            let usage = usage_from_wire(&u);
            if usage != Usage::default() {
                out.push(ChatEvent::Usage(usage));
            }
        }
        Ok(())
    }

    /// Whether a stop reason has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether `message_stop` has been seen: the answer is complete.
    pub fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
impl EventDecoder {
    /// Whether anything beyond preamble has been produced.
    fn has_content(&self) -> bool {
        self.content
    }
}

/// An `error` event or error body. Overload and rate limits are worth
/// trying elsewhere; anything else mid-answer is the upstream's fault.
fn upstream_error(error: ErrorBodyIn) -> UpstreamError {
    let kind = match error.kind.as_deref() {
        Some("overloaded_error") => ErrorKind::Unavailable,
        Some("rate_limit_error") => ErrorKind::RateLimited,
        _ => ErrorKind::Protocol,
    };
    let message = if error.message.is_empty() {
        "upstream sent an error event".to_owned()
    } else {
        error.message
    };
    let mut e = UpstreamError::new(kind, message);
    e.error_type = error.kind;
    e
}

fn push_text(text: Option<String>, out: &mut Vec<ChatEvent>) {
    if let Some(t) = text.filter(|t| !t.is_empty()) {
        out.push(ChatEvent::TextDelta(t));
    }
}

/// Maps an Anthropic `stop_reason`.
pub fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "max_tokens" | "model_context_window_exceeded" => StopReason::Length,
        "tool_use" => StopReason::ToolUse,
        "stop_sequence" => StopReason::StopSequence,
        "refusal" => StopReason::ContentFilter,
        // end_turn, pause_turn and anything newer end the turn normally.
        _ => StopReason::End,
    }
}

/// Anthropic usage keeps cached tokens apart from `input_tokens`, as the
/// canonical model does.
fn usage_from_wire(u: &UsageIn) -> Usage {
    Usage {
        input: u.input_tokens.unwrap_or(0),
        output: u.output_tokens.unwrap_or(0),
        cache_read: u.cache_read_input_tokens.unwrap_or(0),
        cache_write: u.cache_creation_input_tokens.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Tool};
    use serde_json::json;
    fn events(lines: &[Value]) -> Result<Vec<ChatEvent>, UpstreamError> {
        let mut d = EventDecoder::default();
        let mut out = Vec::new();
        for l in lines {
            d.decode(&l.to_string(), &mut out)?;
        }
        assert!(d.done() && d.stopped());
        Ok(out)
    }

    #[test]
    fn stream_events_decode_with_tool_order_indexes() {
        let out = events(&[
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [], "model": "claude", "stop_reason": null,
                "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2}}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "redacted_thinking", "data": "enc"}}),
            json!({"type": "content_block_stop", "index": 3}),
            json!({"type": "content_block_start", "index": 4, "content_block": {"type": "tool_use", "id": "t2", "name": "g", "input": {}}}),
            json!({"type": "content_block_stop", "index": 4}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ])
        .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::Usage(Usage {
                    input: 10,
                    output: 0,
                    cache_read: 4,
                    cache_write: 2
                }),
                ChatEvent::ThinkingDelta("hmm".into()),
                ChatEvent::ThinkingSignature("sig".into()),
                ChatEvent::TextDelta("Hi".into()),
                ChatEvent::tool_call_start(0, "t1".into(), "f".into()),
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "{\"a\":".into()
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "1}".into()
                },
                ChatEvent::RedactedThinking("enc".into()),
                ChatEvent::tool_call_start(1, "t2".into(), "g".into()),
                ChatEvent::Stop(StopReason::ToolUse),
                ChatEvent::Usage(Usage {
                    output: 7,
                    ..Default::default()
                }),
            ]
        );
    }

    #[test]
    fn error_events_are_classified() {
        let mut d = EventDecoder::default();
        let mut out = Vec::new();
        for (kind, want) in [
            ("overloaded_error", ErrorKind::Unavailable),
            ("rate_limit_error", ErrorKind::RateLimited),
            ("api_error", ErrorKind::Protocol),
        ] {
            let e = d
                .decode(
                    &json!({"type": "error", "error": {"type": kind, "message": "boom"}})
                        .to_string(),
                    &mut out,
                )
                .unwrap_err();
            assert_eq!((e.kind, e.message.as_str()), (want, "boom"));
            assert_eq!(e.error_type.as_deref(), Some(kind));
        }
        assert!(d.decode("not json", &mut out).is_err());
        // Unknown event types are skipped.
        d.decode(r#"{"type": "future_event", "x": 1}"#, &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert!(!d.has_content());
    }

    #[test]
    fn whole_message_bodies_decode() {
        let mut d = EventDecoder::default();
        let mut out = Vec::new();
        let body = json!({"id": "msg", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": [1]}}
            ],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 3, "output_tokens": 2}});
        d.decode_message(body.to_string().as_bytes(), &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::TextDelta("Hi".into()),
                ChatEvent::tool_call_start(0, "t1".into(), "f".into()),
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: r#"{"a":[1]}"#.into()
                },
                ChatEvent::Stop(StopReason::Length),
                ChatEvent::Usage(Usage {
                    input: 3,
                    output: 2,
                    ..Default::default()
                }),
            ]
        );
        assert!(d.done() && d.has_content());
        let err = EventDecoder::default()
            .decode_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable);
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

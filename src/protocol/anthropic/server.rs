//! Anthropic Messages, server side: what clients send (requests, decoded into
//! the canonical model) and what they get back (streamed chunks or one
//! body, encoded from canonical events).

use std::io::Write as _;
use std::sync::Arc;

use bytes::{BufMut as _, BytesMut};
use serde_json::{Map, Value};

use super::client::tool_input;
use super::wire::{
    BlockIn, BlockOut, ContentIn, DeltaOut, ErrorOut, InMessage, InRole, MessageDeltaOut,
    MessageOut, MessagesRequest, StreamEventOut, SystemIn, ToolChoiceIn, UsageOut,
};
use crate::canonical::{
    Answer, ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Message, Role, Sampling,
    StopReason, Tool, ToolChoice, UpstreamError, Usage, UsageTally,
};
use crate::protocol::encoder::{CallOrder, CallRoute};
use crate::protocol::{parse_json, DecodeError, EventEncoder};

/// Top-level fields every upstream takes, or the gateway itself honours
/// (`metadata.user_id` keeps a conversation on its session).
pub const ALWAYS_TAKEN: &[&str] = &[
    "model",
    "messages",
    "system",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

/// What an Anthropic upstream takes besides, through the canonical request.
pub const TAKEN_BY_ANTHROPIC: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "thinking",
];

/// What an OpenAI upstream takes besides (`thinking` becomes a
/// `reasoning_effort`; `stop_sequences` becomes `stop`).
pub const TAKEN_BY_OPENAI: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "thinking",
];

/// Whether a Messages body marks anything for prompt caching: a
/// `cache_control` at the top, on a system block, a tool, or a content
/// block (tool results' inner blocks too), not a property of that name
/// inside a tool's schema.
pub fn has_cache_marks(body: &[u8]) -> bool {
    // Most bodies never name it: no parse for those.
    if memchr::memmem::find(body, b"cache_control").is_none() {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let marked = |b: &Value| b.get("cache_control").is_some_and(|c| !c.is_null());
    fn blocks(v: Option<&Value>) -> &[Value] {
        v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }
    if marked(&v)
        || blocks(v.get("system")).iter().any(marked)
        || blocks(v.get("tools")).iter().any(marked)
    {
        return true;
    }
    blocks(v.get("messages")).iter().any(|m| {
        blocks(m.get("content"))
            .iter()
            .any(|b| marked(b) || blocks(b.get("content")).iter().any(marked))
    })
}

/// Separates system prompt pieces (blocks, `system` messages) so each
/// stays its own paragraph.
const SYSTEM_SEPARATOR: &str = "\n\n";

/// Decodes a Messages request body (also a `count_tokens` body).
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, DecodeError> {
    let wire: MessagesRequest = parse_json(body)?;
    let req = from_wire(wire)?;
    crate::protocol::check_ranges(&req, 1.0)?;
    Ok(req)
}

fn from_wire(w: MessagesRequest) -> Result<ChatRequest, DecodeError> {
    if w.model.is_empty() {
        return Err(DecodeError::new("model", "`model` must not be empty"));
    }
    if w.messages.is_empty() {
        return Err(DecodeError::new("messages", "`messages` must not be empty"));
    }
    let mut system = match w.system {
        None => None,
        Some(s) => Some(system_text(s)?).filter(|s| !s.is_empty()),
    };
    let mut messages = Vec::with_capacity(w.messages.len());
    let mut leading = true;
    let mut repaired = false;
    for (i, m) in w.messages.into_iter().enumerate() {
        if m.role == InRole::System {
            repaired = true;
            let text = system_message_text(m, i)?;
            if leading {
                // Claude Code sends its system prompt this way: it belongs
                // with `system`, not in the conversation.
                if !text.is_empty() {
                    push_system(&mut system, &text);
                }
            } else {
                messages.push(Message::text(Role::System, text));
            }
            continue;
        }
        leading = false;
        push_message(m, i, &mut messages)?;
    }
    if messages.is_empty() {
        return Err(DecodeError::new(
            "messages",
            "`messages` needs at least one user or assistant message",
        ));
    }
    let mut untranslated = Vec::new();
    let tools = w
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter(|(_, t)| match t.kind.as_deref() {
            // A server tool (web search, code execution...) runs at
            // Anthropic: an Anthropic upstream gets it with the client's
            // body; another cannot run it, and is told so.
            Some(kind) if kind != "custom" => {
                untranslated.push(format!("{kind} tool"));
                false
            }
            _ => true,
        })
        .map(|(i, t)| {
            if t.name.is_empty() {
                return Err(DecodeError::new(
                    format!("tools[{i}].name"),
                    "tool name must not be empty",
                ));
            }
            let parameters = t.input_schema.unwrap_or_else(|| {
                repaired = true;
                serde_json::json!({"type": "object", "properties": {}})
            });
            Ok(Tool {
                name: t.name,
                description: t.description,
                parameters,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (tool_choice, parallel_tool_calls) = match w.tool_choice {
        None => (None, None),
        Some(c) => tool_choice(c)?,
    };
    let user = w.metadata.and_then(|m| m.user_id).filter(|u| !u.is_empty());
    let thinking_budget = match w.thinking {
        Some(t) if t.kind == "enabled" => Some(t.budget_tokens.unwrap_or(1024)),
        _ => None,
    };
    Ok(ChatRequest {
        model: w.model,
        system,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        sampling: Sampling {
            temperature: w.temperature,
            top_p: w.top_p,
            top_k: w.top_k,
            max_tokens: w.max_tokens,
            stop: w.stop_sequences.unwrap_or_default(),
            seed: None,
            frequency_penalty: None,
            presence_penalty: None,
        },
        stream: w.stream.unwrap_or(false),
        include_usage: false,
        affinity: user.clone(),
        conversation: None,
        user,
        response_format: None,
        reasoning_effort: None,
        prompt_tokens: Default::default(),
        thinking_budget,
        native: None,
        repaired,
        untranslated,
        free_form_tools: Vec::new(),
        openai_extras: Default::default(),
    })
}

fn push_system(system: &mut Option<String>, text: &str) {
    match system {
        Some(s) => {
            s.push_str(SYSTEM_SEPARATOR);
            s.push_str(text);
        }
        None => *system = Some(text.to_owned()),
    }
}

fn system_text(s: SystemIn) -> Result<String, DecodeError> {
    match s {
        SystemIn::Text(t) => Ok(t),
        SystemIn::Blocks(blocks) => text_blocks(blocks, "system"),
    }
}

/// Joins text blocks; any other block type is refused, naming it.
fn text_blocks(blocks: Vec<BlockIn>, at: &str) -> Result<String, DecodeError> {
    let mut out = String::new();
    for (j, b) in blocks.into_iter().enumerate() {
        if b.kind != "text" {
            return Err(DecodeError::new(
                format!("{at}[{j}].type"),
                format!("only text blocks are allowed here, not `{}`", b.kind),
            ));
        }
        let text = b.text.ok_or_else(|| {
            DecodeError::new(format!("{at}[{j}].text"), "a text block needs `text`")
        })?;
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(SYSTEM_SEPARATOR);
        }
        out.push_str(&text);
    }
    Ok(out)
}

fn system_message_text(m: InMessage, i: usize) -> Result<String, DecodeError> {
    match m.content {
        None => Ok(String::new()),
        Some(ContentIn::Text(t)) => Ok(t),
        Some(ContentIn::Blocks(blocks)) => text_blocks(blocks, &format!("messages[{i}].content")),
    }
}

/// Adds a user or assistant message. A user message's `tool_result` blocks
/// become tool messages, in order, ahead of whatever else it says, which is
/// how the canonical model (and OpenAI) orders them.
fn push_message(m: InMessage, i: usize, out: &mut Vec<Message>) -> Result<(), DecodeError> {
    let role = match m.role {
        InRole::Assistant => Role::Assistant,
        _ => Role::User,
    };
    let blocks = match m.content {
        None => {
            return Err(DecodeError::new(
                format!("messages[{i}].content"),
                "a message needs `content`",
            ))
        }
        Some(ContentIn::Text(t)) => {
            let content = if t.is_empty() {
                Vec::new()
            } else {
                vec![ContentPart::Text(t)]
            };
            out.push(Message {
                role,
                content,
                name: None,
            });
            return Ok(());
        }
        Some(ContentIn::Blocks(b)) => b,
    };
    let mut rest = Vec::with_capacity(blocks.len());
    let mut had_results = false;
    for (j, b) in blocks.into_iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        let Some(part) = block(b, &at)? else { continue };
        let allowed = match (&part, role) {
            (ContentPart::ToolResult { .. }, Role::User) => {
                had_results = true;
                out.push(Message {
                    role: Role::Tool,
                    content: vec![part],
                    name: None,
                });
                continue;
            }
            (ContentPart::ToolResult { .. }, _) => "tool_result blocks belong in user messages",
            (
                ContentPart::ToolCall { .. }
                | ContentPart::Thinking { .. }
                | ContentPart::RedactedThinking { .. },
                Role::User,
            ) => "tool_use and thinking blocks belong in assistant messages",
            _ => "",
        };
        if !allowed.is_empty() {
            return Err(DecodeError::new(format!("{at}.type"), allowed));
        }
        rest.push(part);
    }
    if !rest.is_empty() || !had_results {
        out.push(Message {
            role,
            content: rest,
            name: None,
        });
    }
    Ok(())
}

/// One content block; `None` for blocks that carry nothing (empty text).
fn block(b: BlockIn, at: &str) -> Result<Option<ContentPart>, DecodeError> {
    let missing = |field: &str, what: &str| {
        DecodeError::new(
            format!("{at}.{field}"),
            format!("a {what} block needs `{field}`"),
        )
    };
    let part = match b.kind.as_str() {
        "text" => {
            let t = b.text.ok_or_else(|| missing("text", "text"))?;
            if t.is_empty() {
                return Ok(None);
            }
            ContentPart::Text(t)
        }
        "image" => {
            let src = b.source.ok_or_else(|| missing("source", "image"))?;
            let src_at = format!("{at}.source");
            match src.kind.as_str() {
                "base64" => ContentPart::Image(ImageSource::Base64 {
                    media_type: src.media_type.ok_or_else(|| {
                        DecodeError::new(
                            format!("{src_at}.media_type"),
                            "a base64 source needs `media_type`",
                        )
                    })?,
                    data: src.data.ok_or_else(|| {
                        DecodeError::new(format!("{src_at}.data"), "a base64 source needs `data`")
                    })?,
                }),
                "url" => ContentPart::Image(ImageSource::Url(src.url.ok_or_else(|| {
                    DecodeError::new(format!("{src_at}.url"), "a url source needs `url`")
                })?)),
                other => {
                    return Err(DecodeError::new(
                        format!("{src_at}.type"),
                        format!("image source type `{other}` is not supported; use base64 or url"),
                    ))
                }
            }
        }
        "document" => ContentPart::Text(document_text(b.source, b.title, at)?),
        "tool_use" => {
            let id = b.id.ok_or_else(|| missing("id", "tool_use"))?;
            let name = b.name.ok_or_else(|| missing("name", "tool_use"))?;
            let arguments = match b.input {
                None | Some(Value::Null) => "{}".to_owned(),
                Some(v) => v.to_string(),
            };
            ContentPart::ToolCall {
                id,
                name,
                arguments,
            }
        }
        "tool_result" => {
            let call_id = b
                .tool_use_id
                .ok_or_else(|| missing("tool_use_id", "tool_result"))?;
            let content =
                match b.content {
                    None => Vec::new(),
                    Some(ContentIn::Text(t)) if t.is_empty() => Vec::new(),
                    Some(ContentIn::Text(t)) => vec![ContentPart::Text(t)],
                    Some(ContentIn::Blocks(inner)) => {
                        let mut parts = Vec::with_capacity(inner.len());
                        for (k, ib) in inner.into_iter().enumerate() {
                            let inner_at = format!("{at}.content[{k}]");
                            match block(ib, &inner_at)? {
                                None => {}
                                Some(p @ (ContentPart::Text(_) | ContentPart::Image(_))) => {
                                    parts.push(p)
                                }
                                Some(_) => return Err(DecodeError::new(
                                    format!("{inner_at}.type"),
                                    "a tool result may hold text, image and document blocks only",
                                )),
                            }
                        }
                        parts
                    }
                };
            ContentPart::ToolResult {
                call_id,
                content,
                is_error: b.is_error.unwrap_or(false),
            }
        }
        "thinking" => {
            let text = b.thinking.unwrap_or_default();
            let signature = b.signature.filter(|s| !s.is_empty());
            if text.is_empty() && signature.is_none() {
                return Ok(None);
            }
            ContentPart::Thinking { text, signature }
        }
        "redacted_thinking" => ContentPart::RedactedThinking {
            data: b.data.ok_or_else(|| missing("data", "redacted_thinking"))?,
        },
        other => {
            return Err(DecodeError::new(
                format!("{at}.type"),
                format!("content block type `{other}` is not supported"),
            ))
        }
    };
    Ok(Some(part))
}

/// A document as text: its own text when it has some, else a note saying
/// what was there, since no upstream here reads PDFs and the model should
/// know a document was attached.
fn document_text(
    source: Option<super::wire::SourceIn>,
    title: Option<String>,
    at: &str,
) -> Result<String, DecodeError> {
    let src = source.ok_or_else(|| {
        DecodeError::new(format!("{at}.source"), "a document block needs `source`")
    })?;
    let named = |body: String| match &title {
        Some(t) if !t.is_empty() => format!("{t}\n\n{body}"),
        _ => body,
    };
    let label = title.as_deref().filter(|t| !t.is_empty());
    Ok(match src.kind.as_str() {
        "text" => named(src.data.unwrap_or_default()),
        "content" => {
            let body = match src.content {
                None => String::new(),
                Some(ContentIn::Text(t)) => t,
                Some(ContentIn::Blocks(blocks)) => blocks
                    .into_iter()
                    .filter(|b| b.kind == "text")
                    .filter_map(|b| b.text)
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            named(body)
        }
        "url" => format!(
            "[document{}: {} (not fetched by the gateway)]",
            label.map(|t| format!(" \"{t}\"")).unwrap_or_default(),
            src.url.unwrap_or_default()
        ),
        other => format!(
            "[document{}: {} {other} source omitted; the gateway passes documents on as text only]",
            label.map(|t| format!(" \"{t}\"")).unwrap_or_default(),
            src.media_type.as_deref().unwrap_or("unknown type"),
        ),
    })
}

fn tool_choice(c: ToolChoiceIn) -> Result<(Option<ToolChoice>, Option<bool>), DecodeError> {
    let choice = match c.kind.as_str() {
        "auto" => ToolChoice::Auto,
        "any" => ToolChoice::Required,
        "none" => ToolChoice::None,
        "tool" => match c.name.filter(|n| !n.is_empty()) {
            Some(n) => ToolChoice::Tool(n),
            None => {
                return Err(DecodeError::new(
                    "tool_choice.name",
                    "a `tool` tool_choice needs `name`",
                ))
            }
        },
        other => {
            return Err(DecodeError::new(
                "tool_choice.type",
                format!("`tool_choice.type` must be auto, any, tool or none, not `{other}`"),
            ))
        }
    };
    // Only an explicit opt-out says anything; parallel calls are the default.
    let parallel = (c.disable_parallel_tool_use == Some(true)).then_some(false);
    Ok((Some(choice), parallel))
}

// ---- responses to clients ----

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
    // Server tool use and its results come before the text that cites them.
    for (block, _) in &answer.anthropic_blocks {
        content.push(BlockOut::Other(block));
    }
    if !answer.text.is_empty() {
        content.push(BlockOut::Text {
            text: &answer.text,
            citations: &answer.text_citations,
        });
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
        stop_sequence: answer.stop_sequence.as_deref(),
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
    /// A block passed on as the upstream sent it.
    Opaque,
}

/// Encodes events as Anthropic's named SSE events: `message_start` before
/// the first content, one content block per text, thinking or tool call
/// run with indexes counting up, and `message_delta` + `message_stop` at
/// the end.
///
/// Anthropic clients assemble a block from its start, its deltas and its
/// stop, and expect blocks one after another; upstreams of other protocols
/// do not promise that order (OpenAI servers interleave the argument
/// fragments of parallel tool calls, and may send the last fragment with or
/// after `finish_reason`). So the encoder is a small state machine:
///
/// - one block is open at a time, and streams live;
/// - once a tool call's block is open it stays open until the end, because
///   any later fragment may still be its own; tool calls that start
///   meanwhile are held ([`HeldCall`]) with their fragments, and text or
///   thinking that arrives meanwhile is held too;
/// - at the end ([`EventEncoder::finish`], after the stop and the final
///   usage) the open block closes, each held call is written as one
///   contiguous block, then the held text and thinking, then
///   `message_delta` and `message_stop`.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    req: Arc<ChatRequest>,
    started: bool,
    /// The open block and its index.
    open: Option<(usize, Block)>,
    next_block: usize,
    /// Calls waiting for the open tool block to end, in start order.
    calls: CallOrder,
    /// Text and thinking that arrived while a tool block was open.
    held: Vec<ChatEvent>,
    stop: Option<StopReason>,
    stop_sequence: Option<String>,
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
            calls: CallOrder::default(),
            held: Vec::new(),
            stop: None,
            stop_sequence: None,
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
            _ => self.open_block(
                Block::Text,
                BlockOut::Text {
                    text: "",
                    citations: &[],
                },
                out,
            ),
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
                    // Anthropic sends an empty signature here; the SDKs'
                    // event types require the field.
                    signature: Some(""),
                },
                out,
            ),
        }
    }

    fn tool_block(&mut self, index: u32, id: &str, name: &str, out: &mut BytesMut) -> usize {
        self.open_block(
            Block::Tool(index),
            BlockOut::ToolUse {
                id,
                name,
                input: Value::Object(Map::new()),
            },
            out,
        )
    }

    /// Writes a passed-on block's event with this stream's block index.
    fn opaque(&mut self, json: &str, out: &mut BytesMut) {
        let Ok(mut ev) = serde_json::from_str::<Value>(json) else {
            return;
        };
        let index = match ev["type"].as_str() {
            Some("content_block_start") => {
                self.close(out);
                let index = self.next_block;
                self.next_block += 1;
                self.open = Some((index, Block::Opaque));
                index
            }
            Some("content_block_delta") => match self.open {
                Some((index, Block::Opaque)) => index,
                // A citation of the text being written (the text's deltas
                // came as text events).
                _ if ev["delta"]["type"] == "citations_delta" => self.text_block(out),
                _ => return,
            },
            Some("content_block_stop") => match self.open.take() {
                Some((index, Block::Opaque)) => index,
                other => {
                    self.open = other;
                    return;
                }
            },
            _ => return,
        };
        ev["index"] = Value::from(index);
        let name = ev["type"].as_str().unwrap_or_default().to_owned();
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\ndata: ");
        let mut w = out.writer();
        // Writing to memory cannot fail.
        let _ = serde_json::to_writer(&mut w, &ev);
        let _ = w.write_all(b"\n\n");
    }

    /// Whether a tool call's block is open: until the end, every other
    /// block waits.
    fn in_tool_block(&self) -> bool {
        self.open_call().is_some()
    }

    /// The index of the call whose block is open.
    fn open_call(&self) -> Option<u32> {
        match self.open {
            Some((_, Block::Tool(i))) => Some(i),
            _ => None,
        }
    }

    /// Writes the held calls, each as one whole block, then the held text
    /// and thinking.
    fn flush_held(&mut self, out: &mut BytesMut) {
        for call in self.calls.take() {
            let block = self.tool_block(call.index, &call.id, &call.name, out);
            if !call.arguments.is_empty() {
                Self::delta(
                    block,
                    DeltaOut::InputJsonDelta {
                        partial_json: &call.arguments,
                    },
                    out,
                );
            }
            self.close(out);
        }
        for ev in std::mem::take(&mut self.held) {
            self.content(&ev, out);
        }
    }

    /// Writes one content event: text, thinking or a tool call's part.
    fn content(&mut self, ev: &ChatEvent, out: &mut BytesMut) {
        match ev {
            ChatEvent::TextDelta(t) if t.is_empty() => {}
            ChatEvent::ThinkingDelta(t) if t.is_empty() => {}
            ChatEvent::TextDelta(_)
            | ChatEvent::ThinkingDelta(_)
            | ChatEvent::ThinkingSignature(_)
            | ChatEvent::RedactedThinking(_)
            | ChatEvent::AnthropicBlock(_)
                if self.in_tool_block() =>
            {
                self.held.push(ev.clone());
            }
            ChatEvent::AnthropicBlock(json) => self.opaque(json, out),
            ChatEvent::TextDelta(t) => {
                let index = self.text_block(out);
                Self::delta(index, DeltaOut::TextDelta { text: t }, out);
            }
            ChatEvent::ThinkingDelta(t) => {
                let index = self.thinking_block(out);
                Self::delta(index, DeltaOut::ThinkingDelta { thinking: t }, out);
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
            ChatEvent::ToolCallStart { index, call } => {
                let (id, name) = (&call.id, &call.name);
                if self.calls.start(self.open_call(), *index, id, name) == CallRoute::Open {
                    self.tool_block(*index, id, name, out);
                }
            }
            ChatEvent::ToolCallArgsDelta { index, json } if !json.is_empty() => {
                match self.calls.args(self.open_call(), *index, json, "toolu_") {
                    CallRoute::Write => {
                        if let Some((block, _)) = self.open {
                            Self::delta(
                                block,
                                DeltaOut::InputJsonDelta { partial_json: json },
                                out,
                            );
                        }
                    }
                    CallRoute::Orphan { id } => {
                        // Arguments without a start: give the call a block
                        // (now, or held) rather than drop its input.
                        let name = String::new();
                        let start = ChatEvent::tool_call_start(*index, id, name);
                        self.content(&start, out);
                        self.content(ev, out);
                    }
                    CallRoute::Open | CallRoute::Hold => {}
                }
            }
            ChatEvent::ToolCallArgsDelta { .. } => {}
            ChatEvent::Start { .. }
            | ChatEvent::Usage(_)
            | ChatEvent::StopSequence(_)
            | ChatEvent::EncryptedReasoning(_)
            | ChatEvent::Stop(_)
            | ChatEvent::Error(_) => {}
        }
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
        Self::write(out, &error_event(stream_error_type(e), &e.message));
    }
}

fn error_event<'a>(kind: &'a str, message: &'a str) -> StreamEventOut<'a> {
    StreamEventOut::Error {
        error: ErrorOut { kind, message },
    }
}

/// Anthropic's error envelope, `{"type": "error", "error": {"type",
/// "message"}}`: the body of an HTTP error, as the in-stream `error` event
/// carries it.
pub fn error_body(kind: &str, message: &str) -> Vec<u8> {
    // Serializing strings into memory cannot fail.
    serde_json::to_vec(&error_event(kind, message)).unwrap_or_default()
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        405 => "invalid_request_error",
        408 => "timeout_error",
        413 => "request_too_large",
        415 => "invalid_request_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
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
            // Blocks close at the end, not here: fragments may still come
            // with or after the stop.
            ChatEvent::Stop(r) => {
                if self.stop.is_none() {
                    self.stop = Some(*r);
                }
            }
            ChatEvent::StopSequence(s) => self.stop_sequence = Some(s.clone()),
            _ => self.content(ev, out),
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
        self.flush_held(out);
        self.close(out);
        Self::write(
            out,
            &StreamEventOut::MessageDelta {
                delta: MessageDeltaOut {
                    stop_reason: Some(stop_reason(self.stop.unwrap_or(StopReason::End))),
                    stop_sequence: self.stop_sequence.take(),
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
    use crate::canonical::Message;
    use serde_json::json;
    fn decode(v: Value) -> Result<ChatRequest, DecodeError> {
        decode_request(v.to_string().as_bytes())
    }

    #[test]
    fn claude_code_style_request_decodes() {
        let req = decode(json!({
            "model": "claude-sonnet-4-5",
            "system": [
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": ""},
                {"type": "text", "text": "Be brief."}
            ],
            "messages": [
                {"role": "system", "content": "Leading system message."},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "text", "text": ""},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain", "data": "line"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig1"},
                    {"type": "redacted_thinking", "data": "enc"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "t2", "name": "g", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                    {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
                     "content": [{"type": "text", "text": "two"}]},
                    {"type": "text", "text": "go on"}
                ]},
                {"role": "system", "content": [{"type": "text", "text": "Later system."}]}
            ],
            "max_tokens": 100,
            "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}},
                      {"name": "g", "type": "custom"}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "some_future_field": 1
        }))
        .unwrap();
        assert_eq!(
            req.system.as_deref(),
            Some("You are Claude Code.\n\nBe brief.\n\nLeading system message.")
        );
        let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::User,
                Role::System
            ]
        );
        assert_eq!(
            req.messages[0].content,
            vec![
                ContentPart::Text("look".into()),
                ContentPart::Image(ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "AA==".into()
                }),
                ContentPart::Image(ImageSource::Url("https://x/y.png".into())),
                ContentPart::Text("notes\n\nline".into()),
            ]
        );
        assert_eq!(
            req.messages[1].content,
            vec![
                ContentPart::Thinking {
                    text: "hmm".into(),
                    signature: Some("sig1".into())
                },
                ContentPart::RedactedThinking { data: "enc".into() },
                ContentPart::Text("calling".into()),
                ContentPart::ToolCall {
                    id: "t1".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into()
                },
                ContentPart::ToolCall {
                    id: "t2".into(),
                    name: "g".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(
            req.messages[3].content,
            vec![ContentPart::ToolResult {
                call_id: "t2".into(),
                content: vec![ContentPart::Text("two".into())],
                is_error: true
            }]
        );
        assert_eq!(
            req.messages[4].content,
            vec![ContentPart::Text("go on".into())]
        );
        assert_eq!(req.messages[5].joined_text(), "Later system.");
        assert_eq!(req.sampling.max_tokens, Some(100));
        assert_eq!(req.sampling.top_k, Some(5));
        assert_eq!(req.sampling.stop, vec!["END".to_string()]);
        assert_eq!(req.user.as_deref(), Some("u1"));
        assert_eq!(req.affinity.as_deref(), Some("u1"));
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert_eq!(req.parallel_tool_calls, Some(false));
        assert_eq!(
            req.tools[1].parameters,
            json!({"type": "object", "properties": {}})
        );
        assert!(req.stream);
    }

    #[test]
    fn lenient_where_anthropic_is_strict() {
        // No max_tokens (count_tokens bodies), string content, a user turn
        // of only tool results.
        let req = decode(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
            ],
            "tools": [{"name": "f"}],
            "tool_choice": {"type": "tool", "name": "f"}
        }))
        .unwrap();
        assert_eq!(req.sampling.max_tokens, None);
        assert!(!req.stream);
        assert_eq!(req.messages.len(), 3);
        assert_eq!(req.messages[2].role, Role::Tool);
        assert_eq!(req.tool_choice, Some(ToolChoice::Tool("f".into())));
        assert_eq!(req.parallel_tool_calls, None);
        // ...but a forced tool that is not offered is refused, like Anthropic does.
        let e = decode(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": {"type": "tool", "name": "f"}
        }))
        .unwrap_err();
        assert_eq!(e.param, "tool_choice");
    }

    #[test]
    fn documents_degrade_to_text() {
        let req = decode(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            {"type": "document", "title": "page", "source": {"type": "url", "url": "https://x/a.pdf"}},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]}]}))
        .unwrap();
        let texts: Vec<String> = req.messages[0]
            .content
            .iter()
            .map(|p| match p {
                ContentPart::Text(t) => t.clone(),
                other => panic!("not text: {other:?}"),
            })
            .collect();
        assert!(texts[0].contains("application/pdf"), "{}", texts[0]);
        assert!(texts[1].contains("https://x/a.pdf") && texts[1].contains("page"));
        assert_eq!(texts[2], "a\nb");
    }

    #[test]
    fn errors_name_the_field() {
        let user = |content: Value| json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        let cases = [
            (
                user(json!([{"type": "audio"}])),
                "messages[0].content[0].type",
            ),
            (
                user(json!([{"type": "image"}])),
                "messages[0].content[0].source",
            ),
            (
                user(json!([{"type": "image", "source": {"type": "base64", "data": "x"}}])),
                "messages[0].content[0].source.media_type",
            ),
            (
                user(json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}])),
                "messages[0].content[0].source.type",
            ),
            (
                user(json!([{"type": "tool_result"}])),
                "messages[0].content[0].tool_use_id",
            ),
            (
                user(json!([{"type": "tool_use", "id": "t", "name": "f"}])),
                "messages[0].content[0].type",
            ),
            (
                user(
                    json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use", "id": "x", "name": "y"}]}]),
                ),
                "messages[0].content[0].content[0].type",
            ),
            (user(json!(5)), "messages[0].content"),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "", "messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "some"}}),
                "tool_choice.type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
            (
                json!({"model": "m", "system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]}),
                "system[0].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "system", "content": "only system"}]}),
                "messages",
            ),
        ];
        for (body, param) in cases {
            let e = decode(body.clone()).unwrap_err();
            assert_eq!(e.param, param, "{body} -> {e:?}");
        }
        // A server tool is Anthropic's to run: carried by the body, named
        // for any other upstream.
        let req = decode(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        )
        .unwrap();
        assert!(req.tools.is_empty());
        assert_eq!(req.untranslated, ["web_search_20250305 tool"]);
        let e = decode(json!({"messages": []})).unwrap_err();
        assert!(e.message.contains("model"), "{e:?}");
        let e = decode_request(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{e:?}");
    }

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
                ChatEvent::tool_call_start(0, "t1".into(), "f".into()),
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "{\"a\":".into(),
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "1}".into(),
                },
                ChatEvent::tool_call_start(1, "t2".into(), "g".into()),
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
            json!({"type": "thinking", "thinking": "", "signature": ""})
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
    fn interleaved_tool_calls_become_contiguous_blocks() {
        let start =
            |index: u32, id: &str| ChatEvent::tool_call_start(index, id.into(), "weather".into());
        let args = |index: u32, json: &str| ChatEvent::ToolCallArgsDelta {
            index,
            json: json.into(),
        };
        let evs = encode(
            &[
                ChatEvent::TextDelta("Both.".into()),
                start(0, "call_a"),
                args(0, "{\"ci"),
                start(1, "call_b"),
                args(1, "{\"city\":"),
                args(0, "ty\":\"Paris\""),
                ChatEvent::TextDelta(" (late text)".into()),
                args(1, "\"Tokyo\"}"),
                ChatEvent::Stop(StopReason::ToolUse),
                // A fragment with or after the stop is still the call's.
                args(0, "}"),
            ],
            true,
        );
        // Every block is start, its deltas, stop; no block overlaps another.
        let mut open: Option<u64> = None;
        let mut blocks: Vec<(String, String)> = Vec::new();
        for (name, data) in &evs {
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!(open, None, "{evs:?}");
                    open = data["index"].as_u64();
                    assert_eq!(open, Some(blocks.len() as u64));
                    let b = &data["content_block"];
                    let label = b["id"].as_str().unwrap_or(b["type"].as_str().unwrap());
                    blocks.push((label.to_owned(), String::new()));
                }
                "content_block_delta" => {
                    assert_eq!(data["index"].as_u64(), open, "{evs:?}");
                    let d = &data["delta"];
                    let part = d["partial_json"].as_str().or(d["text"].as_str()).unwrap();
                    blocks.last_mut().unwrap().1.push_str(part);
                }
                "content_block_stop" => {
                    assert_eq!(data["index"].as_u64(), open);
                    open = None;
                }
                _ => assert_eq!(open, None, "{name} inside a block"),
            }
        }
        let blocks: Vec<(&str, &str)> = blocks.iter().map(|(a, b)| (&a[..], &b[..])).collect();
        assert_eq!(
            blocks,
            [
                ("text", "Both."),
                ("call_a", "{\"city\":\"Paris\"}"),
                ("call_b", "{\"city\":\"Tokyo\"}"),
                ("text", " (late text)"),
            ]
        );
        assert_eq!(evs.last().unwrap().0, "message_stop");
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
}

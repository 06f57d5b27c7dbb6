//! Reading the Anthropic wire format: client requests into [`ChatRequest`]
//! (frontend) and an Anthropic server's stream events into [`ChatEvent`]s
//! (upstream).

use serde_json::Value;

use super::wire::{
    BlockIn, ContentIn, ErrorBodyIn, InMessage, InRole, MessageIn, MessagesRequest,
    ResponseBlockIn, StreamEventIn, SystemIn, ToolChoiceIn, UsageIn,
};
use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Message, Role, Sampling,
    StopReason, Tool, ToolChoice, UpstreamError, Usage,
};
use crate::protocol::{parse_json, DecodeError};

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
    for (i, m) in w.messages.into_iter().enumerate() {
        if m.role == InRole::System {
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
    let tools = w
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
                return Err(DecodeError::new(
                    format!("tools[{i}].type"),
                    format!("server tool type `{kind}` is not supported; only client tools with `input_schema` are"),
                ));
            }
            if t.name.is_empty() {
                return Err(DecodeError::new(
                    format!("tools[{i}].name"),
                    "tool name must not be empty",
                ));
            }
            Ok(Tool {
                name: t.name,
                description: t.description,
                parameters: t
                    .input_schema
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
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

// ---- upstream: an Anthropic server's answer ----

/// Turns an Anthropic server's stream events into canonical events. Tool
/// calls are numbered by their order among the message's `tool_use`
/// blocks, not by content block index, so they line up with OpenAI's
/// `tool_calls[i].index` whatever text or thinking sits between them.
#[derive(Debug, Default)]
pub struct EventDecoder {
    /// Content block index → tool call index, for the open tool blocks.
    tool_blocks: Vec<(u32, u32)>,
    next_tool: u32,
    stopped: bool,
    done: bool,
    content: bool,
}

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
            } => self.block_start(index, content_block, out),
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
                // citations_delta and later additions carry nothing the
                // canonical model holds.
                _ => {}
            },
            StreamEventIn::ContentBlockStop { .. } | StreamEventIn::Ping => {}
            StreamEventIn::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.and_then(|d| d.stop_reason) {
                    self.stopped = true;
                    out.push(ChatEvent::Stop(stop_reason(&reason)));
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
                out.push(ChatEvent::ToolCallStart {
                    index: tool,
                    id: b.id.unwrap_or_else(|| format!("toolu_{tool}")),
                    name: b.name.unwrap_or_default(),
                });
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
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
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
        let e = decode(json!({"messages": []})).unwrap_err();
        assert!(e.message.contains("model"), "{e:?}");
        let e = decode_request(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{e:?}");
    }

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
                ChatEvent::ToolCallStart {
                    index: 0,
                    id: "t1".into(),
                    name: "f".into()
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "{\"a\":".into()
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "1}".into()
                },
                ChatEvent::RedactedThinking("enc".into()),
                ChatEvent::ToolCallStart {
                    index: 1,
                    id: "t2".into(),
                    name: "g".into()
                },
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
                ChatEvent::ToolCallStart {
                    index: 0,
                    id: "t1".into(),
                    name: "f".into()
                },
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
}

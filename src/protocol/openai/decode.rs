//! Reading the OpenAI wire format: client requests into [`ChatRequest`]
//! (frontend) and upstream stream chunks into [`ChatEvent`]s (upstream).

use super::wire::{
    ChatCompletionRequest, ChunkIn, ContentPartWire, MessageContent, RequestMessage, Stop,
    ToolChoiceWire, UsageIn, WireRole,
};
use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Message, Role, Sampling,
    StopReason, Tool, ToolChoice, UpstreamError, Usage,
};
use crate::protocol::{parse_json, DecodeError};

/// Decodes a Chat Completions request body.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, DecodeError> {
    let wire: ChatCompletionRequest = parse_json(body)?;
    let req = from_wire(wire)?;
    crate::protocol::check_ranges(&req, 2.0)?;
    Ok(req)
}

fn from_wire(w: ChatCompletionRequest) -> Result<ChatRequest, DecodeError> {
    if w.model.is_empty() {
        return Err(DecodeError::new("model", "`model` must not be empty"));
    }
    if let Some(n) = w.n {
        if n != 1 {
            return Err(DecodeError::new(
                "n",
                format!("`n` = {n} is not supported: only one choice per request"),
            ));
        }
    }
    if w.messages.is_empty() {
        return Err(DecodeError::new("messages", "`messages` must not be empty"));
    }
    let mut system: Option<String> = None;
    let mut messages = Vec::with_capacity(w.messages.len());
    let mut leading = true;
    for (i, m) in w.messages.into_iter().enumerate() {
        let is_system = matches!(m.role, WireRole::System | WireRole::Developer);
        if leading && is_system {
            let text = text_of(m, i)?;
            match &mut system {
                Some(s) => {
                    s.push_str("\n\n");
                    s.push_str(&text);
                }
                None => system = Some(text),
            }
            continue;
        }
        leading = false;
        messages.push(message_from_wire(m, i)?);
    }
    if messages.is_empty() {
        return Err(DecodeError::new(
            "messages",
            "`messages` needs at least one message besides system messages",
        ));
    }
    let tools = w
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(DecodeError::new(
                    format!("tools[{i}].type"),
                    format!("tool type `{}` is not supported", t.kind),
                ));
            }
            if t.function.name.is_empty() {
                return Err(DecodeError::new(
                    format!("tools[{i}].function.name"),
                    "tool name must not be empty",
                ));
            }
            Ok(Tool {
                name: t.function.name,
                description: t.function.description,
                parameters: t
                    .function
                    .parameters
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = match w.tool_choice {
        None => None,
        Some(ToolChoiceWire::Mode(m)) => Some(match m.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(DecodeError::new(
                    "tool_choice",
                    format!(
                        "`tool_choice` must be auto, none, required or a function, not `{other}`"
                    ),
                ))
            }
        }),
        Some(ToolChoiceWire::Named { function, .. }) => Some(ToolChoice::Tool(function.name)),
    };
    let stop = match w.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let include_usage = w
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let user = w.user;
    let affinity = w.thread_id.or_else(|| user.clone());
    Ok(ChatRequest {
        model: w.model,
        system,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: w.parallel_tool_calls,
        sampling: Sampling {
            temperature: w.temperature,
            top_p: w.top_p,
            top_k: None,
            max_tokens: w.max_completion_tokens.or(w.max_tokens),
            stop,
            seed: w.seed,
            frequency_penalty: w.frequency_penalty,
            presence_penalty: w.presence_penalty,
        },
        stream: w.stream.unwrap_or(false),
        include_usage,
        user,
        affinity,
        conversation: None,
        response_format: w.response_format,
        reasoning_effort: w.reasoning_effort,
        prompt_tokens: Default::default(),
        thinking_budget: None,
    })
}

fn text_of(m: RequestMessage, i: usize) -> Result<String, DecodeError> {
    match m.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(t)) => Ok(t),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match part_from_wire(p, i, j)? {
                    ContentPart::Text(t) => {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(&t);
                    }
                    _ => {
                        return Err(DecodeError::new(
                            format!("messages[{i}].content[{j}].type"),
                            "only text parts are allowed in system messages",
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

fn parts_of(content: Option<MessageContent>, i: usize) -> Result<Vec<ContentPart>, DecodeError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![ContentPart::Text(t)]),
        Some(MessageContent::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, p)| part_from_wire(p, i, j))
            .collect(),
    }
}

fn part_from_wire(p: ContentPartWire, i: usize, j: usize) -> Result<ContentPart, DecodeError> {
    let at = |field: &str| format!("messages[{i}].content[{j}].{field}");
    match p.kind.as_str() {
        "text" | "input_text" => match p.text {
            Some(t) => Ok(ContentPart::Text(t)),
            None => Err(DecodeError::new(at("text"), "a text part needs `text`")),
        },
        "image_url" => match p.image_url {
            Some(img) => Ok(ContentPart::Image(ImageSource::from_url(&img.url))),
            None => Err(DecodeError::new(
                at("image_url"),
                "an image_url part needs `image_url.url`",
            )),
        },
        "refusal" => Ok(ContentPart::Text(p.refusal.unwrap_or_default())),
        other => Err(DecodeError::new(
            at("type"),
            format!("content part type `{other}` is not supported"),
        )),
    }
}

fn message_from_wire(m: RequestMessage, i: usize) -> Result<Message, DecodeError> {
    let name = m.name.clone();
    match m.role {
        WireRole::System | WireRole::Developer => Ok(Message {
            role: Role::System,
            content: vec![ContentPart::Text(text_of(m, i)?)],
            name,
        }),
        WireRole::User => {
            if m.content.is_none() {
                return Err(DecodeError::new(
                    format!("messages[{i}].content"),
                    "a user message needs `content`",
                ));
            }
            Ok(Message {
                role: Role::User,
                content: parts_of(m.content, i)?,
                name,
            })
        }
        WireRole::Assistant => {
            let mut content = parts_of(m.content, i)?;
            if let Some(r) = m.reasoning_content.filter(|r| !r.is_empty()) {
                content.insert(
                    0,
                    ContentPart::Thinking {
                        text: r,
                        signature: None,
                    },
                );
            }
            for call in m.tool_calls.unwrap_or_default() {
                content.push(ContentPart::ToolCall {
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments,
                });
            }
            Ok(Message {
                role: Role::Assistant,
                content,
                name,
            })
        }
        WireRole::Tool => {
            let Some(call_id) = m.tool_call_id.clone() else {
                return Err(DecodeError::new(
                    format!("messages[{i}].tool_call_id"),
                    "a tool message needs `tool_call_id`",
                ));
            };
            let content = parts_of(m.content, i)?;
            Ok(Message {
                role: Role::Tool,
                content: vec![ContentPart::ToolResult {
                    call_id,
                    content,
                    is_error: false,
                }],
                name,
            })
        }
        WireRole::Function => Err(DecodeError::new(
            format!("messages[{i}].role"),
            "role `function` is deprecated and not supported; use `tool`",
        )),
    }
}

/// Turns an upstream's stream chunks into events, remembering which tool
/// calls have started so every call gets exactly one start.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    fast: super::fastchunk::FastReader,
    started_calls: Vec<u32>,
    stopped: bool,
    saw_usage: bool,
    done: bool,
}

impl ChunkDecoder {
    /// Decodes one `data:` payload (not `[DONE]`) into `out`.
    pub fn decode(&mut self, data: &str, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        let chunk = match self.fast.read(data) {
            Some(chunk) => chunk,
            None => serde_json::from_str(data).map_err(|e| {
                UpstreamError::new(
                    ErrorKind::Protocol,
                    format!("upstream sent an unreadable chunk: {e}"),
                )
            })?,
        };
        self.push_chunk(chunk, out)
    }

    pub(super) fn push_chunk(
        &mut self,
        chunk: ChunkIn,
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamError> {
        if let Some(err) = chunk.error {
            let mut e = UpstreamError::new(ErrorKind::Protocol, err.message);
            e.error_type = err.kind;
            return Err(e);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(r) = delta.reasoning_content.or(delta.reasoning) {
                    if !r.is_empty() {
                        out.push(ChatEvent::ThinkingDelta(r));
                    }
                }
                if let Some(t) = delta.content {
                    if !t.is_empty() {
                        out.push(ChatEvent::TextDelta(t));
                    }
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    let (name, args) = match call.function {
                        Some(f) => (f.name, f.arguments),
                        None => (None, None),
                    };
                    if !self.started_calls.contains(&call.index) {
                        self.started_calls.push(call.index);
                        out.push(ChatEvent::ToolCallStart {
                            index: call.index,
                            id: call.id.unwrap_or_else(|| format!("call_{}", call.index)),
                            name: name.unwrap_or_default(),
                        });
                    }
                    if let Some(a) = args.filter(|a| !a.is_empty()) {
                        out.push(ChatEvent::ToolCallArgsDelta {
                            index: call.index,
                            json: a,
                        });
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.stopped = true;
                out.push(ChatEvent::Stop(stop_reason(&reason)));
            }
        }
        if let Some(u) = chunk.usage {
            self.saw_usage = true;
            out.push(ChatEvent::Usage(usage_from_wire(&u)));
        }
        Ok(())
    }

    /// Decodes a whole non-streamed completion body into `out`.
    pub fn decode_completion(
        &mut self,
        body: &[u8],
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamError> {
        let c: super::wire::CompletionIn = serde_json::from_slice(body).map_err(|e| {
            UpstreamError::new(
                ErrorKind::Protocol,
                format!("upstream sent an unreadable body: {e}"),
            )
        })?;
        let chunk = ChunkIn {
            choices: c
                .choices
                .into_iter()
                .map(|ch| super::wire::ChoiceIn {
                    index: ch.index,
                    delta: ch.message,
                    finish_reason: ch.finish_reason,
                })
                .collect(),
            usage: c.usage,
            error: None,
        };
        self.push_chunk(chunk, out)
    }

    /// Marks the stream's end (`[DONE]`, or a whole body read).
    pub fn finish(&mut self) {
        self.done = true;
    }

    /// Whether the stream's end has been read.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether a finish reason has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

/// Maps an OpenAI `finish_reason`.
pub fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "length" => StopReason::Length,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        _ => StopReason::End,
    }
}

fn usage_from_wire(u: &UsageIn) -> Usage {
    let cached = u
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    Usage {
        input: u.prompt_tokens.saturating_sub(cached),
        output: u.completion_tokens,
        cache_read: cached,
        cache_write: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: serde_json::Value) -> Result<ChatRequest, DecodeError> {
        decode_request(v.to_string().as_bytes())
    }

    #[test]
    fn roles_and_parts_decode() {
        let req = decode(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_completion_tokens": 7,
            "stop": "END",
            "user": "u1",
            "some_future_field": {"ignored": true}
        }))
        .unwrap();
        assert_eq!(req.system.as_deref(), Some("be brief\n\nand kind"));
        assert_eq!(req.messages.len(), 3);
        assert_eq!(
            req.messages[0].content[1],
            ContentPart::Image(ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "AA==".into()
            })
        );
        assert_eq!(
            req.messages[1].content,
            vec![ContentPart::ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert_eq!(req.messages[2].role, Role::Tool);
        assert!(req.stream && req.include_usage);
        assert_eq!(req.sampling.max_tokens, Some(7));
        assert_eq!(req.sampling.stop, vec!["END".to_string()]);
        assert_eq!(req.affinity.as_deref(), Some("u1"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = decode(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"})).unwrap_err();
        assert_eq!(e.param, "temperature");
        let e = decode(json!({"model": "m", "messages": [{"role": "user", "content": 5}]}))
            .unwrap_err();
        assert_eq!(e.param, "messages[0].content");
        let e =
            decode(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}))
                .unwrap_err();
        assert_eq!(e.param, "n");
        let e = decode(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.param, "messages[0].role");
        let e = decode(json!({"messages": []})).unwrap_err();
        assert!(e.message.contains("model"), "{e:?}");
        let e = decode_request(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{e:?}");
        let user = json!([{"role": "user", "content": "x"}]);
        for (body, param) in [
            (
                json!({"model": "m", "messages": user, "temperature": 5}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": user, "top_p": -1}),
                "top_p",
            ),
            (
                json!({"model": "m", "messages": user, "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": user, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "messages": user, "tool_choice": "required"}),
                "tool_choice",
            ),
        ] {
            assert_eq!(decode(body).unwrap_err().param, param);
        }
        let e = decode_request(b"[1, 2]").unwrap_err();
        assert_eq!(e.message, "the request body must be a JSON object");
        let e = decode(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})).unwrap_err();
        assert_eq!(e.param, "messages[0].content[0].type");
    }

    #[test]
    fn chunks_become_events() {
        let mut d = ChunkDecoder::default();
        let mut out = Vec::new();
        for data in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        ] {
            d.decode(data, &mut out).unwrap();
        }
        assert_eq!(
            out,
            vec![
                ChatEvent::TextDelta("Hi".into()),
                ChatEvent::ToolCallStart {
                    index: 0,
                    id: "c".into(),
                    name: "f".into()
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "{\"a\"".into()
                },
                ChatEvent::Stop(StopReason::ToolUse),
                ChatEvent::Usage(Usage {
                    input: 6,
                    output: 3,
                    cache_read: 4,
                    cache_write: 0
                }),
            ]
        );
        let err = d
            .decode(
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
                &mut out,
            )
            .unwrap_err();
        assert_eq!(err.message, "boom");
    }
}

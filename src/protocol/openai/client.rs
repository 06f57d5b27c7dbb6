//! OpenAI Chat Completions, client side: what upstreams of this protocol get (the
//! request, encoded from the canonical one) and what they stream back
//! (decoded into canonical events).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Value};

use super::wire::{ChunkIn, FunctionOut, ToolCallOut, UsageIn};
use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, Role, StopReason, ToolChoice, UpstreamError,
    Usage,
};

/// The request body for an OpenAI-compatible upstream, borrowed from the
/// canonical request so the conversation is not copied.
#[derive(Serialize)]
pub struct UpstreamRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage<'a>>,
    stream: bool,
    stream_options: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(flatten)]
    extras: &'a serde_json::Map<String, Value>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: OutContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutContent<'a> {
    Null,
    Text(Cow<'a, str>),
    Parts(Vec<Value>),
}

/// The upstream body made from an OpenAI client's own: only `model`,
/// `stream` and `stream_options.include_usage` change (the upstream call
/// always streams, with usage), and `thread_id`, troupe's own, is left
/// out. Every other field travels as the client wrote it.
pub fn encode_native(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, serde_json::Error> {
    use serde_json::value::{to_raw_value, RawValue};
    let model = to_raw_value(upstream_model)?;
    let yes = to_raw_value(&true)?;
    let mut members = crate::protocol::members(body)?;
    let mut options: serde_json::Map<String, Value> =
        match members.iter().find(|(k, _)| k == "stream_options") {
            Some((_, v)) => serde_json::from_str(v.get()).unwrap_or_default(),
            None => serde_json::Map::new(),
        };
    options.insert("include_usage".into(), Value::Bool(true));
    let options: Box<RawValue> = to_raw_value(&options)?;
    // `null` is read as absent here; upstreams may refuse it.
    members.retain(|(k, v)| k != "thread_id" && v.get() != "null");
    crate::protocol::set_member(&mut members, "model", &model);
    crate::protocol::set_member(&mut members, "stream", &yes);
    crate::protocol::set_member(&mut members, "stream_options", &options);
    Ok(crate::protocol::write_members(&members))
}

/// Builds the upstream body: always streamed, always asking for usage.
pub fn encode_request<'a>(req: &'a ChatRequest, upstream_model: &'a str) -> UpstreamRequest<'a> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(OutMessage {
            role: "system",
            content: OutContent::Text(Cow::Borrowed(system)),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
    }
    for m in &req.messages {
        match m.role {
            Role::Tool => {
                for part in &m.content {
                    if let ContentPart::ToolResult {
                        call_id, content, ..
                    } = part
                    {
                        messages.push(OutMessage {
                            role: "tool",
                            content: OutContent::Text(join_text(content)),
                            name: None,
                            tool_calls: Vec::new(),
                            tool_call_id: Some(call_id),
                        });
                    }
                }
            }
            Role::Assistant => {
                let text = join_text(&m.content);
                let tool_calls: Vec<ToolCallOut<'_>> = m
                    .content
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::ToolCall {
                            id,
                            name,
                            arguments,
                        } => Some(ToolCallOut {
                            id,
                            kind: "function",
                            function: FunctionOut {
                                name,
                                arguments: if arguments.is_empty() {
                                    "{}"
                                } else {
                                    arguments
                                },
                            },
                        }),
                        _ => None,
                    })
                    .collect();
                let content = if text.is_empty() && !tool_calls.is_empty() {
                    OutContent::Null
                } else {
                    OutContent::Text(text)
                };
                messages.push(OutMessage {
                    role: "assistant",
                    content,
                    name: m.name.as_deref(),
                    tool_calls,
                    tool_call_id: None,
                });
            }
            Role::System | Role::User => {
                let only_text = m.content.iter().all(|p| matches!(p, ContentPart::Text(_)));
                let content = if only_text {
                    OutContent::Text(join_text(&m.content))
                } else {
                    OutContent::Parts(m.content.iter().filter_map(part_value).collect())
                };
                messages.push(OutMessage {
                    role: if m.role == Role::System {
                        "system"
                    } else {
                        "user"
                    },
                    content,
                    name: m.name.as_deref(),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                });
            }
        }
    }
    let s = &req.sampling;
    UpstreamRequest {
        model: upstream_model,
        messages,
        stream: true,
        stream_options: json!({"include_usage": true}),
        temperature: s.temperature,
        top_p: s.top_p,
        max_tokens: s.max_tokens,
        stop: &s.stop,
        seed: s.seed,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        tools: req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        }),
        parallel_tool_calls: if req.tools.is_empty() {
            None
        } else {
            req.parallel_tool_calls
        },
        user: req.user.as_deref(),
        response_format: req.response_format.as_ref(),
        reasoning_effort: req.effective_reasoning_effort(),
        extras: &req.openai_extras,
    }
}

fn join_text(parts: &[ContentPart]) -> Cow<'_, str> {
    let mut texts = parts.iter().filter_map(|p| match p {
        ContentPart::Text(t) if !t.is_empty() => Some(t.as_str()),
        _ => None,
    });
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    match texts.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut s = String::from(first);
            s.push('\n');
            s.push_str(second);
            for t in texts {
                s.push('\n');
                s.push_str(t);
            }
            Cow::Owned(s)
        }
    }
}

fn part_value(p: &ContentPart) -> Option<Value> {
    match p {
        ContentPart::Text(t) => Some(json!({"type": "text", "text": t})),
        ContentPart::Image(img) => {
            Some(json!({"type": "image_url", "image_url": {"url": img.to_url()}}))
        }
        _ => None,
    }
}

// ---- what upstreams stream back ----

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

    pub(crate) fn push_chunk(
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
                        out.push(ChatEvent::tool_call_start(
                            call.index,
                            call.id.unwrap_or_else(|| format!("call_{}", call.index)),
                            name.unwrap_or_default(),
                        ));
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
    use crate::canonical::{Message, Tool};
    use serde_json::json;
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
                ChatEvent::tool_call_start(0, "c".into(), "f".into()),
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
    #[test]
    fn upstream_body_keeps_roles_and_tools() {
        let req = ChatRequest {
            model: "public".into(),
            system: Some("sys".into()),
            messages: vec![
                Message::text(Role::User, "q"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentPart::Thinking {
                            text: "hmm".into(),
                            signature: None,
                        },
                        ContentPart::ToolCall {
                            id: "c1".into(),
                            name: "f".into(),
                            arguments: String::new(),
                        },
                    ],
                    name: None,
                },
                Message::tool_result("c1", "ok"),
            ],
            tools: vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Tool("f".into())),
            ..Default::default()
        };
        let v = serde_json::to_value(encode_request(&req, "upstream")).unwrap();
        assert_eq!(
            v,
            json!({
                "model": "upstream",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "content": "ok", "tool_call_id": "c1"}
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}}
            })
        );
    }
}

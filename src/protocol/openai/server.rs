//! OpenAI Chat Completions, server side: what clients send (requests, decoded into
//! the canonical model) and what they get back (streamed chunks or one
//! body, encoded from canonical events).

use bytes::{BufMut as _, BytesMut};

use super::wire::{
    ChatCompletion, ChatCompletionRequest, ChunkHead, CompletionChoice, ContentPartWire, DeltaOut,
    ErrorBody, ErrorEnvelope, FunctionDeltaOut, FunctionOut, MessageContent, PromptTokensDetails,
    RequestMessage, ResponseMessage, Stop, ToolCallDeltaOut, ToolCallOut, ToolChoiceWire,
    UsageWire, WireRole,
};
use crate::canonical::{
    Answer, ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Message, Role, Sampling,
    StopReason, Tool, ToolChoice, UpstreamError, Usage, UsageTally,
};
use crate::protocol::{parse_json, DecodeError};

/// Top-level fields every upstream takes, or the gateway itself honours
/// (`user` and `thread_id` keep a conversation on its session).
pub const ALWAYS_TAKEN: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "n",
    "tools",
    "tool_choice",
    "user",
    "thread_id",
];

/// What an OpenAI upstream takes besides, through the canonical request.
pub const TAKEN_BY_OPENAI: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
];

/// What an Anthropic upstream takes besides (`reasoning_effort` becomes a
/// thinking budget; `stop` becomes `stop_sequences`).
pub const TAKEN_BY_ANTHROPIC: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "parallel_tool_calls",
    "reasoning_effort",
];

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
    let mut untranslated = Vec::new();
    let mut messages = Vec::with_capacity(w.messages.len());
    let mut leading = true;
    for (i, m) in w.messages.into_iter().enumerate() {
        let is_system = matches!(m.role, WireRole::System | WireRole::Developer);
        if leading && is_system {
            let text = text_of(m, i, &mut untranslated)?;
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
        messages.push(message_from_wire(m, i, &mut untranslated)?);
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
        native: None,
        repaired: false,
        untranslated,
        free_form_tools: Vec::new(),
        openai_extras: Default::default(),
    })
}

fn text_of(m: RequestMessage, i: usize, skipped: &mut Vec<String>) -> Result<String, DecodeError> {
    match m.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(t)) => Ok(t),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match part_from_wire(p, i, j, skipped)? {
                    None => {}
                    Some(ContentPart::Text(t)) => {
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

fn parts_of(
    content: Option<MessageContent>,
    i: usize,
    skipped: &mut Vec<String>,
) -> Result<Vec<ContentPart>, DecodeError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![ContentPart::Text(t)]),
        Some(MessageContent::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.into_iter().enumerate() {
                out.extend(part_from_wire(p, i, j, skipped)?);
            }
            Ok(out)
        }
    }
}

/// One content part; `None` for a part of OpenAI's that the canonical
/// model does not carry (a `file`, `input_audio`), named in `skipped`: an
/// OpenAI upstream gets it with the client's body, another is told.
fn part_from_wire(
    p: ContentPartWire,
    i: usize,
    j: usize,
    skipped: &mut Vec<String>,
) -> Result<Option<ContentPart>, DecodeError> {
    let at = |field: &str| format!("messages[{i}].content[{j}].{field}");
    match p.kind.as_str() {
        "text" | "input_text" => match p.text {
            Some(t) => Ok(Some(ContentPart::Text(t))),
            None => Err(DecodeError::new(at("text"), "a text part needs `text`")),
        },
        "image_url" => match p.image_url {
            Some(img) => Ok(Some(ContentPart::Image(ImageSource::from_url(&img.url)))),
            None => Err(DecodeError::new(
                at("image_url"),
                "an image_url part needs `image_url.url`",
            )),
        },
        "refusal" => Ok(Some(ContentPart::Text(p.refusal.unwrap_or_default()))),
        kind @ ("file" | "input_audio") => {
            let name = format!("{kind} parts");
            if !skipped.contains(&name) {
                skipped.push(name);
            }
            Ok(None)
        }
        other => Err(DecodeError::new(
            at("type"),
            format!("content part type `{other}` is not supported"),
        )),
    }
}

fn message_from_wire(
    m: RequestMessage,
    i: usize,
    skipped: &mut Vec<String>,
) -> Result<Message, DecodeError> {
    let name = m.name.clone();
    match m.role {
        WireRole::System | WireRole::Developer => Ok(Message {
            role: Role::System,
            content: vec![ContentPart::Text(text_of(m, i, skipped)?)],
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
                content: parts_of(m.content, i, skipped)?,
                name,
            })
        }
        WireRole::Assistant => {
            let mut content = parts_of(m.content, i, skipped)?;
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
            let content = parts_of(m.content, i, skipped)?;
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

// ---- responses to clients ----

/// OpenAI's `finish_reason` for a stop.
pub fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::End | StopReason::StopSequence => "stop",
        StopReason::Length => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

fn usage_wire(u: &Usage) -> UsageWire {
    let prompt = u.prompt_total();
    UsageWire {
        prompt_tokens: prompt,
        completion_tokens: u.output,
        total_tokens: prompt.saturating_add(u.output),
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: u.cache_read,
        },
    }
}

/// The body of a non-streamed answer.
pub fn completion_body(answer: &Answer, req: &ChatRequest, id: &str, created: u64) -> Vec<u8> {
    let tool_calls = answer
        .tool_calls
        .iter()
        .map(|c| ToolCallOut {
            id: &c.id,
            kind: "function",
            function: FunctionOut {
                name: &c.name,
                arguments: if c.arguments.is_empty() {
                    "{}"
                } else {
                    &c.arguments
                },
            },
        })
        .collect::<Vec<_>>();
    let body = ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: &req.model,
        choices: [CompletionChoice {
            index: 0,
            message: ResponseMessage {
                role: "assistant",
                content: if answer.text.is_empty() && !tool_calls.is_empty() {
                    None
                } else {
                    Some(&answer.text)
                },
                refusal: None,
                reasoning_content: (!answer.thinking.is_empty())
                    .then_some(answer.thinking.as_str()),
                tool_calls,
            },
            finish_reason: finish_reason(answer.stop.unwrap_or(StopReason::End)),
            logprobs: None,
        }],
        usage: usage_wire(&answer.usage(req)),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Appends `s` as a JSON string (serde_json's escaping, without the
/// machinery of serializing a struct around it).
fn json_string(out: &mut BytesMut, s: &str) {
    // Writing a string to memory cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Encodes events as Chat Completions chunks (`data: {...}\n\n`), keeping one
/// id, `created` and model for the whole response.
#[derive(Debug)]
pub struct StreamEncoder {
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`, the
    /// same in every chunk of the response: encoded once.
    head: Vec<u8>,
    include_usage: bool,
    role_sent: bool,
    stop: Option<StopReason>,
    tally: UsageTally,
}

impl StreamEncoder {
    pub fn new(id: String, created: u64, model: String, include_usage: bool) -> Self {
        let mut head = Vec::with_capacity(96 + id.len() + model.len());
        head.extend_from_slice(b"data: ");
        let _ = serde_json::to_writer(
            &mut head,
            &ChunkHead {
                id: &id,
                object: "chat.completion.chunk",
                created,
                model: &model,
            },
        );
        // The object stays open: each chunk writes its choices (and usage).
        head.pop();
        head.extend_from_slice(b",\"choices\":");
        StreamEncoder {
            head,
            include_usage,
            role_sent: false,
            stop: None,
            tally: UsageTally::new(include_usage),
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: DeltaOut<'_>, finish: Option<&'static str>) {
        self.frame(out, finish, |out| {
            let mut w = out.writer();
            // Writing to memory cannot fail; serialization of these types cannot either.
            let _ = serde_json::to_writer(&mut w, &delta);
        });
    }

    /// One chunk around the delta `write_delta` appends.
    fn frame(
        &self,
        out: &mut BytesMut,
        finish: Option<&'static str>,
        write_delta: impl FnOnce(&mut BytesMut),
    ) {
        out.reserve(self.head.len() + 64);
        out.put_slice(&self.head);
        out.put_slice(b"[{\"index\":0,\"delta\":");
        write_delta(out);
        match finish {
            None => out.put_slice(b",\"finish_reason\":null}]}\n\n"),
            Some(reason) => {
                out.put_slice(b",\"finish_reason\":\"");
                out.put_slice(reason.as_bytes());
                out.put_slice(b"\"}]}\n\n");
            }
        }
    }

    /// Appends the chunk(s) for one event.
    pub fn event(&mut self, ev: &ChatEvent, out: &mut BytesMut) {
        self.tally.observe(ev);
        if !self.role_sent && !ev.is_preamble() && !matches!(ev, ChatEvent::Error(_)) {
            self.role_sent = true;
            self.chunk(
                out,
                DeltaOut {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Default::default()
                },
                None,
            );
        }
        match ev {
            // The commonest chunk by far, written without serde's machinery.
            ChatEvent::TextDelta(t) => self.frame(out, None, |out| {
                out.reserve(t.len() + 16);
                out.put_slice(b"{\"content\":");
                json_string(out, t);
                out.put_u8(b'}');
            }),
            ChatEvent::ThinkingDelta(t) => self.chunk(
                out,
                DeltaOut {
                    reasoning_content: Some(t),
                    ..Default::default()
                },
                None,
            ),
            ChatEvent::ToolCallStart { index, call } => self.chunk(
                out,
                DeltaOut {
                    tool_calls: Some([ToolCallDeltaOut {
                        index: *index,
                        id: Some(&call.id),
                        kind: Some("function"),
                        function: FunctionDeltaOut {
                            name: Some(&call.name),
                            arguments: "",
                        },
                    }]),
                    ..Default::default()
                },
                None,
            ),
            ChatEvent::ToolCallArgsDelta { index, json } => self.chunk(
                out,
                DeltaOut {
                    tool_calls: Some([ToolCallDeltaOut {
                        index: *index,
                        id: None,
                        kind: None,
                        function: FunctionDeltaOut {
                            name: None,
                            arguments: json,
                        },
                    }]),
                    ..Default::default()
                },
                None,
            ),
            // The `finish_reason` chunk is written at the end: a fragment
            // may still come with or after the stop, and belongs before it.
            ChatEvent::Stop(r) => {
                if self.stop.is_none() {
                    self.stop = Some(*r);
                }
            }
            ChatEvent::Error(e) => self.error(e, out),
            ChatEvent::Start { .. }
            | ChatEvent::Usage(_)
            | ChatEvent::StopSequence(_)
            | ChatEvent::AnthropicBlock(_)
            | ChatEvent::ThinkingSignature(_)
            | ChatEvent::RedactedThinking(_)
            | ChatEvent::EncryptedReasoning(_) => {}
        }
    }

    /// The usage tally, so counts can be made before [`Self::finish`].
    pub fn tally_mut(&mut self) -> &mut UsageTally {
        &mut self.tally
    }

    /// The usage, if known without extra counting.
    pub fn known_usage(&self, req: &ChatRequest) -> Option<Usage> {
        self.tally.known(req)
    }

    /// Whether the answer has stopped (a normal end may follow).
    pub fn stopped(&self) -> bool {
        self.stop.is_some()
    }

    /// Appends the normal end: the `finish_reason` chunk, the usage chunk
    /// if asked for, then `[DONE]`.
    pub fn finish(&mut self, req: &ChatRequest, out: &mut BytesMut) {
        let reason = finish_reason(self.stop.unwrap_or(StopReason::End));
        self.chunk(out, DeltaOut::default(), Some(reason));
        if self.include_usage {
            let usage = usage_wire(&self.tally.finish(req));
            out.put_slice(&self.head);
            out.put_slice(b"[],\"usage\":");
            let mut w = out.writer();
            let _ = serde_json::to_writer(&mut w, &usage);
            w.into_inner().put_slice(b"}\n\n");
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    /// Appends an in-stream error: a chunk with an `error` object, no `[DONE]`.
    pub fn error(&mut self, e: &UpstreamError, out: &mut BytesMut) {
        Self::write_error(e, out);
    }

    /// Appends an in-stream error chunk; needs no state, so it can end a
    /// stream whose encoder is gone.
    pub fn write_error(e: &UpstreamError, out: &mut BytesMut) {
        let (kind, code) = openai_type_and_code(e);
        out.put_slice(b"data: ");
        out.put_slice(&error_body(&e.message, &kind, None, code.as_deref()));
        out.put_slice(b"\n\n");
    }
}

/// OpenAI's error envelope, `{"error": {"message", "type", "param",
/// "code"}}`: the body of an HTTP error and the data of an in-stream error
/// chunk (upstreams' envelopes are read with the same struct).
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            message: message.to_owned(),
            kind: Some(kind.to_owned()),
            param: param.map(str::to_owned),
            code: code.map(|c| serde_json::Value::String(c.to_owned())),
        },
    };
    // Serializing strings into memory cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

impl crate::protocol::EventEncoder for StreamEncoder {
    fn event(&mut self, ev: &ChatEvent, out: &mut BytesMut) {
        StreamEncoder::event(self, ev, out)
    }
    fn stopped(&self) -> bool {
        StreamEncoder::stopped(self)
    }
    fn finish(&mut self, req: &ChatRequest, out: &mut BytesMut) {
        StreamEncoder::finish(self, req, out)
    }
    fn usage(&self, req: &ChatRequest) -> Option<crate::canonical::Usage> {
        self.known_usage(req)
    }
    fn tally(&mut self) -> Option<&mut UsageTally> {
        Some(self.tally_mut())
    }
    fn write_error(e: &UpstreamError, out: &mut BytesMut) {
        StreamEncoder::write_error(e, out)
    }
}

/// OpenAI's error `type` and `code` for an upstream failure; a client
/// error keeps the upstream's own.
pub fn openai_type_and_code(e: &UpstreamError) -> (String, Option<String>) {
    match e.kind {
        ErrorKind::InvalidRequest => (
            e.error_type
                .clone()
                .unwrap_or_else(|| "invalid_request_error".into()),
            e.code.clone(),
        ),
        ErrorKind::RateLimited => (
            "rate_limit_error".into(),
            Some("rate_limit_exceeded".into()),
        ),
        ErrorKind::Timeout => ("server_error".into(), Some("timeout".into())),
        _ => ("server_error".into(), Some("upstream_error".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Message;
    use serde_json::{json, Value};
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
        let e = decode(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "hologram"}]}]})).unwrap_err();
        assert_eq!(e.param, "messages[0].content[0].type");
        // Parts OpenAI has and the canonical model does not are carried by
        // the body and named for other upstreams.
        let req = decode(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hear this"}, {"type": "input_audio"}, {"type": "file"}]}]}),
        )
        .unwrap();
        assert_eq!(
            req.messages[0].content,
            [ContentPart::Text("hear this".into())]
        );
        assert_eq!(req.untranslated, ["input_audio parts", "file parts"]);
    }

    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        let controls: String = (0u8..0x20).map(char::from).collect();
        for s in [
            "",
            "plain",
            "\"quoted\" \\ back/slash",
            "line\nnext\r\ttab",
            &controls,
            "\u{7f} é 中 😀 \u{2028}",
        ] {
            let mut out = BytesMut::new();
            json_string(&mut out, s);
            assert_eq!(
                out.as_ref(),
                serde_json::to_string(s).unwrap().as_bytes(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn text_chunks_match_the_serde_encoding() {
        let mut enc = StreamEncoder::new("chatcmpl-1".into(), 7, "m\"x".into(), false);
        let mut fast = BytesMut::new();
        enc.role_sent = true;
        enc.event(&ChatEvent::TextDelta("a \"b\"\n".into()), &mut fast);
        let mut reference = BytesMut::new();
        enc.chunk(
            &mut reference,
            DeltaOut {
                content: Some("a \"b\"\n"),
                ..Default::default()
            },
            None,
        );
        assert_eq!(fast, reference);
    }

    fn chunks(buf: &[u8]) -> Vec<Value> {
        std::str::from_utf8(buf)
            .unwrap()
            .split("\n\n")
            .filter(|s| !s.is_empty() && *s != "data: [DONE]")
            .map(|s| serde_json::from_str(s.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn stream_has_role_deltas_finish_usage_and_done() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hi")],
            include_usage: true,
            ..Default::default()
        };
        let mut enc = StreamEncoder::new("id1".into(), 7, "m".into(), true);
        let mut out = BytesMut::new();
        for ev in [
            ChatEvent::Start { model: "x".into() },
            ChatEvent::TextDelta("Hi".into()),
            ChatEvent::tool_call_start(0, "c".into(), "f".into()),
            ChatEvent::ToolCallArgsDelta {
                index: 0,
                json: "{}".into(),
            },
            ChatEvent::Stop(StopReason::ToolUse),
        ] {
            enc.event(&ev, &mut out);
        }
        enc.finish(&req, &mut out);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        let c = chunks(&out);
        assert_eq!(c.len(), 6);
        assert!(c
            .iter()
            .all(|c| c["id"] == "id1" && c["created"] == 7 && c["model"] == "m"));
        assert_eq!(
            c[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(c[0]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(
            c[2]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        assert_eq!(c[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c[5]["choices"], json!([]));
        assert!(c[5]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
}

//! Writing the OpenAI wire format: canonical requests for `openai` upstreams
//! and events as chunks or one completion body for OpenAI clients.

use std::borrow::Cow;
use std::io::Write as _;

use bytes::{BufMut as _, BytesMut};
use serde::Serialize;
use serde_json::{json, Value};

use super::wire::{
    ChatCompletion, ChunkHead, CompletionChoice, DeltaOut, FunctionDeltaOut, FunctionOut,
    PromptTokensDetails, ResponseMessage, ToolCallDeltaOut, ToolCallOut, UsageWire,
};
use crate::canonical::{
    Answer, ChatEvent, ChatRequest, ContentPart, ErrorKind, Role, StopReason, ToolChoice,
    UpstreamError, Usage, UsageTally,
};

// ---- upstream requests ----

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

// ---- client responses ----

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
            ChatEvent::ToolCallStart { index, id, name } => self.chunk(
                out,
                DeltaOut {
                    tool_calls: Some([ToolCallDeltaOut {
                        index: *index,
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionDeltaOut {
                            name: Some(name),
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
            ChatEvent::Stop(r) => {
                if self.stop.is_none() {
                    self.stop = Some(*r);
                    self.chunk(out, DeltaOut::default(), Some(finish_reason(*r)));
                }
            }
            ChatEvent::Error(e) => self.error(e, out),
            ChatEvent::Start { .. }
            | ChatEvent::Usage(_)
            | ChatEvent::ThinkingSignature(_)
            | ChatEvent::RedactedThinking(_) => {}
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

    /// Appends the normal end: the usage chunk if asked for, then `[DONE]`.
    pub fn finish(&mut self, req: &ChatRequest, out: &mut BytesMut) {
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
        let mut w = out.writer();
        // Writing to memory cannot fail; serialization of this value cannot either.
        let _ = serde_json::to_writer(
            &mut w,
            &json!({"error": {"message": e.message, "type": kind, "param": null, "code": code}}),
        );
        let _ = w.write_all(b"\n\n");
    }
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
    use crate::canonical::{Message, Tool};

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
            ChatEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
                name: "f".into(),
            },
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

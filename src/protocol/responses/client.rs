//! The Responses API, client side: what an `openai` pool with
//! `api = "responses"` sends its upstream (a Responses client's own body,
//! or one built from the canonical request) and how its stream of events
//! becomes canonical events.

use serde_json::{json, Map, Value};

use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Role, StopReason, ToolChoice,
    UpstreamError, Usage,
};

/// A Responses client's own body for the upstream: only `model` and
/// `stream` (always true) change, and `null` members go (troupe reads them
/// as absent).
pub fn encode_native(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, serde_json::Error> {
    use serde_json::value::to_raw_value;
    let model = to_raw_value(upstream_model)?;
    let yes = to_raw_value(&true)?;
    let mut members = crate::protocol::members(body)?;
    members.retain(|(_, v)| v.get() != "null");
    crate::protocol::set_member(&mut members, "model", &model);
    crate::protocol::set_member(&mut members, "stream", &yes);
    Ok(crate::protocol::write_members(&members))
}

/// The upstream body for a request of another protocol (or one whose
/// conversation the gateway rebuilt): always streamed, never stored
/// upstream, with encrypted reasoning asked for so it can be handed back.
pub fn encode_request(req: &ChatRequest, upstream_model: &str) -> Value {
    let mut input = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        match m.role {
            Role::System => input.push(json!({
                "type": "message", "role": "developer", "content": parts(&m.content, "input_text"),
            })),
            Role::User => input.push(json!({
                "type": "message", "role": "user", "content": parts(&m.content, "input_text"),
            })),
            Role::Tool => {
                for p in &m.content {
                    if let ContentPart::ToolResult {
                        call_id, content, ..
                    } = p
                    {
                        input.push(json!({
                            "type": "function_call_output", "call_id": call_id,
                            "output": joined(content),
                        }));
                    }
                }
            }
            Role::Assistant => assistant(&m.content, &mut input),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    if let Some(system) = &req.system {
        body.insert("instructions".into(), json!(system));
    }
    body.insert("input".into(), Value::Array(input));
    body.insert("stream".into(), json!(true));
    body.insert("store".into(), json!(false));
    body.insert("include".into(), json!(["reasoning.encrypted_content"]));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut tool =
                    json!({"type": "function", "name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        if let Some(p) = req.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), json!(p));
        }
    }
    if let Some(choice) = &req.tool_choice {
        let c = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "name": name}),
        };
        body.insert("tool_choice".into(), c);
    }
    let s = &req.sampling;
    if let Some(t) = s.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(n) = s.max_tokens {
        body.insert("max_output_tokens".into(), json!(n));
    }
    if let Some(effort) = req.effective_reasoning_effort() {
        body.insert("reasoning".into(), json!({"effort": effort}));
    }
    let mut text = Map::new();
    if let Some(format) = req.response_format.as_ref().and_then(text_format) {
        text.insert("format".into(), format);
    }
    if let Some(v) = req.openai_extras.get("verbosity") {
        text.insert("verbosity".into(), v.clone());
    }
    if !text.is_empty() {
        body.insert("text".into(), Value::Object(text));
    }
    for (k, v) in &req.openai_extras {
        if k != "verbosity" {
            body.insert(k.clone(), v.clone());
        }
    }
    if let Some(user) = &req.user {
        body.insert("user".into(), json!(user));
    }
    Value::Object(body)
}

/// Chat Completions' `response_format` as Responses' `text.format` (the
/// schema beside the type).
fn text_format(f: &Value) -> Option<Value> {
    match f["type"].as_str()? {
        "json_schema" => {
            let mut out = f["json_schema"].as_object()?.clone();
            out.insert("type".into(), json!("json_schema"));
            Some(Value::Object(out))
        }
        "json_object" => Some(json!({"type": "json_object"})),
        _ => None,
    }
}

fn parts(content: &[ContentPart], text_type: &str) -> Vec<Value> {
    content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(json!({"type": text_type, "text": t})),
            ContentPart::Image(img) => Some(json!({
                "type": "input_image",
                "image_url": match img {
                    ImageSource::Url(u) => u.clone(),
                    other => other.to_url(),
                },
            })),
            _ => None,
        })
        .collect()
}

fn joined(content: &[ContentPart]) -> String {
    let mut out = String::new();
    for p in content {
        if let ContentPart::Text(t) = p {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(t);
        }
    }
    out
}

/// An assistant turn as output items: its reasoning (only what this kind
/// of upstream issued travels back), its text, its calls.
fn assistant(content: &[ContentPart], input: &mut Vec<Value>) {
    let mut text = String::new();
    for p in content {
        match p {
            ContentPart::EncryptedReasoning { summary, data } => {
                let summary: Vec<Value> = if summary.is_empty() {
                    Vec::new()
                } else {
                    vec![json!({"type": "summary_text", "text": summary})]
                };
                input.push(
                    json!({"type": "reasoning", "summary": summary, "encrypted_content": data}),
                );
            }
            ContentPart::Text(t) => text.push_str(t),
            ContentPart::ToolCall {
                id,
                name,
                arguments,
            } => {
                if !text.is_empty() {
                    input.push(assistant_text(&std::mem::take(&mut text)));
                }
                input.push(json!({
                    "type": "function_call", "call_id": id, "name": name, "arguments": arguments,
                }));
            }
            // Another provider's reasoning means nothing here.
            _ => {}
        }
    }
    if !text.is_empty() {
        input.push(assistant_text(&text));
    }
}

fn assistant_text(text: &str) -> Value {
    json!({
        "type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// A call being read: its canonical index, and how its arguments come.
#[derive(Debug)]
struct CallIn {
    output_index: u64,
    index: u32,
    /// A free-form tool's call: its input is a string, sent on as the
    /// `input` member of JSON arguments.
    custom: bool,
    /// Whether argument text went out (else the done item's is used).
    streamed: bool,
}

/// Reads a Responses upstream's stream (or whole response) into canonical
/// events.
#[derive(Debug, Default)]
pub struct EventDecoder {
    calls: Vec<CallIn>,
    /// Whether reasoning text went out for the open reasoning item (else
    /// the done item's summary is used).
    thinking_streamed: bool,
    stop: Option<StopReason>,
    done: bool,
}

fn protocol(message: impl Into<String>) -> UpstreamError {
    UpstreamError::new(ErrorKind::Protocol, message)
}

/// An upstream's failure (`response.failed`, an `error` event) by its code.
fn failure(error: &Value) -> UpstreamError {
    let code = error["code"].as_str().unwrap_or_default();
    let message = error["message"]
        .as_str()
        .unwrap_or("the upstream failed the response");
    let kind = match code {
        "rate_limit_exceeded" | "server_is_overloaded" | "slow_down" => ErrorKind::RateLimited,
        "insufficient_quota" | "invalid_api_key" => ErrorKind::Auth,
        "context_length_exceeded" | "invalid_prompt" | "invalid_request_error" => {
            ErrorKind::InvalidRequest
        }
        _ => ErrorKind::Unavailable,
    };
    let mut e = UpstreamError::new(kind, message);
    if !code.is_empty() {
        e.code = Some(code.to_owned());
    }
    e
}

/// The JSON text of a string, without its quotes: a piece of a JSON string.
fn json_piece(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

impl EventDecoder {
    pub fn done(&self) -> bool {
        self.done
    }

    pub fn stopped(&self) -> bool {
        self.stop.is_some()
    }

    fn call(&self, output_index: u64) -> Option<&CallIn> {
        self.calls.iter().find(|c| c.output_index == output_index)
    }

    /// Starts a call item (once).
    fn start_call(&mut self, output_index: u64, item: &Value, out: &mut Vec<ChatEvent>) {
        if self.call(output_index).is_some() {
            return;
        }
        let custom = item["type"] == "custom_tool_call";
        let index = self.calls.len() as u32;
        self.calls.push(CallIn {
            output_index,
            index,
            custom,
            streamed: false,
        });
        let name = match item["namespace"].as_str() {
            Some(ns) if !ns.is_empty() => {
                format!("{ns}__{}", item["name"].as_str().unwrap_or_default())
            }
            _ => item["name"].as_str().unwrap_or_default().to_owned(),
        };
        out.push(ChatEvent::tool_call_start(
            index,
            item["call_id"].as_str().unwrap_or_default().to_owned(),
            name,
        ));
    }

    /// More argument (or free-form input) text of a call.
    fn call_text(&mut self, output_index: u64, delta: &str, out: &mut Vec<ChatEvent>) {
        let Some(call) = self
            .calls
            .iter_mut()
            .find(|c| c.output_index == output_index)
        else {
            return;
        };
        if delta.is_empty() {
            return;
        }
        let json = if call.custom {
            let head = if call.streamed { "" } else { "{\"input\":\"" };
            format!("{head}{}", json_piece(delta))
        } else {
            delta.to_owned()
        };
        call.streamed = true;
        out.push(ChatEvent::ToolCallArgsDelta {
            index: call.index,
            json,
        });
    }

    /// A whole item, from `response.output_item.done` or a whole response.
    fn item_done(&mut self, output_index: u64, item: &Value, out: &mut Vec<ChatEvent>) {
        match item["type"].as_str() {
            Some("function_call" | "custom_tool_call") => {
                self.start_call(output_index, item, out);
                let Some(call) = self
                    .calls
                    .iter_mut()
                    .find(|c| c.output_index == output_index)
                else {
                    return;
                };
                let index = call.index;
                let json = match (call.custom, call.streamed) {
                    (false, false) => item["arguments"].as_str().unwrap_or_default().to_owned(),
                    (false, true) => return,
                    (true, false) => {
                        json!({"input": item["input"].as_str().unwrap_or_default()}).to_string()
                    }
                    (true, true) => "\"}".to_owned(),
                };
                call.streamed = true;
                if !json.is_empty() {
                    out.push(ChatEvent::ToolCallArgsDelta { index, json });
                }
            }
            Some("reasoning") => {
                if !std::mem::take(&mut self.thinking_streamed) {
                    let summary: Vec<&str> = item["summary"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["text"].as_str())
                        .collect();
                    let text = summary.join("\n\n");
                    if !text.is_empty() {
                        out.push(ChatEvent::ThinkingDelta(text));
                    }
                }
                if let Some(blob) = item["encrypted_content"].as_str() {
                    out.push(ChatEvent::EncryptedReasoning(blob.to_owned()));
                }
            }
            Some("message") => {
                // Text that was not streamed (a whole response).
                for part in item["content"].as_array().into_iter().flatten() {
                    let text = part["text"]
                        .as_str()
                        .or_else(|| part["refusal"].as_str())
                        .unwrap_or_default();
                    if !text.is_empty() {
                        out.push(ChatEvent::TextDelta(text.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }

    /// The end of a response: usage, then the stop.
    fn end(&mut self, response: &Value, out: &mut Vec<ChatEvent>) {
        let u = &response["usage"];
        if u.is_object() {
            let input = u["input_tokens"].as_u64().unwrap_or(0);
            let cached = u["input_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            out.push(ChatEvent::Usage(Usage {
                input: clamp(input.saturating_sub(cached)),
                output: clamp(u["output_tokens"].as_u64().unwrap_or(0)),
                cache_read: clamp(cached),
                cache_write: 0,
            }));
        }
        let stop = match (
            response["status"].as_str(),
            response["incomplete_details"]["reason"].as_str(),
        ) {
            (Some("incomplete"), Some("content_filter")) => StopReason::ContentFilter,
            (Some("incomplete"), _) => StopReason::Length,
            _ if !self.calls.is_empty() => StopReason::ToolUse,
            _ => StopReason::End,
        };
        self.stop = Some(stop);
        self.done = true;
        out.push(ChatEvent::Stop(stop));
    }

    /// Decodes one event's data.
    pub fn decode(&mut self, data: &str, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        let ev: Value = serde_json::from_str(data)
            .map_err(|e| protocol(format!("upstream sent an unreadable event: {e}")))?;
        let index = ev["output_index"].as_u64().unwrap_or(0);
        match ev["type"].as_str().unwrap_or_default() {
            "response.output_item.added" => {
                let item = &ev["item"];
                match item["type"].as_str() {
                    Some("function_call" | "custom_tool_call") => self.start_call(index, item, out),
                    Some("reasoning") => self.thinking_streamed = false,
                    _ => {}
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(d) = ev["delta"].as_str().filter(|d| !d.is_empty()) {
                    out.push(ChatEvent::TextDelta(d.to_owned()));
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(d) = ev["delta"].as_str().filter(|d| !d.is_empty()) {
                    self.thinking_streamed = true;
                    out.push(ChatEvent::ThinkingDelta(d.to_owned()));
                }
            }
            // Summary parts after the first are paragraphs of one text.
            "response.reasoning_summary_part.added"
                if ev["summary_index"].as_u64().unwrap_or(0) > 0 =>
            {
                out.push(ChatEvent::ThinkingDelta("\n\n".to_owned()));
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let delta = ev["delta"].as_str().unwrap_or_default().to_owned();
                self.call_text(index, &delta, out);
            }
            "response.output_item.done" => {
                let item = ev["item"].clone();
                // Text was streamed as deltas; a message item adds nothing.
                if item["type"] != "message" {
                    self.item_done(index, &item, out);
                }
            }
            "response.completed" | "response.incomplete" => self.end(&ev["response"], out),
            "response.failed" => {
                self.done = true;
                return Err(failure(&ev["response"]["error"]));
            }
            "error" => {
                self.done = true;
                let error = if ev["error"].is_object() {
                    &ev["error"]
                } else {
                    &ev
                };
                return Err(failure(error));
            }
            _ => {}
        }
        Ok(())
    }

    /// Decodes a whole (non-streamed) response object.
    pub fn decode_response(
        &mut self,
        body: &[u8],
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamError> {
        let resp: Value = serde_json::from_slice(body)
            .map_err(|e| protocol(format!("upstream sent an unreadable response: {e}")))?;
        if resp["status"] == "failed" {
            self.done = true;
            return Err(failure(&resp["error"]));
        }
        let items = resp["output"]
            .as_array()
            .ok_or_else(|| protocol("upstream response has no `output`"))?;
        for (i, item) in items.iter().enumerate() {
            self.item_done(i as u64, item, out);
        }
        self.end(&resp, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(events: &[Value]) -> Result<Vec<ChatEvent>, UpstreamError> {
        let mut d = EventDecoder::default();
        let mut out = Vec::new();
        for ev in events {
            d.decode(&ev.to_string(), &mut out)?;
        }
        assert!(d.done() && d.stopped());
        Ok(out)
    }

    #[test]
    fn a_stream_becomes_canonical_events() {
        let events = decode(&[
            json!({"type": "response.created", "response": {"id": "r"}}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs"}}),
            json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "hmm"}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "hmm"}], "encrypted_content": "enc-1"}}),
            json!({"type": "response.output_item.added", "output_index": 1, "item": {"type": "message", "id": "m"}}),
            json!({"type": "response.output_text.delta", "output_index": 1, "delta": "hi"}),
            json!({"type": "response.output_item.done", "output_index": 1, "item": {"type": "message", "content": [{"type": "output_text", "text": "hi"}]}}),
            json!({"type": "response.output_item.added", "output_index": 2, "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{\"a\":"}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "1}"}),
            json!({"type": "response.output_item.done", "output_index": 2, "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"}}),
            json!({"type": "response.output_item.added", "output_index": 3, "item": {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "namespace": "ns"}}),
            json!({"type": "response.custom_tool_call_input.delta", "output_index": 3, "delta": "line \"1\"\n"}),
            json!({"type": "response.output_item.done", "output_index": 3, "item": {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "line \"1\"\n"}}),
            json!({"type": "response.completed", "response": {"status": "completed", "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3}}}),
        ])
        .unwrap();
        let args: String = events
            .iter()
            .filter_map(|e| match e {
                ChatEvent::ToolCallArgsDelta { index: 1, json } => Some(json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"input": "line \"1\"\n"})
        );
        assert_eq!(
            events,
            vec![
                ChatEvent::ThinkingDelta("hmm".into()),
                ChatEvent::EncryptedReasoning("enc-1".into()),
                ChatEvent::TextDelta("hi".into()),
                ChatEvent::tool_call_start(0, "c1".into(), "f".into()),
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "{\"a\":".into()
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 0,
                    json: "1}".into()
                },
                ChatEvent::tool_call_start(1, "c2".into(), "ns__apply_patch".into()),
                ChatEvent::ToolCallArgsDelta {
                    index: 1,
                    json: "{\"input\":\"line \\\"1\\\"\\n".into()
                },
                ChatEvent::ToolCallArgsDelta {
                    index: 1,
                    json: "\"}".into()
                },
                ChatEvent::Usage(Usage {
                    input: 6,
                    output: 3,
                    cache_read: 4,
                    cache_write: 0
                }),
                ChatEvent::Stop(StopReason::ToolUse),
            ]
        );
    }

    #[test]
    fn failures_and_incomplete_answers_map() {
        let e = decode(&[json!({"type": "response.failed", "response": {"status": "failed", "error": {"code": "rate_limit_exceeded", "message": "slow down"}}})])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        let e = decode(&[
            json!({"type": "error", "code": "context_length_exceeded", "message": "too long"}),
        ])
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let events = decode(&[json!({"type": "response.incomplete", "response": {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}})]).unwrap();
        assert_eq!(events, vec![ChatEvent::Stop(StopReason::Length)]);
    }

    #[test]
    fn a_whole_response_decodes() {
        let body = json!({"status": "completed", "output": [
            {"type": "reasoning", "summary": [], "encrypted_content": "enc"},
            {"type": "message", "content": [{"type": "output_text", "text": "hello"}]},
        ], "usage": {"input_tokens": 2, "output_tokens": 1}});
        let mut d = EventDecoder::default();
        let mut out = Vec::new();
        d.decode_response(body.to_string().as_bytes(), &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::EncryptedReasoning("enc".into()),
                ChatEvent::TextDelta("hello".into()),
                ChatEvent::Usage(Usage {
                    input: 2,
                    output: 1,
                    cache_read: 0,
                    cache_write: 0
                }),
                ChatEvent::Stop(StopReason::End),
            ]
        );
    }

    #[test]
    fn the_canonical_request_becomes_a_responses_body() {
        use crate::canonical::{Message, Tool};
        let req = ChatRequest {
            system: Some("sys".into()),
            messages: vec![
                Message::text(Role::User, "q"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentPart::EncryptedReasoning {
                            summary: "s".into(),
                            data: "enc".into(),
                        },
                        ContentPart::Thinking {
                            text: "anthropic's".into(),
                            signature: Some("sig".into()),
                        },
                        ContentPart::ToolCall {
                            id: "c1".into(),
                            name: "f".into(),
                            arguments: "{}".into(),
                        },
                    ],
                    name: None,
                },
                Message::tool_result("c1", "done"),
            ],
            tools: vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
            }],
            response_format: Some(
                json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "strict": true}}),
            ),
            ..Default::default()
        };
        let body = encode_request(&req, "up");
        assert_eq!(body["model"], "up");
        assert_eq!(body["instructions"], "sys");
        assert_eq!(
            body["input"],
            json!([
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}], "encrypted_content": "enc"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "done"},
            ])
        );
        assert_eq!(
            body["text"]["format"],
            json!({"type": "json_schema", "name": "n", "schema": {}, "strict": true})
        );
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}])
        );
        assert_eq!(body["store"], false);
    }
}

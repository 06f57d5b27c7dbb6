//! The `langgraph` upstream: a LangGraph / Agent Protocol server (threads
//! and streamed runs). The server keeps each thread's messages, so this
//! kind is stateful: a conversation's first turn creates a thread and sends
//! the conversation so far; later turns continue that thread with only the
//! newest turn. Answers are the server's own token stream
//! (`stream_mode: "messages-tuple"`), relayed as they arrive.

pub(crate) mod config;

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};

use super::http::{extra_headers, reply_id, send_checked};
use super::{ApiKey, EventSink, Upstream, UpstreamContext};
use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, Message, Role, StopReason, UpstreamError,
};
use crate::protocol::sse::{SseEvent, SseParser};

/// The assistant (graph) a run uses when the pool names none: the name
/// `langgraph new` templates and most examples register.
pub const DEFAULT_ASSISTANT: &str = "agent";

/// One connection (optionally one API key) to one Agent Protocol server.
pub struct LangGraph {
    http: reqwest::Client,
    base: String,
    key: Option<ApiKey>,
    headers: HeaderMap,
    assistant_id: String,
    assistants: BTreeMap<String, String>,
}

impl LangGraph {
    pub fn new(ctx: &UpstreamContext<'_>) -> Result<Self, String> {
        let base = ctx
            .pool
            .base_url
            .as_deref()
            .ok_or("the langgraph kind needs base_url")?;
        let own: config::Settings = ctx
            .pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        Ok(LangGraph {
            http: ctx.http.rest().clone(),
            base: base.trim_end_matches('/').to_owned(),
            // Local servers (`langgraph dev`) want no key at all.
            key: ApiKey::of(ctx.account),
            headers: extra_headers(&ctx.pool.headers)?,
            assistant_id: own
                .assistant_id
                .unwrap_or_else(|| DEFAULT_ASSISTANT.to_owned()),
            assistants: own.assistants,
        })
    }

    fn post(&self, url: String) -> reqwest::RequestBuilder {
        let mut b = self
            .http
            .post(url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some(k) = &self.key {
            b = b.header("x-api-key", &*k.get());
        }
        b
    }

    /// The assistant for an upstream model name.
    fn assistant_for(&self, model: &str) -> &str {
        self.assistants
            .get(model)
            .map_or(self.assistant_id.as_str(), String::as_str)
    }

    /// Runs one turn on `thread` and relays the answer. `continuing`: the
    /// thread holds the earlier turns, so only the newest is sent.
    async fn run(
        &self,
        req: &ChatRequest,
        model: &str,
        thread: &str,
        continuing: bool,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        let body = json!({
            "assistant_id": self.assistant_for(model),
            "input": { "messages": input_messages(req, continuing) },
            "stream_mode": "messages-tuple",
        });
        let resp = send_checked(
            self.post(format!("{}/threads/{}/runs/stream", self.base, thread))
                .header(ACCEPT, "text/event-stream")
                .json(&body),
        )
        .await?;
        relay(resp, model, sink).await
    }

    async fn create_thread(&self) -> Result<String, UpstreamError> {
        let resp =
            send_checked(self.post(format!("{}/threads", self.base)).json(&json!({}))).await?;
        reply_id(resp, "/thread_id", "thread").await
    }
}

#[async_trait]
impl Upstream for LangGraph {
    async fn refresh(&self) -> Result<bool, UpstreamError> {
        match &self.key {
            Some(k) => k.reload(),
            None => Ok(false),
        }
    }

    fn stateful(&self) -> bool {
        true
    }

    /// Threads live on the LangGraph server.
    fn portable_handles(&self) -> bool {
        true
    }

    async fn chat_turn(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
        handle: Option<&str>,
    ) -> Result<Option<String>, UpstreamError> {
        if let Some(thread) = handle {
            match self.run(req, model, thread, true, sink).await {
                Ok(()) => return Ok(Some(thread.to_owned())),
                // The server forgot the thread (restarted in-memory server,
                // TTL): start a new one with the whole conversation. A 404
                // comes before any byte of the answer, so nothing repeats.
                Err(e) if e.status == Some(404) => {
                    tracing::info!(error = %e, "langgraph thread gone; starting a new one");
                }
                Err(e) => return Err(e),
            }
        }
        let thread = self.create_thread().await?;
        self.run(req, model, &thread, false, sink).await?;
        Ok(Some(thread))
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        self.chat_turn(req, model, sink, None).await.map(|_| ())
    }
}

/// The messages a run's input carries, as LangChain message dicts. A
/// continued thread already holds the earlier turns, so it gets only the
/// newest turn (everything after the last assistant message: the user's
/// message, tool results); a new thread gets the system prompt and the
/// whole conversation.
pub fn input_messages(req: &ChatRequest, continuing: bool) -> Vec<Value> {
    let start = if continuing {
        req.messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
            .map_or(0, |i| i + 1)
    } else {
        0
    };
    let mut out = Vec::new();
    if !continuing {
        if let Some(system) = req.system.as_deref().filter(|s| !s.trim().is_empty()) {
            out.push(json!({"type": "system", "content": system}));
        }
    }
    for m in &req.messages[start..] {
        out.extend(to_langchain(m));
    }
    out
}

/// One message as LangChain dicts; a message of several tool results
/// becomes one `tool` message per result, as LangChain wants them.
fn to_langchain(m: &Message) -> Vec<Value> {
    match m.role {
        Role::Tool | Role::User
            if m.content
                .iter()
                .any(|p| matches!(p, ContentPart::ToolResult { .. })) =>
        {
            let mut out = Vec::new();
            for p in &m.content {
                match p {
                    ContentPart::ToolResult {
                        call_id,
                        content,
                        is_error,
                    } => {
                        let text = Message {
                            role: Role::Tool,
                            content: content.clone(),
                            name: None,
                        }
                        .joined_text();
                        let status = if *is_error { "error" } else { "success" };
                        out.push(json!({"type": "tool", "content": text,
                            "tool_call_id": call_id, "status": status}));
                    }
                    ContentPart::Text(t) => out.push(json!({"type": "human", "content": t})),
                    _ => {}
                }
            }
            out
        }
        Role::Assistant => {
            let calls: Vec<Value> = m
                .content
                .iter()
                .filter_map(|p| match p {
                    ContentPart::ToolCall {
                        id,
                        name,
                        arguments,
                    } => Some(json!({
                        "id": id,
                        "name": name,
                        "args": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
                    })),
                    _ => None,
                })
                .collect();
            let mut v = json!({"type": "ai", "content": content(m)});
            if !calls.is_empty() {
                v["tool_calls"] = Value::Array(calls);
            }
            vec![v]
        }
        Role::System => vec![json!({"type": "system", "content": content(m)})],
        Role::User | Role::Tool => vec![json!({"type": "human", "content": content(m)})],
    }
}

/// Text only: a plain string. With images: LangChain content blocks.
fn content(m: &Message) -> Value {
    if !m.content.iter().any(|p| matches!(p, ContentPart::Image(_))) {
        return Value::String(m.joined_text());
    }
    let blocks: Vec<Value> = m
        .content
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(json!({"type": "text", "text": t})),
            ContentPart::Image(src) => {
                Some(json!({"type": "image_url", "image_url": {"url": src.to_url()}}))
            }
            _ => None,
        })
        .collect();
    Value::Array(blocks)
}

/// Reads a run's event stream into `sink` as it arrives. The stream ends
/// with an `end` event or, on servers that send none, with the body's
/// clean end; a broken connection is an error, so text is never cut
/// silently.
async fn relay(
    resp: reqwest::Response,
    model: &str,
    sink: &EventSink,
) -> Result<(), UpstreamError> {
    sink.send(ChatEvent::Start {
        model: model.to_owned(),
    })
    .await?;
    let mut decoder = Decoder::default();
    let mut parser = SseParser::default();
    let mut stream = resp.bytes_stream();
    let mut out = Vec::new();
    while !decoder.ended {
        match stream.next().await {
            Some(Ok(bytes)) => {
                parser.push(&bytes);
                while !decoder.ended {
                    let next = parser
                        .next_event()
                        .map_err(|e| UpstreamError::new(ErrorKind::Protocol, e.to_string()))?;
                    let Some(ev) = next else { break };
                    decoder.event(ev, &mut out)?;
                    for e in out.drain(..) {
                        sink.send(e).await?;
                    }
                }
            }
            Some(Err(e)) => {
                return Err(UpstreamError::new(
                    ErrorKind::Connect,
                    format!("upstream stream broke: {e}"),
                ))
            }
            None => {
                if let Some(ev) = parser.finish() {
                    decoder.event(&ev, &mut out)?;
                }
                break;
            }
        }
    }
    for e in out {
        sink.send(e).await?;
    }
    if !decoder.started {
        // A clean end before the run even announced itself is no answer.
        return Err(UpstreamError::new(
            ErrorKind::Protocol,
            "upstream ended the run stream before it began",
        ));
    }
    sink.send(ChatEvent::Stop(StopReason::End)).await
}

/// Decodes Agent Protocol run events (`messages-tuple` mode).
#[derive(Debug, Default)]
pub struct Decoder {
    /// Any event was read: the run is under way.
    started: bool,
    /// The `end` event was read.
    ended: bool,
    /// Ids of AI messages seen as chunks, so a server that repeats the
    /// whole message afterwards does not duplicate its text.
    streamed: HashSet<String>,
    /// The AI message the last text came from, to separate the texts of
    /// several messages (an agent's steps) with a blank line.
    last_id: Option<String>,
    wrote_text: bool,
}

impl Decoder {
    /// Decodes one SSE event into `out`.
    pub fn event(&mut self, ev: &SseEvent, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        self.started = true;
        match ev.event.as_deref() {
            Some("end") => self.ended = true,
            Some("error") => return Err(run_error(&ev.data)),
            Some(name) if name == "messages" || name.starts_with("messages/") => {
                self.messages(&ev.data, out)?
            }
            // metadata, values, updates, heartbeats: nothing to relay.
            _ => {}
        }
        Ok(())
    }

    fn messages(&mut self, data: &str, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        let v: Value = serde_json::from_str(data).map_err(|e| {
            UpstreamError::new(ErrorKind::Protocol, format!("bad messages event: {e}"))
        })?;
        // `[message_chunk, metadata]`; some servers send a list of messages.
        let msg = match &v {
            Value::Array(items) if items.len() == 2 && items[1].get("type").is_none() => &items[0],
            Value::Array(items) => {
                for item in items {
                    self.message(item, out);
                }
                return Ok(());
            }
            other => other,
        };
        self.message(msg, out);
        Ok(())
    }

    fn message(&mut self, msg: &Value, out: &mut Vec<ChatEvent>) {
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        let id = msg.get("id").and_then(Value::as_str).map(str::to_owned);
        match kind {
            "AIMessageChunk" | "ai_chunk" => {
                if let Some(id) = &id {
                    self.streamed.insert(id.clone());
                }
            }
            // A whole AI message: only when it was not streamed already.
            "ai" | "AIMessage" => {
                if id.as_ref().is_some_and(|i| self.streamed.contains(i)) {
                    return;
                }
            }
            // Human and tool messages are echoes of the input or the
            // agent's own tool work, not the answer.
            _ => return,
        }
        let (text, thinking) = split_content(msg.get("content"));
        if !thinking.is_empty() {
            out.push(ChatEvent::ThinkingDelta(thinking));
        }
        if text.is_empty() {
            return;
        }
        if self.wrote_text && id.is_some() && id != self.last_id {
            out.push(ChatEvent::TextDelta("\n\n".to_owned()));
        }
        self.wrote_text = true;
        self.last_id = id;
        out.push(ChatEvent::TextDelta(text));
    }
}

/// Text and reasoning of a LangChain `content`: a string, or blocks.
fn split_content(content: Option<&Value>) -> (String, String) {
    let mut text = String::new();
    let mut thinking = String::new();
    match content {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                match (b.get("type").and_then(Value::as_str), b) {
                    (_, Value::String(s)) => text.push_str(s),
                    (Some("text"), _) => {
                        text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    (Some("thinking"), _) => {
                        thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""))
                    }
                    (Some("reasoning"), _) => {
                        thinking.push_str(b.get("reasoning").and_then(Value::as_str).unwrap_or(""))
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    (text, thinking)
}

/// An `error` event: `{"error": "...", "message": "..."}`.
fn run_error(data: &str) -> UpstreamError {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let message = match (
        v.get("error").and_then(Value::as_str),
        v.get("message").and_then(Value::as_str),
    ) {
        (Some(e), Some(m)) => format!("{e}: {m}"),
        (Some(e), None) => e.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => data.trim().to_owned(),
    };
    UpstreamError::new(ErrorKind::Unavailable, format!("run failed: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, data: Value) -> SseEvent {
        SseEvent {
            event: Some(name.to_owned()),
            data: data.to_string(),
        }
    }

    fn chunk(kind: &str, id: &str, content: Value) -> Value {
        json!([{"type": kind, "id": id, "content": content}, {"langgraph_node": "agent"}])
    }

    fn decode(events: &[SseEvent]) -> Result<Vec<ChatEvent>, UpstreamError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for e in events {
            d.event(e, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn ai_chunks_are_text_and_echoes_are_ignored() {
        let out = decode(&[
            ev("metadata", json!({"run_id": "r"})),
            ev("messages", chunk("human", "h1", json!("question"))),
            ev("messages", chunk("AIMessageChunk", "a1", json!("Hel"))),
            ev("messages", chunk("AIMessageChunk", "a1", json!("lo"))),
            ev("messages", chunk("tool", "t1", json!("tool output"))),
            // The whole message again after its chunks: not repeated.
            ev("messages", chunk("ai", "a1", json!("Hello"))),
            ev("end", Value::Null),
        ])
        .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::TextDelta("Hel".into()),
                ChatEvent::TextDelta("lo".into())
            ]
        );
    }

    #[test]
    fn whole_ai_messages_count_when_not_streamed() {
        let out = decode(&[ev("messages", chunk("ai", "a2", json!("done at once")))]).unwrap();
        assert_eq!(out, vec![ChatEvent::TextDelta("done at once".into())]);
    }

    #[test]
    fn content_blocks_split_text_and_thinking() {
        let out = decode(&[ev(
            "messages",
            chunk(
                "AIMessageChunk",
                "a",
                json!([{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "ok"}]),
            ),
        )])
        .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::ThinkingDelta("hmm".into()),
                ChatEvent::TextDelta("ok".into())
            ]
        );
    }

    #[test]
    fn texts_of_separate_ai_messages_are_separated() {
        let out = decode(&[
            ev("messages", chunk("AIMessageChunk", "a", json!("step one"))),
            ev("messages", chunk("AIMessageChunk", "b", json!("step two"))),
        ])
        .unwrap();
        let text: String = out
            .iter()
            .map(|e| match e {
                ChatEvent::TextDelta(t) => t.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(text, "step one\n\nstep two");
    }

    #[test]
    fn error_events_fail_the_run_and_end_ends_it() {
        let e = decode(&[ev(
            "error",
            json!({"error": "ValueError", "message": "boom"}),
        )])
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("ValueError: boom"), "{}", e.message);
        let mut d = Decoder::default();
        d.event(&ev("end", Value::Null), &mut Vec::new()).unwrap();
        assert!(d.ended);
        let bad = SseEvent {
            event: Some("messages".into()),
            data: "{oops".into(),
        };
        assert_eq!(
            Decoder::default()
                .event(&bad, &mut Vec::new())
                .unwrap_err()
                .kind,
            ErrorKind::Protocol
        );
    }

    fn conversation() -> ChatRequest {
        ChatRequest {
            system: Some("Be kind.".into()),
            messages: vec![
                Message::text(Role::User, "one"),
                Message::text(Role::Assistant, "reply"),
                Message::text(Role::User, "two"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_new_thread_gets_everything_a_continued_one_the_newest_turn() {
        assert_eq!(
            input_messages(&conversation(), false),
            vec![
                json!({"type": "system", "content": "Be kind."}),
                json!({"type": "human", "content": "one"}),
                json!({"type": "ai", "content": "reply"}),
                json!({"type": "human", "content": "two"}),
            ]
        );
        assert_eq!(
            input_messages(&conversation(), true),
            vec![json!({"type": "human", "content": "two"})]
        );
    }

    #[test]
    fn tool_calls_and_results_become_langchain_messages() {
        let mut req = conversation();
        req.messages
            .push(Message::tool_call("c1", "search", r#"{"q":"x"}"#));
        req.messages.push(Message::tool_result("c1", "42"));
        let all = input_messages(&req, false);
        assert_eq!(
            all[4],
            json!({"type": "ai", "content": "", "tool_calls": [{"id": "c1", "name": "search", "args": {"q": "x"}}]})
        );
        assert_eq!(
            input_messages(&req, true),
            vec![
                json!({"type": "tool", "content": "42", "tool_call_id": "c1", "status": "success"})
            ]
        );
    }
}

//! The `ondemand` upstream: OnDemand-style REST chat sessions, one gateway
//! session per API key. OnDemand keeps conversation state in its own
//! sessions, so this kind is stateful: every conversation gets its own
//! upstream session (never one shared by all clients), created on its first
//! turn and continued on the next ones with only the newest turn sent.
//!
//! Model names map to OnDemand endpoint ids. OnDemand has no native tools,
//! so tools are emulated with `<function_call>` blocks
//! (see [`super::tool_emulation`]).

pub(crate) mod config;

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};

use super::http::stream::{pump, StreamDecoder};
use super::http::{extra_headers, reply_id, send_checked};
use super::text::flatten::flatten;
use super::{ApiKey, EventSink, Upstream, UpstreamContext};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, StopReason, UpstreamError};
use crate::config::PoolConfig;
use crate::protocol::sse::SseEvent;
use config::{ResponseMode, Settings};

/// Where OnDemand's chat API lives when a pool gives no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.on-demand.io/chat/v1";

/// Endpoint ids of well-known models, so a pool can list `gpt-4o` without
/// an `endpoints` table. A pool's own `endpoints` win over these.
pub const DEFAULT_ENDPOINTS: &[(&str, &str)] = &[
    ("gpt-4o", "predefined-openai-gpt4o"),
    ("claude-4-sonnet", "predefined-claude-4-sonnet"),
    ("deepseek-r1", "predefined-deepseek-r1"),
];

/// Upstream names starting with this are taken as endpoint ids as they are:
/// every built-in OnDemand endpoint is named so, and a typo still fails at
/// `troupe check` instead of at the first request. Other ids (custom
/// endpoints) go in the pool's `endpoints` table.
pub const ENDPOINT_ID_PREFIX: &str = "predefined-";

/// The endpoint id for an upstream model name: the pool's `endpoints`, then
/// the defaults, then the name itself when it already is an endpoint id.
pub fn endpoint_id(endpoints: &BTreeMap<String, String>, model: &str) -> Option<String> {
    if let Some(id) = endpoints.get(model) {
        return Some(id.clone());
    }
    if let Some((_, id)) = DEFAULT_ENDPOINTS.iter().find(|(m, _)| *m == model) {
        return Some((*id).to_owned());
    }
    model
        .starts_with(ENDPOINT_ID_PREFIX)
        .then(|| model.to_owned())
}

/// One API key on one OnDemand server.
pub struct OnDemand {
    http: reqwest::Client,
    base: String,
    key: ApiKey,
    headers: HeaderMap,
    endpoints: BTreeMap<String, String>,
    mode: ResponseMode,
}

impl OnDemand {
    pub fn new(ctx: &UpstreamContext<'_>) -> Result<Self, String> {
        let pool: &PoolConfig = ctx.pool;
        let base = pool.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let key =
            ApiKey::of(ctx.account).ok_or("the ondemand kind needs an api_key per account")?;
        let own: Settings = pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        Ok(OnDemand {
            http: ctx.http.rest().clone(),
            base: base.trim_end_matches('/').to_owned(),
            key,
            headers: extra_headers(&pool.headers)?,
            endpoints: own.endpoints,
            mode: own.response_mode,
        })
    }

    fn post(&self, url: String) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .headers(self.headers.clone())
            .header("apikey", &*self.key.get())
            .header(CONTENT_TYPE, "application/json")
    }

    /// Sends one turn to `session` and relays the answer. `continuing`:
    /// the session holds the earlier turns, so only the newest is sent.
    async fn query(
        &self,
        req: &ChatRequest,
        model: &str,
        endpoint: &str,
        session: &str,
        continuing: bool,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        let mode = match self.mode {
            ResponseMode::Stream => "stream",
            ResponseMode::Sync => "sync",
        };
        let body = json!({
            "query": flatten(req, continuing),
            "endpointId": endpoint,
            "pluginIds": [],
            "responseMode": mode,
        });
        let mut call = self
            .post(format!("{}/sessions/{}/query", self.base, session))
            .json(&body);
        if self.mode == ResponseMode::Stream {
            call = call.header(ACCEPT, "text/event-stream");
        }
        let resp = send_checked(call).await?;
        pump(http::Response::from(resp), model, Decoder::new(), sink).await
    }

    /// Opens a fresh upstream session, one per conversation.
    async fn create_session(&self) -> Result<String, UpstreamError> {
        let body = json!({ "externalUserId": uuid::Uuid::new_v4().to_string() });
        let resp = send_checked(self.post(format!("{}/sessions", self.base)).json(&body)).await?;
        reply_id(resp, "/data/id", "session").await
    }
}

#[async_trait]
impl Upstream for OnDemand {
    async fn refresh(&self) -> Result<bool, UpstreamError> {
        self.key.reload()
    }

    fn stateful(&self) -> bool {
        true
    }

    /// OnDemand's sessions live on its server, under the account's key.
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
        let Some(endpoint) = endpoint_id(&self.endpoints, model) else {
            // `troupe check` refuses such pools; this guards a config that
            // changed under a running session.
            let mut e = UpstreamError::new(
                ErrorKind::InvalidRequest,
                format!("model `{model}` has no OnDemand endpoint id"),
            );
            e.status = Some(404);
            e.code = Some("model_not_found".into());
            return Err(e);
        };
        if let Some(session) = handle {
            match self.query(req, model, &endpoint, session, true, sink).await {
                Ok(()) => return Ok(Some(session.to_owned())),
                // The upstream forgot the session (expired, deleted): start
                // a new one with the whole conversation. A 404 comes before
                // any byte of the answer, so nothing is repeated.
                Err(e) if e.status == Some(404) => {
                    tracing::info!(error = %e, "ondemand session gone; starting a new one");
                }
                Err(e) => return Err(e),
            }
        }
        let session = self.create_session().await?;
        self.query(req, model, &endpoint, &session, false, sink)
            .await?;
        Ok(Some(session))
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

/// Reads OnDemand's answer, streamed (`eventType` events) or not
/// (`data.answer`), into events.
#[derive(Default)]
pub struct Decoder {
    done: bool,
    stopped: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    fn text(&mut self, text: &str, out: &mut Vec<ChatEvent>) {
        if !text.is_empty() {
            out.push(ChatEvent::TextDelta(text.to_owned()));
        }
    }

    fn finish(&mut self, out: &mut Vec<ChatEvent>) {
        out.push(ChatEvent::Stop(StopReason::End));
        self.done = true;
        self.stopped = true;
    }
}

/// Whether an `eventType` carries reasoning rather than answer text.
/// OnDemand names these per model family; all of them mention reasoning or
/// thinking.
fn is_reasoning(event_type: &str) -> bool {
    let t = event_type.to_ascii_lowercase();
    t.contains("reason") || t.contains("think")
}

/// The text of an event: `answer`, else the fields reasoning events use.
fn event_text(v: &Value) -> &str {
    ["answer", "reasoning", "thinking", "content"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .unwrap_or("")
}

impl StreamDecoder for Decoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.finish(out);
            return Ok(());
        }
        if let Some(rest) = data.strip_prefix("[ERROR]") {
            let message = rest.trim_start_matches(':').trim();
            return Err(UpstreamError::new(
                ErrorKind::Unavailable,
                format!("upstream error: {message}"),
            ));
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            UpstreamError::new(ErrorKind::Protocol, format!("bad stream event: {e}"))
        })?;
        let event_type = v.get("eventType").and_then(Value::as_str).unwrap_or("");
        if event_type == "fulfillment" {
            self.text(event_text(&v), out);
        } else if is_reasoning(event_type) {
            let text = event_text(&v);
            if !text.is_empty() {
                out.push(ChatEvent::ThinkingDelta(text.to_owned()));
            }
        }
        // Other events (metricsLog, plugin progress) carry no answer text.
        Ok(())
    }

    fn body(&mut self, body: &[u8], out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            UpstreamError::new(ErrorKind::Protocol, format!("answer is not JSON: {e}"))
        })?;
        let Some(answer) = v.pointer("/data/answer").and_then(Value::as_str) else {
            return Err(UpstreamError::new(
                ErrorKind::Protocol,
                "answer has no data.answer",
            ));
        };
        self.text(answer, out);
        self.finish(out);
        Ok(())
    }

    fn done(&self) -> bool {
        self.done
    }

    fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_owned(),
        }
    }

    fn decode(events: &[&str]) -> Result<Vec<ChatEvent>, UpstreamError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for e in events {
            d.event(&sse(e), &mut out)?;
        }
        assert!(d.done(), "stream not ended");
        Ok(out)
    }

    #[test]
    fn endpoint_ids_resolve_from_config_defaults_or_the_name() {
        let mut map = BTreeMap::new();
        map.insert("mine".to_owned(), "custom-123".to_owned());
        map.insert("gpt-4o".to_owned(), "predefined-other".to_owned());
        assert_eq!(endpoint_id(&map, "mine").as_deref(), Some("custom-123"));
        assert_eq!(
            endpoint_id(&map, "gpt-4o").as_deref(),
            Some("predefined-other")
        );
        assert_eq!(
            endpoint_id(&BTreeMap::new(), "deepseek-r1").as_deref(),
            Some("predefined-deepseek-r1")
        );
        assert_eq!(
            endpoint_id(&BTreeMap::new(), "predefined-xai-grok3").as_deref(),
            Some("predefined-xai-grok3")
        );
        assert_eq!(endpoint_id(&BTreeMap::new(), "llama"), None);
    }

    #[test]
    fn fulfillment_is_text_and_reasoning_is_thinking() {
        let out = decode(&[
            r#"{"eventType":"reasoning","answer":"let me think"}"#,
            r#"{"eventType":"fulfillment","answer":"Hello "}"#,
            r#"{"eventType":"metricsLog","publicMetrics":{"inputTokens":3}}"#,
            r#"{"eventType":"fulfillment","answer":"world"}"#,
            "[DONE]",
        ])
        .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::ThinkingDelta("let me think".into()),
                ChatEvent::TextDelta("Hello ".into()),
                ChatEvent::TextDelta("world".into()),
                ChatEvent::Stop(StopReason::End),
            ]
        );
    }

    #[test]
    fn error_events_fail_the_answer() {
        let e = decode(&["[ERROR]: model overloaded"]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("model overloaded"), "{}", e.message);
        let mut d = Decoder::new();
        let e = d.event(&sse("{not json"), &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
    }

    #[test]
    fn markup_is_plain_text() {
        let block = "<function_call><tool>a</tool></function_call>";
        let ev = json!({"eventType": "fulfillment", "answer": block}).to_string();
        let out = decode(&[&ev, "[DONE]"]).unwrap();
        assert_eq!(out[0], ChatEvent::TextDelta(block.into()));
    }

    #[test]
    fn sync_bodies_decode() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.body(
            br#"{"data":{"answer":"hi there","sessionId":"s"}}"#,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                ChatEvent::TextDelta("hi there".into()),
                ChatEvent::Stop(StopReason::End)
            ]
        );
        assert!(d.body(br#"{"data":{}}"#, &mut Vec::new()).is_err());
    }
}

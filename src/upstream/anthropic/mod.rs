//! The `anthropic` upstream: an Anthropic Messages server, one session per
//! API key. Requests are always streamed upstream and folded back for
//! non-streaming clients, like the `openai` kind; errors are classified by
//! the same rules (`status_error`, `transport_error`).

pub(crate) mod config;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::http::client::ApiEndpoint;
use super::http::extra_headers;
use super::http::stream::{pump, StreamDecoder};
use super::{ApiKey, EventSink, Upstream, UpstreamContext};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, UpstreamError, Wire};
use crate::protocol::anthropic::client::{encode_native, native_ok};
use crate::protocol::anthropic::{encode_request, EventDecoder};
use crate::protocol::sse::SseEvent;

/// The API version every request names; the wire format here is this one's.
pub const API_VERSION: &str = "2023-06-01";

/// One API key on one Anthropic server.
pub struct Anthropic {
    /// Sends the API version and the pool's extra headers.
    endpoint: ApiEndpoint,
    key: ApiKey,
}

impl Anthropic {
    /// A session for one account of the pool; fails on a pool or account
    /// the validation should have refused (no base_url, no key).
    pub fn new(ctx: &UpstreamContext<'_>) -> Result<Self, String> {
        let base = ctx
            .pool
            .base_url
            .as_deref()
            .ok_or("the anthropic kind needs base_url")?;
        let key =
            ApiKey::of(ctx.account).ok_or("the anthropic kind needs an api_key per account")?;
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        // The pool's headers may pin another version or add `anthropic-beta`.
        for (name, value) in extra_headers(&ctx.pool.headers)? {
            if let Some(name) = name {
                headers.insert(name, value);
            }
        }
        Ok(Anthropic {
            // SDK convention: base_url has no `/v1`.
            endpoint: ApiEndpoint::new(ctx.http.clone(), base, "/v1/messages", headers)?,
            key,
        })
    }
}

#[async_trait]
impl Upstream for Anthropic {
    fn native_tools(&self) -> bool {
        true
    }

    async fn refresh(&self) -> Result<bool, UpstreamError> {
        self.key.reload()
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        // An Anthropic client's own body, with only the model and streaming
        // changed, so nothing it sent is lost (prompt caching included);
        // another protocol's through the canonical request.
        let body = match req.native_in(Wire::AnthropicMessages) {
            Some(native) if native_ok(req) => encode_native(native, model),
            _ => serde_json::to_vec(&encode_request(req, model)),
        }
        .map_err(|e| {
            UpstreamError::new(
                ErrorKind::InvalidRequest,
                format!("cannot encode request: {e}"),
            )
        })?;
        let key = self.key.header("")?;
        let resp = self
            .endpoint
            .post((HeaderName::from_static("x-api-key"), key), body)
            .await?;
        pump(resp, model, EventDecoder::default(), sink).await
    }
}

impl StreamDecoder for EventDecoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        self.decode(&ev.data, out)
    }
    fn body(&mut self, body: &[u8], out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        self.decode_message(body, out)
    }
    fn done(&self) -> bool {
        EventDecoder::done(self)
    }
    fn stopped(&self) -> bool {
        EventDecoder::stopped(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::canonical::StopReason;

    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::canonical::{Message, Role, Usage};
    use crate::config::{AccountConfig, PoolConfig};

    /// A loopback server answering each connection with the next canned
    /// response, then closing; the requests it read come back on the channel.
    async fn serve(responses: Vec<String>) -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for response in responses {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
                sock.write_all(response.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn http_response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut out = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        out
    }

    /// An SSE response without a length: the body ends when the server
    /// closes, which is how a stream that breaks off looks.
    fn sse_response(events: &[Value]) -> String {
        let mut out =
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: text/event-stream\r\n\r\n"
                .to_owned();
        for ev in events {
            out.push_str(&format!(
                "event: {}\ndata: {ev}\n\n",
                ev["type"].as_str().unwrap()
            ));
        }
        out
    }

    fn upstream(base: &str) -> Anthropic {
        let pool: PoolConfig = serde_json::from_value(json!({
            "name": "a", "kind": "anthropic", "base_url": format!("{base}/"),
            "models": ["claude"], "headers": {"anthropic-beta": "test-beta"}
        }))
        .unwrap();
        let account: AccountConfig =
            serde_json::from_value(json!({"name": "k", "api_key": "sk-ant-test"})).unwrap();
        Anthropic::new(&UpstreamContext {
            pool: &pool,
            account: Some(&account),
            http: crate::upstream::http::client::HttpClient::new(std::time::Duration::from_secs(5))
                .unwrap(),
        })
        .unwrap()
    }

    async fn run(up: &Anthropic) -> (Result<(), UpstreamError>, Vec<ChatEvent>) {
        let req = ChatRequest {
            model: "public".into(),
            messages: vec![Message::text(Role::User, "hi")],
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(256);
        let sink = EventSink::new(tx);
        let result =
            tokio::time::timeout(Duration::from_secs(10), up.chat(&req, "claude-up", &sink))
                .await
                .unwrap();
        drop(sink);
        let mut events = Vec::new();
        while let Some(ev) = rx.recv().await {
            events.push(ev);
        }
        (result, events)
    }

    fn message_start() -> Value {
        json!({"type": "message_start", "message": {"id": "msg_u", "type": "message", "role": "assistant",
            "model": "claude-up", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 9, "output_tokens": 1}}})
    }

    fn text_delta(t: &str) -> Value {
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
    }

    #[tokio::test]
    async fn streams_with_anthropic_headers() {
        let (base, mut requests) = serve(vec![sse_response(&[
            message_start(),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            text_delta("Hello"),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
            json!({"type": "message_stop"}),
        ])])
        .await;
        let (result, events) = run(&upstream(&base)).await;
        result.unwrap();
        assert_eq!(
            events,
            vec![
                ChatEvent::Start {
                    model: "claude-up".into()
                },
                ChatEvent::Usage(Usage {
                    input: 9,
                    ..Default::default()
                }),
                ChatEvent::TextDelta("Hello".into()),
                ChatEvent::Stop(StopReason::End),
                ChatEvent::Usage(Usage {
                    output: 2,
                    ..Default::default()
                }),
            ]
        );
        let sent = requests.recv().await.unwrap();
        let (head, body) = sent.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("post /v1/messages http/1.1"), "{head}");
        for h in [
            "x-api-key: sk-ant-test",
            "anthropic-version: 2023-06-01",
            "anthropic-beta: test-beta",
            "content-type: application/json",
            "accept: text/event-stream",
        ] {
            assert!(head.contains(h), "missing {h} in {head}");
        }
        assert!(!head.contains("authorization"), "{head}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body,
            json!({"model": "claude-up", "max_tokens": 4096, "stream": true,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
    }

    #[tokio::test]
    async fn http_errors_are_classified() {
        let envelope = |kind: &str, msg: &str| {
            json!({"type": "error", "error": {"type": kind, "message": msg}}).to_string()
        };
        let (base, _requests) = serve(vec![
            http_response(
                "529 Overloaded",
                &[("content-type", "application/json")],
                &envelope("overloaded_error", "Overloaded"),
            ),
            http_response(
                "429 Too Many Requests",
                &[("retry-after", "7")],
                &envelope("rate_limit_error", "slow down"),
            ),
            http_response(
                "401 Unauthorized",
                &[],
                &envelope("authentication_error", "bad key"),
            ),
            http_response(
                "400 Bad Request",
                &[],
                &envelope("invalid_request_error", "messages: field required"),
            ),
        ])
        .await;
        let up = upstream(&base);
        let expect = [
            (
                ErrorKind::Unavailable,
                529,
                "Overloaded",
                "overloaded_error",
            ),
            (ErrorKind::RateLimited, 429, "slow down", "rate_limit_error"),
            (ErrorKind::Auth, 401, "bad key", "authentication_error"),
            (
                ErrorKind::InvalidRequest,
                400,
                "messages: field required",
                "invalid_request_error",
            ),
        ];
        for (kind, status, message, error_type) in expect {
            let (result, events) = run(&up).await;
            let e = result.unwrap_err();
            assert_eq!(
                (
                    e.kind,
                    e.status,
                    e.message.as_str(),
                    e.error_type.as_deref()
                ),
                (kind, Some(status), message, Some(error_type))
            );
            if status == 429 {
                assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
            }
            assert!(
                events.is_empty(),
                "nothing is sent before the status is good"
            );
        }
    }

    #[tokio::test]
    async fn broken_streams_are_errors() {
        let (base, _requests) = serve(vec![
            sse_response(&[message_start()]),
            sse_response(&[
                message_start(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                text_delta("Hel"),
            ]),
            sse_response(&[
                message_start(),
                text_delta("Hel"),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ]),
        ])
        .await;
        let up = upstream(&base);
        let (result, _) = run(&up).await;
        assert_eq!(result.unwrap_err().kind, ErrorKind::Connect);
        // After text, still a connection failure: the dispatcher decides
        // whether a retry is safe (only while nothing reached the client).
        let (result, events) = run(&up).await;
        assert_eq!(result.unwrap_err().kind, ErrorKind::Connect);
        assert!(events.contains(&ChatEvent::TextDelta("Hel".into())));
        let (result, _) = run(&up).await;
        let e = result.unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Unavailable, "Overloaded")
        );
    }

    #[tokio::test]
    async fn a_whole_body_is_accepted() {
        let body = json!({"id": "msg", "type": "message", "role": "assistant", "model": "claude-up",
            "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 1}});
        let (base, _requests) = serve(vec![http_response(
            "200 OK",
            &[("content-type", "application/json")],
            &body.to_string(),
        )])
        .await;
        let (result, events) = run(&upstream(&base)).await;
        result.unwrap();
        assert_eq!(
            events[1..],
            [
                ChatEvent::TextDelta("Hi".into()),
                ChatEvent::Stop(StopReason::End),
                ChatEvent::Usage(Usage {
                    input: 3,
                    output: 1,
                    ..Default::default()
                }),
            ]
        );
    }
}

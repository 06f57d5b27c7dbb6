//! The `openai` upstream: any OpenAI-compatible Chat Completions server, one
//! session per API key. Requests are always streamed upstream (with usage
//! requested) and folded back for non-streaming clients.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};

use super::client::ApiEndpoint;
use super::stream::{pump, StreamDecoder};
use super::{ApiKey, EventSink, Upstream, UpstreamContext};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, UpstreamError};
use crate::protocol::openai::wire::ErrorEnvelope;
use crate::protocol::openai::{encode_request, ChunkDecoder};
use crate::protocol::sse::SseEvent;

/// One API key on one OpenAI-compatible server.
pub struct OpenAi {
    endpoint: ApiEndpoint,
    key: ApiKey,
}

impl OpenAi {
    pub fn new(ctx: &UpstreamContext<'_>) -> Result<Self, String> {
        let base = ctx
            .pool
            .base_url
            .as_deref()
            .ok_or("the openai kind needs base_url")?;
        let key = ApiKey::of(ctx.account).ok_or("the openai kind needs an api_key per account")?;
        let headers = extra_headers(&ctx.pool.headers)?;
        Ok(OpenAi {
            endpoint: ApiEndpoint::new(ctx.http.clone(), base, "/chat/completions", headers)?,
            key,
        })
    }
}

/// Parses configured extra headers once, at session start.
pub fn extra_headers(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header `{k}`: {e}"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// Classifies a transport error from reqwest.
pub fn transport_error(e: &reqwest::Error) -> UpstreamError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    UpstreamError::new(kind, format!("upstream connection failed: {e}"))
}

/// Sends a request; a transport failure or a non-2xx answer becomes the
/// classified error every HTTP kind shares.
pub async fn send_checked(
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, UpstreamError> {
    let resp = req.send().await.map_err(|e| transport_error(&e))?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(status_error(http::Response::from(resp)).await)
    }
}

/// The non-empty string at `pointer` in a JSON reply: the id of an upstream
/// object just created (`what` names it in errors).
pub async fn reply_id(
    resp: reqwest::Response,
    pointer: &str,
    what: &str,
) -> Result<String, UpstreamError> {
    let v: serde_json::Value = resp.json().await.map_err(|e| {
        UpstreamError::new(
            ErrorKind::Protocol,
            format!("{what} reply is not JSON: {e}"),
        )
    })?;
    match v.pointer(pointer) {
        Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(UpstreamError::new(
            ErrorKind::Protocol,
            format!(
                "{what} reply has no {}",
                pointer.trim_start_matches('/').replace('/', ".")
            ),
        )),
    }
}

/// The most of an error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Classifies a non-2xx upstream response, keeping its error details.
/// Anthropic's envelope (`{"type":"error","error":{"type","message"}}`) is
/// OpenAI's with one more field, so both read through `ErrorEnvelope`.
pub async fn status_error<B>(resp: http::Response<B>) -> UpstreamError
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    if resp.status().is_redirection() {
        // Redirects are not followed (they would carry the key elsewhere):
        // the configured URL is wrong, which says nothing about the client.
        let to = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        let mut err = UpstreamError::new(
            ErrorKind::Unavailable,
            format!("upstream answered {status}, a redirect to {to}; check the pool's base_url"),
        );
        err.status = Some(status);
        return err;
    }
    let body = match Limited::new(resp.into_body(), ERROR_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let kind = match status {
        401 | 403 => ErrorKind::Auth,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::InvalidRequest,
    };
    let mut err = match serde_json::from_slice::<ErrorEnvelope>(&body) {
        Ok(env) => {
            let mut e = UpstreamError::new(kind, env.error.message);
            e.error_type = env.error.kind;
            e.param = env.error.param;
            e.code = env.error.code.map(|c| match c {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            e
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let shown: String = text.chars().take(300).collect();
            UpstreamError::new(
                kind,
                if shown.is_empty() {
                    format!("upstream answered {status}")
                } else {
                    format!("upstream answered {status}: {shown}")
                },
            )
        }
    };
    err.status = Some(status);
    err.retry_after = retry_after;
    err
}

#[async_trait]
impl Upstream for OpenAi {
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
        let body = serde_json::to_vec(&encode_request(req, model)).map_err(|e| {
            UpstreamError::new(
                ErrorKind::InvalidRequest,
                format!("cannot encode request: {e}"),
            )
        })?;
        let bearer = self.key.header("Bearer ")?;
        let resp = self.endpoint.post((AUTHORIZATION, bearer), body).await?;
        pump(resp, model, ChunkDecoder::default(), sink).await
    }
}

impl StreamDecoder for ChunkDecoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        if ev.data.trim() == "[DONE]" {
            self.finish();
            return Ok(());
        }
        self.decode(&ev.data, out)
    }
    fn body(&mut self, body: &[u8], out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        self.decode_completion(body, out)?;
        self.finish();
        Ok(())
    }
    fn done(&self) -> bool {
        ChunkDecoder::done(self)
    }
    fn stopped(&self) -> bool {
        ChunkDecoder::stopped(self)
    }
}

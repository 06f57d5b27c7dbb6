//! The `openai` upstream: any OpenAI-compatible Chat Completions server (or,
//! with `api = "responses"`, OpenAI's Responses API), one session per API
//! key. Requests are always streamed upstream (with usage requested) and
//! folded back for non-streaming clients.

pub(crate) mod config;

use async_trait::async_trait;
use reqwest::header::AUTHORIZATION;

use super::http::client::ApiEndpoint;
use super::http::extra_headers;
use super::http::stream::{pump, StreamDecoder};
use super::{ApiKey, EventSink, Upstream, UpstreamContext};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, UpstreamError, Wire};
use crate::protocol::openai::client::encode_native;
use crate::protocol::openai::{encode_request, ChunkDecoder};
use crate::protocol::responses::client as responses;
use crate::protocol::sse::SseEvent;
use config::{Api, Settings};

/// One API key on one OpenAI-compatible server.
pub struct OpenAi {
    endpoint: ApiEndpoint,
    key: ApiKey,
    api: Api,
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
        let settings: Settings = ctx
            .pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        let path = match settings.api {
            Api::Chat => "/chat/completions",
            Api::Responses => "/responses",
        };
        Ok(OpenAi {
            endpoint: ApiEndpoint::new(ctx.http.clone(), base, path, headers)?,
            key,
            api: settings.api,
        })
    }
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
        // A client of the upstream's own protocol gets its body there with
        // only the model and streaming changed, so nothing it sent is lost;
        // another protocol's goes through the canonical request.
        let body = match self.api {
            Api::Chat => match req.native_in(Wire::OpenAiChat) {
                Some(native) => encode_native(native, model),
                None => serde_json::to_vec(&encode_request(req, model)),
            },
            Api::Responses => match req.native_in(Wire::OpenAiResponses) {
                Some(native) => responses::encode_native(native, model),
                None => serde_json::to_vec(&responses::encode_request(req, model)),
            },
        }
        .map_err(|e| {
            UpstreamError::new(
                ErrorKind::InvalidRequest,
                format!("cannot encode request: {e}"),
            )
        })?;
        let bearer = self.key.header("Bearer ")?;
        let resp = self.endpoint.post((AUTHORIZATION, bearer), body).await?;
        match self.api {
            Api::Chat => pump(resp, model, ChunkDecoder::default(), sink).await,
            Api::Responses => pump(resp, model, responses::EventDecoder::default(), sink).await,
        }
    }
}

impl StreamDecoder for responses::EventDecoder {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        self.decode(&ev.data, out)
    }
    fn body(&mut self, body: &[u8], out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError> {
        self.decode_response(body, out)
    }
    fn done(&self) -> bool {
        responses::EventDecoder::done(self)
    }
    fn stopped(&self) -> bool {
        responses::EventDecoder::stopped(self)
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

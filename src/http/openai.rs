//! The OpenAI frontend: `/v1/chat/completions` and `/v1/models`.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use super::body::read_body;
use super::error::{ApiError, Protocol};
use super::{sse, AppState};
use crate::protocol::openai::wire::{ModelList, ModelOut};
use crate::protocol::openai::{completion_body, decode_request, StreamEncoder};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    match chat(&req, payload, &state).await {
        Ok(resp) => resp,
        Err(e) => e.render(Protocol::OpenAi),
    }
}

async fn chat(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    state.auth.check(req)?;
    let body = read_body(req, payload, state.dispatcher.server.body_limit.0).await?;
    let chat = decode_request(&body)?;
    drop(body);
    state.check_model(&chat.model)?;
    let chat = Arc::new(chat);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = super::unix_now();
    if chat.stream {
        let opened = state.dispatcher.open(&chat).await?;
        let enc = StreamEncoder::new(id, created, chat.model.clone(), chat.include_usage);
        let keepalive = state.dispatcher.server.keepalive;
        let shutdown = state.dispatcher.shutdown.clone();
        Ok(sse::response(sse::body(
            opened, enc, chat, keepalive, shutdown,
        )))
    } else {
        let answer = state.dispatcher.complete(&chat).await?;
        Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(completion_body(&answer, &chat, &id, created)))
    }
}

/// `GET /v1/models`, in Anthropic's shape for Anthropic clients.
pub async fn list_models(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let anthropic = super::anthropic::wants_anthropic(&req);
    if let Err(e) = state.auth.check(&req) {
        return e.render(protocol(anthropic));
    }
    if anthropic {
        return super::anthropic::list_models(&state);
    }
    let list = ModelList {
        object: "list",
        data: state
            .models
            .iter()
            .map(|m| ModelOut {
                id: &m.id,
                object: "model",
                created: state.started,
                owned_by: &m.owned_by,
            })
            .collect(),
    };
    HttpResponse::Ok().json(list)
}

/// `GET /v1/models/{id}`, in Anthropic's shape for Anthropic clients.
pub async fn get_model(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let anthropic = super::anthropic::wants_anthropic(&req);
    if let Err(e) = state.auth.check(&req) {
        return e.render(protocol(anthropic));
    }
    let id = path.into_inner();
    if anthropic {
        return super::anthropic::get_model(&state, id);
    }
    match state.models.iter().find(|m| m.id == id) {
        Some(m) => HttpResponse::Ok().json(ModelOut {
            id: &m.id,
            object: "model",
            created: state.started,
            owned_by: &m.owned_by,
        }),
        None => ApiError::ModelNotFound(id).render(Protocol::OpenAi),
    }
}

fn protocol(anthropic: bool) -> Protocol {
    if anthropic {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    }
}

//! The OpenAI frontend: `/v1/chat/completions` and `/v1/models`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::{ApiError, Protocol};
use super::trace::Trace;
use super::AppState;
use crate::canonical::Wire;
use crate::protocol::openai::wire::{ModelList, ModelOut};
use crate::protocol::openai::{completion_body, decode_request, StreamEncoder};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    super::unwinding(Protocol::OpenAi, async move {
        let mut trace = Trace::start(&req, "openai");
        let resp = match chat(&req, payload, &state, &mut trace).await {
            Ok(resp) => resp,
            Err(e) => e.render(Protocol::OpenAi),
        };
        trace.respond(resp)
    })
    .await
}

async fn chat(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    trace: &mut Trace,
) -> Result<HttpResponse, ApiError> {
    let chat = super::accept(req, payload, state, Wire::OpenAiChat, decode_request, trace).await?;
    let id = super::trace::random_id("chatcmpl-");
    let created = super::unix_now();
    let stream_id = id.clone();
    super::respond(
        state,
        chat,
        |c| StreamEncoder::new(stream_id, created, c.model.clone(), c.include_usage),
        |answer, c| completion_body(answer, c, &id, created),
        trace,
    )
    .await
}

/// `GET /v1/models`, in Anthropic's shape for Anthropic clients.
pub async fn list_models(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let anthropic = super::anthropic::wants_anthropic(req.headers());
    if let Err(e) = state.catalog().auth.check(&req) {
        return e.render(protocol(anthropic));
    }
    if anthropic {
        return super::anthropic::list_models(&state);
    }
    let catalog = state.catalog();
    let list = ModelList {
        object: "list",
        data: catalog
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
    let anthropic = super::anthropic::wants_anthropic(req.headers());
    if let Err(e) = state.catalog().auth.check(&req) {
        return e.render(protocol(anthropic));
    }
    let id = path.into_inner();
    if anthropic {
        return super::anthropic::get_model(&state, id);
    }
    let catalog = state.catalog();
    match catalog.models.iter().find(|m| m.id == id) {
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

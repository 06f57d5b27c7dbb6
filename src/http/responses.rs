//! The Responses frontend: `POST /v1/responses`, and the stored responses
//! (`GET` and `DELETE /v1/responses/{id}`, `GET .../input_items`).
//!
//! A stored response belongs to the API key that created it: the store is
//! keyed by the key's scope, so another key gets a 404, as for an id that
//! never existed.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::auth::Auth;
use super::error::{ApiError, Protocol};
use super::trace::Trace;
use super::AppState;
use crate::canonical::{Conversation, Wire};
use crate::protocol::responses::wire::ItemIn;
use crate::protocol::responses::{
    completion_body, continue_from, decode_request, stored_input_json, Echo, Head, OnEnd,
    StreamEncoder,
};
use crate::store::{Owner, Responses, Stored};

/// `POST /v1/responses`.
pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    super::unwinding(Protocol::OpenAi, async move {
        let mut trace = Trace::start(&req, "responses");
        let resp = match run(&req, payload, &state, &mut trace).await {
            Ok(resp) => resp,
            Err(e) => e.render(Protocol::OpenAi),
        };
        trace.respond(resp)
    })
    .await
}

fn owner(req: &HttpRequest) -> Owner {
    Conversation::scope_of(Auth::presented(req))
}

fn not_found(id: &str, param: Option<&'static str>) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "no stored response with id '{}' (it may have expired, or belong to another API key)",
            super::guard::echo(id)
        ),
        param,
    }
}

/// What storing a response needs once its output is known. It is stored
/// before its last event goes out, so a client that continues it at once
/// finds it.
struct Saver {
    store: Arc<Responses>,
    owner: Owner,
    id: String,
    echo: Arc<Echo>,
    /// The stored response this one continues.
    earlier: Option<Arc<Stored>>,
}

impl Saver {
    /// Stores the response: its body, and its output items as a JSON array.
    fn save(self, body: &[u8], output: &[u8]) {
        // Serializing into memory cannot fail.
        let input = stored_input_json(&self.echo.input_items);
        let conversation = match &self.earlier {
            Some(stored) => join_arrays(&[stored.conversation(), &input, output]),
            None => join_arrays(&[&input, output]),
        };
        let stored = Stored::new(body, &input, &conversation);
        self.store.put(self.owner, &self.id, stored);
    }
}

/// JSON arrays as one: `[a…]`, `[b…]` make `[a…,b…]`.
fn join_arrays(arrays: &[&[u8]]) -> Vec<u8> {
    fn inner(s: &[u8]) -> &[u8] {
        let s = s.trim_ascii();
        let s = s.strip_prefix(b"[").unwrap_or(s);
        s.strip_suffix(b"]").unwrap_or(s).trim_ascii()
    }
    let mut out = Vec::with_capacity(arrays.iter().map(|a| a.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for a in arrays.iter().map(|a| inner(a)).filter(|a| !a.is_empty()) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(a);
    }
    out.push(b']');
    out
}

async fn run(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    trace: &mut Trace,
) -> Result<HttpResponse, ApiError> {
    let (mut chat, echo) = super::read_request(
        req,
        payload,
        state,
        Wire::OpenAiResponses,
        decode_request,
        |d| &mut d.0,
        trace,
    )
    .await?;
    let owner = owner(req);
    // The stored conversation this request continues, as JSON.
    let mut earlier: Option<Arc<Stored>> = None;
    if let Some(prev) = &echo.previous_response_id {
        let stored = state
            .store
            .get(owner, prev)
            .await
            .ok_or_else(|| not_found(prev, Some("previous_response_id")))?;
        let items: Vec<ItemIn> = serde_json::from_slice(stored.conversation())
            .map_err(|e| ApiError::Internal(format!("a stored conversation is unreadable: {e}")))?;
        continue_from(&mut chat, &items, &echo)?;
        earlier = Some(stored);
    }
    let chat = super::admit(req, state, chat, trace)?;
    let head = Head::new(
        super::trace::random_id("resp_"),
        super::unix_now(),
        &chat.model,
        Arc::new(echo),
    );
    let saver = head.echo.store.then(|| Saver {
        store: state.store.clone(),
        owner,
        id: head.id.clone(),
        echo: head.echo.clone(),
        earlier,
    });
    if chat.stream {
        let on_end = saver.map(|s| -> OnEnd { Box::new(move |body, output| s.save(body, output)) });
        let stream_head = head.clone();
        super::respond(
            state,
            chat,
            |c| StreamEncoder::new(stream_head, c.clone(), on_end),
            |_, _| Vec::new(),
            trace,
        )
        .await
    } else {
        super::respond(
            state,
            chat,
            |c| StreamEncoder::new(head.clone(), c.clone(), None),
            |answer, c| {
                let (body, output) = completion_body(answer, c, &head);
                if let Some(s) = saver {
                    s.save(&body, &output);
                }
                body
            },
            trace,
        )
        .await
    }
}

/// `GET /v1/responses/{id}`.
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    stored(&req, &state, &path, |s| {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(bytes::Bytes::copy_from_slice(s.body()))
    })
    .await
}

/// `GET /v1/responses/{id}/input_items`: the request's input items, in the
/// API's list shape (`order`, `after`, `limit` as the API takes them).
pub async fn input_items(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    stored(&req, &state, &path, |s| {
        let mut items: Vec<Value> = serde_json::from_slice(s.input()).unwrap_or_default();
        // The API lists newest first unless asked otherwise.
        if query.order.as_deref() != Some("asc") {
            items.reverse();
        }
        if let Some(after) = &query.after {
            if let Some(at) = items.iter().position(|i| i["id"].as_str() == Some(after)) {
                items.drain(..=at);
            }
        }
        let limit = query.limit.unwrap_or(20).clamp(1, 100);
        let has_more = items.len() > limit;
        items.truncate(limit);
        let first = items.first().map(|i| i["id"].clone());
        let last = items.last().map(|i| i["id"].clone());
        HttpResponse::Ok().json(json!({
            "object": "list",
            "data": items,
            "first_id": first,
            "last_id": last,
            "has_more": has_more,
        }))
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    order: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(e) = state.catalog().auth.check(&req) {
        return e.render(Protocol::OpenAi);
    }
    let id = path.into_inner();
    if state.store.delete(owner(&req), &id).await {
        HttpResponse::Ok().json(json!({"id": id, "object": "response", "deleted": true}))
    } else {
        not_found(&id, None).render(Protocol::OpenAi)
    }
}

async fn stored(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
    answer: impl FnOnce(&Stored) -> HttpResponse,
) -> HttpResponse {
    if let Err(e) = state.catalog().auth.check(req) {
        return e.render(Protocol::OpenAi);
    }
    match state.store.get(owner(req), id).await {
        Some(s) => answer(&s),
        None => not_found(id, None).render(Protocol::OpenAi),
    }
}

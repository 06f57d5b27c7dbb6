//! The Anthropic frontend: `/v1/messages`, `/v1/messages/count_tokens`,
//! and the Anthropic shape of `/v1/models` for clients that send
//! `anthropic-version`.

use std::time::{Duration, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::{ApiError, Protocol};
use super::trace::Trace;
use super::{AppState, ModelEntry};
use crate::canonical::{tokens, Wire};
use crate::protocol::anthropic::wire::{ModelList, ModelOut};
use crate::protocol::anthropic::{completion_body, decode_request, StreamEncoder};

/// `POST /v1/messages`.
pub async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    super::unwinding(Protocol::Anthropic, async move {
        let mut trace = Trace::start(&req, "anthropic");
        let resp = match message(&req, payload, &state, &mut trace).await {
            Ok(resp) => resp,
            Err(e) => e.render(Protocol::Anthropic),
        };
        trace.respond(resp)
    })
    .await
}

async fn message(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    trace: &mut Trace,
) -> Result<HttpResponse, ApiError> {
    let chat = super::accept(
        req,
        payload,
        state,
        Wire::AnthropicMessages,
        decode_request,
        trace,
    )
    .await?;
    let id = super::trace::random_id("msg_");
    let stream_id = id.clone();
    super::respond(
        state,
        chat,
        |c| StreamEncoder::new(stream_id, c.clone()),
        |answer, c| completion_body(answer, c, &id),
        trace,
    )
    .await
}

/// `POST /v1/messages/count_tokens`: counted locally, never touching a
/// session. Claude Code calls this often to decide when to compact its
/// context, so the count must be a real estimate: a fake `0` would
/// disable compaction, and an error makes it fall back to its own guess.
pub async fn count_tokens(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    super::unwinding(Protocol::Anthropic, async move {
        match count(&req, payload, &state).await {
            Ok(resp) => resp,
            Err(e) => e.render(Protocol::Anthropic),
        }
    })
    .await
}

async fn count(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    // Counting is not a chat request: it is not traced as one.
    let mut trace = Trace::start(req, "count_tokens");
    trace.disarm();
    let chat = super::accept(
        req,
        payload,
        state,
        Wire::AnthropicMessages,
        decode_request,
        &mut trace,
    )
    .await?;
    let input_tokens = match tokens::count_request(&chat).await {
        Ok(n) => n.max(1),
        Err(tokens::CountError::Busy) => {
            return Err(ApiError::Overloaded(
                "too many token counts are waiting; retry later".into(),
            ))
        }
        // Logged and counted where it failed; a count that is off by a
        // little beats an error Claude Code would replace with its own guess.
        Err(tokens::CountError::Failed) => tokens::request_tokens_now(&chat).max(1),
    };
    Ok(HttpResponse::Ok().json(json!({ "input_tokens": input_tokens })))
}

/// Whether a request comes from an Anthropic client, which always sends
/// `anthropic-version` and expects Anthropic's shapes back.
pub fn wants_anthropic(headers: &actix_web::http::header::HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

fn model_out<'a>(m: &'a ModelEntry, created_at: &'a str) -> ModelOut<'a> {
    ModelOut {
        kind: "model",
        id: &m.id,
        display_name: &m.id,
        created_at: created_at.into(),
    }
}

/// The process start as RFC 3339, standing in for the models' creation.
fn created_at(state: &AppState) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(state.started)).to_string()
}

/// `GET /v1/models` in Anthropic's shape (one page holding every model).
pub fn list_models(state: &AppState) -> HttpResponse {
    let created = created_at(state);
    let catalog = state.catalog();
    let data: Vec<ModelOut<'_>> = catalog
        .models
        .iter()
        .map(|m| model_out(m, &created))
        .collect();
    HttpResponse::Ok().json(ModelList {
        first_id: catalog.models.first().map(|m| m.id.as_str()),
        last_id: catalog.models.last().map(|m| m.id.as_str()),
        has_more: false,
        data,
    })
}

/// `GET /v1/models/{id}` in Anthropic's shape.
pub fn get_model(state: &AppState, id: String) -> HttpResponse {
    let catalog = state.catalog();
    match catalog.models.iter().find(|m| m.id == id) {
        Some(m) => {
            let created = created_at(state);
            HttpResponse::Ok().json(model_out(m, &created))
        }
        None => ApiError::ModelNotFound(id).render(Protocol::Anthropic),
    }
}

#[cfg(test)]
mod tests {
    use actix::Actor as _;
    use actix_web::http::StatusCode;
    use actix_web::test::{self, TestRequest};
    use actix_web::App;
    use serde_json::Value;

    use super::*;
    use crate::actors::messages::Snapshot;
    use crate::actors::pool::PoolSupervisor;
    use crate::actors::restart_log::RestartLog;
    use crate::actors::router::Router;
    use crate::actors::SessionState;
    use crate::config::Config;

    async fn state(api_keys: &[&str]) -> web::Data<AppState> {
        let cfg: Config = crate::config::from_value(
            json!({
                "server": {"api_keys": api_keys, "queue_timeout": "5s"},
                "pools": [{"name": "demo", "kind": "demo", "models": ["demo"], "sessions": 1,
                           "chunk_delay": "0s"}]
            }),
            crate::upstream::registry::check_pool,
        )
        .unwrap();
        let router = Router::new(16);
        let tickets = router.tickets();
        let router = router.start();
        // One fixed directory, so test runs do not pile up directories;
        // nothing restarts here, so nothing is written to it.
        let log_dir = std::env::temp_dir().join("troupe-test-restart-log");
        let log = RestartLog::open(&log_dir, 1 << 20, 1, 16).start();
        for pool in &cfg.pools {
            PoolSupervisor::new(
                pool.clone(),
                &cfg.supervisor,
                router.clone(),
                log.clone(),
                std::sync::Arc::new(Vec::new()),
            )
            .start();
        }
        // The router learns a model when a session serving it registers.
        for _ in 0..200 {
            let sessions = router.send(Snapshot).await.unwrap();
            if sessions.iter().any(|s| s.state == SessionState::Ready) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (_, shutdown) = tokio::sync::watch::channel(false);
        web::Data::new(AppState::new(
            &cfg,
            router,
            tickets,
            shutdown,
            crate::upstream::registry::speaks,
            None,
        ))
    }

    /// The app with every route, over a demo pool.
    macro_rules! app {
        ($keys:expr) => {
            test::init_service(
                App::new()
                    .app_data(state($keys).await)
                    .configure(super::super::routes),
            )
            .await
        };
    }

    fn post(path: &str, body: Value) -> TestRequest {
        test::TestRequest::post()
            .uri(path)
            .insert_header(("anthropic-version", "2023-06-01"))
            .insert_header(("anthropic-beta", "some-future-beta"))
            .set_json(body)
    }

    /// Sends `req` and reads the status and JSON body.
    macro_rules! call_json {
        ($app:expr, $req:expr $(,)?) => {{
            let resp = test::call_service(&$app, $req.to_request()).await;
            let status = resp.status();
            let body = test::read_body(resp).await;
            let json: Value = serde_json::from_slice(&body).unwrap();
            (status, json)
        }};
    }

    #[actix_web::test]
    async fn messages_answer_in_both_modes() {
        let app = app!(&[]);
        let (status, body) = call_json!(
            app,
            post(
                "/v1/messages",
                json!({"model": "demo", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hello there"}]}),
            ),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(body["type"], "message");
        assert_eq!(body["model"], "demo");
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(
            body["content"][0]["text"],
            format!("{}hello there", crate::upstream::demo::PREFIX)
        );
        assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);

        let resp = test::call_service(
            &app,
            post(
                "/anthropic/v1/messages",
                json!({"model": "demo", "max_tokens": 64, "stream": true,
                       "messages": [{"role": "user", "content": "hello there"}]}),
            )
            .to_request(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = test::read_body(resp).await;
        let text = std::str::from_utf8(&body).unwrap();
        let mut names = Vec::new();
        let mut said = String::new();
        for ev in text.split("\n\n").filter(|s| !s.is_empty()) {
            let (name, data) = ev.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name);
            if name == "content_block_delta" {
                said.push_str(data["delta"]["text"].as_str().unwrap());
            }
            if names.last() != Some(&name) {
                names.push(name);
            }
        }
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            said,
            format!("{}hello there", crate::upstream::demo::PREFIX)
        );
    }

    #[actix_web::test]
    async fn tool_round_trip() {
        let app = app!(&[]);
        let tools = json!([{"name": "weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
        let (status, body) = call_json!(
            app,
            post(
                "/v1/messages",
                json!({"model": "demo", "max_tokens": 64, "tools": tools,
                       "messages": [{"role": "user", "content": "what is the weather in Paris?"}]}),
            ),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["stop_reason"], "tool_use");
        let call = body["content"][0].clone();
        assert_eq!(call["type"], "tool_use");
        assert_eq!(call["input"], json!({"city": "demo"}));
        let (status, body) = call_json!(
            app,
            post(
                "/v1/messages",
                json!({"model": "demo", "max_tokens": 64, "tools": tools,
                "messages": [
                    {"role": "user", "content": "what is the weather in Paris?"},
                    {"role": "assistant", "content": [call.clone()]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]}
                ]}),
            ),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["content"][0]["text"], "The tool returned: sunny");
    }

    #[actix_web::test]
    async fn count_tokens_counts_locally() {
        let app = app!(&[]);
        let small = json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]});
        let (status, body) = call_json!(app, post("/v1/messages/count_tokens", small));
        assert_eq!(status, StatusCode::OK, "{body}");
        let n = body["input_tokens"].as_u64().unwrap();
        assert!(n >= 1);
        let big = json!({"model": "demo", "system": [{"type": "text", "text": "You are a helpful assistant with many rules."}],
            "messages": [{"role": "user", "content": "hi, tell me about the weather"}],
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}]});
        let (_, body) = call_json!(app, post("/anthropic/v1/messages/count_tokens", big));
        assert!(body["input_tokens"].as_u64().unwrap() > n);
        let (status, body) = call_json!(
            app,
            post(
                "/v1/messages/count_tokens",
                json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
            ),
        );
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "not_found_error");
    }

    #[actix_web::test]
    async fn errors_use_anthropic_envelopes() {
        let app = app!(&["sk-test"]);
        let ok_body = json!({"model": "demo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
        let (status, body) = call_json!(app, post("/v1/messages", ok_body.clone()));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["type"], "authentication_error");
        let req = test::TestRequest::post()
            .uri("/v1/messages")
            .insert_header(("x-api-key", "sk-test"))
            .set_json(json!({"model": "demo", "messages": [{"role": "user", "content": 5}]}));
        let (status, body) = call_json!(app, req);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages[0].content"),
            "{body}"
        );
        let req = test::TestRequest::post()
            .uri("/v1/messages")
            .insert_header(("authorization", "Bearer sk-test"))
            .set_json(ok_body);
        let (status, _) = call_json!(app, req);
        assert_eq!(status, StatusCode::OK);
        let req = test::TestRequest::get().uri("/anthropic/v1/nothing");
        let (status, body) = call_json!(app, req);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "not_found_error");
    }

    #[actix_web::test]
    async fn models_take_the_callers_shape() {
        let app = app!(&[]);
        let req = test::TestRequest::get()
            .uri("/v1/models")
            .insert_header(("anthropic-version", "2023-06-01"));
        let (status, body) = call_json!(app, req);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["has_more"], false);
        assert_eq!(body["first_id"], "demo");
        assert_eq!(body["last_id"], "demo");
        let m = &body["data"][0];
        assert_eq!(
            (&m["type"], &m["id"], &m["display_name"]),
            (&json!("model"), &json!("demo"), &json!("demo"))
        );
        let created = m["created_at"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");
        let req = test::TestRequest::get()
            .uri("/v1/models/demo")
            .insert_header(("anthropic-version", "2023-06-01"));
        let (_, body) = call_json!(app, req);
        assert_eq!(body["type"], "model");
        let req = test::TestRequest::get()
            .uri("/v1/models/nope")
            .insert_header(("anthropic-version", "2023-06-01"));
        let (status, body) = call_json!(app, req);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "not_found_error");
        let req = test::TestRequest::get().uri("/v1/models");
        let (_, body) = call_json!(app, req);
        assert_eq!(body["object"], "list");
    }

    #[actix_web::test]
    async fn a_full_queue_is_overloaded_and_fields_are_named() {
        for e in [
            ApiError::QueueTimeout { waited_secs: 1 },
            ApiError::QueueFull,
        ] {
            assert_eq!(e.status_for(Protocol::Anthropic).as_u16(), 529);
            assert_eq!(e.status_for(Protocol::OpenAi).as_u16(), 429);
            let resp = e.render(Protocol::Anthropic);
            assert_eq!(resp.status().as_u16(), 529);
            assert!(resp.headers().contains_key("retry-after"));
        }
        assert_eq!(
            crate::protocol::anthropic::server::error_type(529),
            "overloaded_error"
        );
        let e = ApiError::from(crate::protocol::DecodeError::new(
            "messages[0].content[0].source.media_type",
            "a base64 source needs `media_type`",
        ));
        let resp = e.render(Protocol::Anthropic);
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["error"]["message"],
            "messages[0].content[0].source.media_type: a base64 source needs `media_type`"
        );
    }
}

//! The HTTP surface: routes, shared state, auth, errors and the SSE writer.
//! Handlers decode into the canonical model, dispatch through the Router,
//! and encode the answer in the caller's protocol.

pub mod anthropic;
pub mod auth;
pub mod body;
pub mod dispatch;
pub mod error;
pub mod health;
pub mod openai;
pub mod sse;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::router::Router;
use crate::config::Config;
use auth::Auth;
use dispatch::Dispatcher;
use error::{ApiError, Protocol};

/// A model as `/v1/models` lists it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub id: String,
    /// The pool that serves it first.
    pub owned_by: String,
}

/// State shared by every handler.
pub struct AppState {
    pub dispatcher: Dispatcher,
    pub auth: Auth,
    pub models: Vec<ModelEntry>,
    model_names: HashSet<String>,
    /// Process start, shown as the models' `created`.
    pub started: u64,
}

impl AppState {
    pub fn new(
        cfg: &Config,
        router: actix::Addr<Router>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let mut models: Vec<ModelEntry> = Vec::new();
        let mut pools: Vec<_> = cfg.pools.iter().collect();
        pools.sort_by_key(|p| p.priority);
        for pool in pools {
            for m in &pool.models {
                if !models.iter().any(|e| e.id == m.public) {
                    models.push(ModelEntry {
                        id: m.public.clone(),
                        owned_by: pool.name.clone(),
                    });
                }
            }
        }
        let model_names = models.iter().map(|m| m.id.clone()).collect();
        AppState {
            dispatcher: Dispatcher {
                router,
                server: Arc::new(cfg.server.clone()),
                retry_budget: cfg.supervisor.retry_budget,
                shutdown,
            },
            auth: Auth::new(cfg.server.api_keys.clone()),
            models,
            model_names,
            started: unix_now(),
        }
    }

    /// 404 for a model no pool serves, before any session is touched.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.model_names.contains(model) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound(model.to_owned()))
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Registers every route: both protocols at `/v1`, each also under its
/// own prefix (`/openai/v1`, `/anthropic/v1`). One scope per prefix, since
/// actix does not fall through from a matching scope to a later one.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for prefix in ["/v1", "/openai/v1", "/anthropic/v1"] {
        let mut scope = web::scope(prefix);
        if prefix != "/anthropic/v1" {
            scope = scope.route(
                "/chat/completions",
                web::post().to(openai::chat_completions),
            );
        }
        if prefix != "/openai/v1" {
            scope = scope
                .route("/messages", web::post().to(anthropic::messages))
                .route(
                    "/messages/count_tokens",
                    web::post().to(anthropic::count_tokens),
                );
        }
        cfg.service(
            scope
                .route("/models", web::get().to(openai::list_models))
                .route("/models/{id:.*}", web::get().to(openai::get_model)),
        );
    }
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let protocol = if req.path().starts_with("/anthropic/") || anthropic::wants_anthropic(&req) {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    };
    ApiError::RouteNotFound(format!("{} {}", req.method(), req.path())).render(protocol)
}

//! The HTTP surface: routes, shared state, auth, errors and the SSE writer.
//! Handlers decode into the canonical model, dispatch through the Router,
//! and encode the answer in the caller's protocol.

pub mod anthropic;
pub mod auth;
pub mod body;
pub mod dispatch;
pub mod error;
pub mod guard;
pub mod health;
pub mod openai;
pub mod responses;
pub mod sse;
pub mod trace;

use std::collections::{HashMap, HashSet};

use arc_swap::ArcSwap;
use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::router::Router;
use crate::canonical::{Answer, ChatRequest, Conversation, Native, Speaks, Wire};

/// A client names its conversation with this header (it wins over body
/// fields such as `thread_id` or `user`).
pub const CONVERSATION_HEADER: &str = "x-troupe-conversation";
use crate::config::Config;
use auth::Auth;
use dispatch::Dispatcher;
use error::{ApiError, Protocol};
use trace::Trace;

/// A model as `/v1/models` lists it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub id: String,
    /// The pool that serves it first.
    pub owned_by: String,
}

/// What a configuration reload may change while requests run: the models
/// served and the keys that may use them. Swapped whole, read lock-free.
pub struct Catalog {
    pub auth: Auth,
    /// Who may read `/metrics` (empty: anyone).
    pub metrics_auth: Auth,
    pub models: Vec<ModelEntry>,
    model_names: HashSet<String>,
    /// What each pool's upstream takes, by pool name.
    speaks: HashMap<String, Speaks>,
}

impl Catalog {
    /// `speaks` tells what a pool's upstream takes (the registry's).
    pub fn new(cfg: &Config, speaks: fn(&crate::config::PoolConfig) -> Speaks) -> Self {
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
        Catalog {
            auth: Auth::of_clients(&cfg.server.api_keys),
            metrics_auth: Auth::new(cfg.server.metrics_key.iter().cloned().collect()),
            models,
            model_names,
            speaks: cfg
                .pools
                .iter()
                .map(|p| (p.name.clone(), speaks(p)))
                .collect(),
        }
    }
}

/// State shared by every handler.
pub struct AppState {
    pub dispatcher: Dispatcher,
    pub catalog: Arc<ArcSwap<Catalog>>,
    /// Process start, shown as the models' `created`.
    pub started: u64,
    /// Stored responses of the Responses API.
    pub store: Arc<crate::store::Responses>,
}

impl AppState {
    pub fn new(
        cfg: &Config,
        router: actix::Addr<Router>,
        tickets: Arc<crate::actors::tickets::Tickets>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        speaks: fn(&crate::config::PoolConfig) -> Speaks,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        AppState {
            dispatcher: Dispatcher {
                router,
                tickets,
                server: Arc::new(cfg.server.clone()),
                retry_budget: cfg.supervisor.retry_budget,
                shutdown,
                cluster: cluster.clone(),
                limiter: Arc::default(),
            },
            catalog: Arc::new(ArcSwap::from_pointee(Catalog::new(cfg, speaks))),
            started: unix_now(),
            store: Arc::new(crate::store::Responses::new(&cfg.responses, cluster)),
        }
    }

    /// The current models and keys.
    pub fn catalog(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.catalog.load()
    }

    /// The fields of `chat` that `pool`'s upstream could not take, comma
    /// separated; `None` when it took them all.
    fn dropped(&self, chat: &ChatRequest, pool: &str) -> Option<String> {
        let speaks = *self.catalog().speaks.get(pool)?;
        let dropped = crate::protocol::dropped(chat, speaks);
        (!dropped.is_empty()).then(|| dropped.join(","))
    }

    /// 404 for a model no pool serves, before any session is touched.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.catalog().model_names.contains(model) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound(model.to_owned()))
        }
    }
}

/// Bodies up to this size are decoded on the HTTP worker itself.
const DECODE_IN_PLACE: usize = 256 * 1024;

/// The part of every chat route before dispatch: auth, the body limit,
/// decoding in the route's protocol (`wire`), and a 404 for a model nobody
/// serves. The body itself is kept with the request, for an upstream of
/// the same protocol.
pub async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    wire: Wire,
    decode: fn(&[u8]) -> Result<ChatRequest, crate::protocol::DecodeError>,
    trace: &mut Trace,
) -> Result<Arc<ChatRequest>, ApiError> {
    let chat = read_request(req, payload, state, wire, decode, |c| c, trace).await?;
    admit(req, state, chat, trace)
}

/// Auth, the body limit and decoding with `decode`, whose result holds a
/// canonical request (`chat_of` finds it) that keeps the body as it came.
pub async fn read_request<T: Send + 'static>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    wire: Wire,
    decode: fn(&[u8]) -> Result<T, crate::protocol::DecodeError>,
    chat_of: fn(&mut T) -> &mut ChatRequest,
    trace: &mut Trace,
) -> Result<T, ApiError> {
    trace.client = state.catalog().auth.client(req)?;
    body::require_json(req)?;
    let server = &state.dispatcher.server;
    let body = body::read_body(req, payload, server.body_limit.0, server.body_timeout)
        .await?
        .freeze();
    let read = move |body: bytes::Bytes| {
        let mut decoded = decode(&body)?;
        chat_of(&mut decoded).native = Some(Native { wire, body });
        Ok::<_, crate::protocol::DecodeError>(decoded)
    };
    let decoded = if body.len() <= DECODE_IN_PLACE {
        read(body)?
    } else {
        // Megabytes of JSON take milliseconds to parse (much more in a
        // debug build): not on the worker that serves everyone else.
        match tokio::task::spawn_blocking(move || read(body)).await {
            Ok(decoded) => decoded?,
            Err(e) => {
                let message = match e.try_into_panic() {
                    Ok(panic) => task_panicked("handler", panic.as_ref()),
                    Err(e) => e.to_string(),
                };
                return Err(ApiError::Internal(message));
            }
        }
    };
    Ok(decoded)
}

/// Takes a decoded request in: a 404 for a model nobody serves, and the
/// conversation keys, now that the caller is known.
pub fn admit(
    req: &HttpRequest,
    state: &AppState,
    mut chat: ChatRequest,
    trace: &mut Trace,
) -> Result<Arc<ChatRequest>, ApiError> {
    crate::canonical::fault::maybe_panic(&chat, "handler");
    state.check_model(&chat.model)?;
    if let Some(c) = trace.client.as_ref().filter(|c| !c.may_use(&chat.model)) {
        return Err(ApiError::Forbidden(format!(
            "the API key `{}` may not use the model `{}` (server.api_keys models)",
            c.name,
            guard::echo(&chat.model)
        )));
    }
    trace.model = Some(chat.model.clone());
    let header = req
        .headers()
        .get(CONVERSATION_HEADER)
        .and_then(|v| v.to_str().ok());
    chat.conversation = Some(Conversation::of(&chat, Auth::presented(req), header));
    Ok(Arc::new(chat))
}

/// Runs an accepted request: a stream written by `encoder`, or the folded
/// answer written by `body`.
pub async fn respond<E: sse::EventEncoder>(
    state: &AppState,
    chat: Arc<ChatRequest>,
    encoder: impl FnOnce(&Arc<ChatRequest>) -> E,
    body: impl FnOnce(&Answer, &ChatRequest) -> Vec<u8>,
    trace: &mut Trace,
) -> Result<HttpResponse, ApiError> {
    let d = &state.dispatcher;
    if chat.stream {
        let opened = d.open(&chat, trace).await?;
        let enc = encoder(&chat);
        trace.first_byte();
        let dropped = state.dropped(&chat, &opened.lease.pool);
        let stream = sse::body(
            opened,
            enc,
            chat,
            d.server.keepalive,
            d.shutdown.clone(),
            trace.hand_off(),
        );
        let mut resp = sse::response(stream);
        insert_dropped(&mut resp, dropped);
        Ok(resp)
    } else {
        let answer = d.complete(&chat, trace).await?;
        trace.first_byte();
        let dropped = trace
            .pool
            .as_ref()
            .and_then(|pool| state.dropped(&chat, pool));
        let mut resp = HttpResponse::Ok()
            .content_type("application/json")
            .body(body(&answer, &chat));
        insert_dropped(&mut resp, dropped);
        Ok(resp)
    }
}

/// Names the request fields the upstream that answered could not take,
/// so nothing is dropped silently.
pub(crate) const DROPPED_HEADER: &str = "x-troupe-dropped";

fn insert_dropped(resp: &mut HttpResponse, dropped: Option<String>) {
    if let Some(v) = dropped.and_then(|d| HeaderValue::from_str(&d).ok()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(DROPPED_HEADER), v);
    }
}

/// Runs a handler so that a panic inside it still answers the client, in
/// its protocol, rather than cutting the connection with no reply.
pub async fn unwinding(
    protocol: Protocol,
    handler: impl std::future::Future<Output = HttpResponse>,
) -> HttpResponse {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            let message = task_panicked("handler", panic.as_ref());
            ApiError::Internal(message).render(protocol)
        }
    }
}

/// Logs and counts a task that panicked; returns what the client is told.
pub fn task_panicked(place: &'static str, panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(
        place,
        panic = what,
        "a request task panicked; its client got an error"
    );
    crate::metrics::task_failed(place);
    "the request failed inside the gateway (logged as a bug)".to_owned()
}

pub use crate::support::ids::unix_now;

/// Registers every route: both protocols at `/v1`, each also under its
/// own prefix (`/openai/v1`, `/anthropic/v1`). One scope per prefix, since
/// actix does not fall through from a matching scope to a later one.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for prefix in ["/v1", "/openai/v1", "/anthropic/v1"] {
        let mut scope = web::scope(prefix);
        if prefix != "/anthropic/v1" {
            scope = scope
                .service(post("/chat/completions", openai::chat_completions))
                .service(post("/responses", responses::create))
                .service(get("/responses/{id}/input_items", responses::input_items))
                .service(
                    web::resource("/responses/{id}")
                        .route(web::get().to(responses::get))
                        .route(web::head().to(responses::get))
                        .route(web::delete().to(responses::delete))
                        .default_service(web::to(|req: HttpRequest| {
                            not_allowed(req, "GET, HEAD, DELETE")
                        })),
                );
        }
        if prefix != "/openai/v1" {
            scope = scope
                .service(post("/messages", anthropic::messages))
                .service(post("/messages/count_tokens", anthropic::count_tokens));
        }
        cfg.service(
            scope
                .service(get("/models", openai::list_models))
                .service(get("/models/{id:.*}", openai::get_model)),
        );
    }
    cfg.service(get("/healthz", health::healthz))
        .service(get("/readyz", health::readyz))
        .service(get("/metrics", health::metrics))
        // Clients probe the base URL (Claude Code sends `HEAD /`).
        .service(get("/", health::root))
        .default_service(web::to(not_found));
}

/// A resource answering GET and HEAD (actix-http sends no body for HEAD),
/// and 405 with `Allow` for any other method.
pub(crate) fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|req: HttpRequest| not_allowed(req, "GET, HEAD")))
}

/// A resource answering POST, and 405 with `Allow` for any other method.
pub(crate) fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|req: HttpRequest| not_allowed(req, "POST")))
}

async fn not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    let method = guard::echo(req.method().as_str()).into_owned();
    ApiError::MethodNotAllowed { method, allow }.render(protocol_of(&req))
}

/// The protocol a request speaks, for errors raised before its route runs.
pub fn protocol_of(req: &HttpRequest) -> Protocol {
    protocol_for(req.path(), req.headers())
}

/// [`protocol_of`] from a request's parts, for code that runs before
/// actix-web has made an `HttpRequest` (the `Expect: 100-continue` check).
pub(crate) fn protocol_for(path: &str, headers: &actix_web::http::header::HeaderMap) -> Protocol {
    if path.starts_with("/anthropic/")
        || path.ends_with("/messages")
        || path.ends_with("/messages/count_tokens")
        || anthropic::wants_anthropic(headers)
    {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let what = format!("{} {}", req.method(), guard::echo(req.path()));
    ApiError::RouteNotFound(what).render(protocol_of(&req))
}

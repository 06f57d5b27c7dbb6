//! The admin API, behind `server.admin_key` (Bearer or `x-api-key`):
//! session states, the restart log, and resets. Nothing here ever shows a
//! secret: sessions are described by pool, name, state and last error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod events;

use actix::{Addr, Recipient};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::Deserialize;
use serde_json::json;

use crate::actors::messages::{ResetSession, Snapshot};
use crate::actors::restart_log::{Recent, RestartEvent, RestartLog};
use crate::actors::router::Router;
use crate::actors::Reload;
use crate::actors::{SessionInfo, SessionState};
use crate::cluster::Cluster;
use crate::config::Secret;
use crate::http::auth::Auth;
use crate::http::{get, post};

/// What the admin routes need.
pub struct AdminState {
    pub router: Addr<Router>,
    pub log: Addr<RestartLog>,
    /// `None` disables the admin API.
    pub auth: Option<Auth>,
    pub reloader: Option<Recipient<Reload>>,
    /// Replicas whose sessions and restarts are shown with this one's.
    pub cluster: Option<Arc<Cluster>>,
}

impl AdminState {
    pub fn new(router: Addr<Router>, log: Addr<RestartLog>, key: Option<Secret>) -> Self {
        AdminState {
            router,
            log,
            auth: key.map(|k| Auth::new(vec![k])),
            reloader: None,
            cluster: None,
        }
    }

    /// Shows every replica's sessions and restarts.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Enables `POST /admin/reload`.
    pub fn with_reloader(mut self, reloader: Recipient<Reload>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// The refusal to send, if the request may not use the admin API.
    fn refuse(&self, req: &HttpRequest) -> Option<HttpResponse> {
        match &self.auth {
            None => Some(HttpResponse::Forbidden().json(json!({
                "error": {"message": "the admin API is disabled: set server.admin_key", "type": "permission_error"}
            }))),
            Some(a) => a.check(req).err().map(|_| {
                HttpResponse::Unauthorized().json(json!({
                    "error": {"message": "admin key required: Authorization: Bearer <server.admin_key>", "type": "authentication_error"}
                }))
            }),
        }
    }
}

/// Registers `/admin/*`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .service(get("", dashboard))
            .service(get("/", dashboard))
            .service(get("/events", live_events))
            .service(get("/sessions", sessions))
            .service(get("/clients", clients))
            .service(post("/reload", reload))
            .service(get("/restarts", restarts))
            .service(post("/sessions/{pool}/{session}/reset", reset)),
    );
}

/// The JSON shape of one session, shared with `troupe sessions`.
pub fn session_json(s: &SessionInfo) -> serde_json::Value {
    let busy = s.state == SessionState::Ready && s.in_flight >= s.max_concurrency;
    let mut v = json!({
        "id": s.id.0,
        "pool": &*s.pool,
        "session": &*s.name,
        "state": if busy { "busy" } else { s.state.name() },
        "in_flight": s.in_flight,
        "max_concurrency": s.max_concurrency,
        "models": s.models.iter().map(|m| &**m).collect::<Vec<_>>(),
        "restarts": s.restarts,
        "last_error": s.last_error.as_deref(),
    });
    match &s.state {
        SessionState::CoolingDown { until, reason } => {
            let left = until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            v["cooldown_seconds_left"] = json!(left.as_secs_f64());
            v["reason"] = json!(reason);
        }
        SessionState::Failed { reason } => v["reason"] = json!(reason),
        _ => {}
    }
    if !s.model_cooldowns.is_empty() {
        v["model_cooldowns"] = s
            .model_cooldowns
            .iter()
            .map(|(m, secs)| json!({"model": &**m, "seconds_left": secs}))
            .collect();
    }
    v
}

/// The dashboard page: static, it holds no data; it asks for the admin key
/// and reads everything through the API and the live feed.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(include_str!("dashboard.html"))
}

/// The subprotocol the live feed answers with.
const EVENTS_PROTOCOL: &str = "troupe.admin";

/// The admin key a WebSocket client offers as a subprotocol: browsers can
/// set no header on a WebSocket, and a key in the URL would end up in
/// proxies' logs and the browser's history. `troupe.key.<key>` for keys of
/// token characters, `troupe.key64.<base64url of the key>` for any key.
fn key_from_protocols(req: &HttpRequest) -> Option<String> {
    use base64::Engine as _;
    let offered = req.headers().get_all("sec-websocket-protocol");
    for p in offered
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if let Some(k) = p.strip_prefix("troupe.key64.") {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k.trim_end_matches('='))
                .ok()?;
            return String::from_utf8(bytes).ok();
        }
        if let Some(k) = p.strip_prefix("troupe.key.") {
            return Some(k.to_owned());
        }
    }
    None
}

/// `/admin/events`: the live feed. The key comes as a subprotocol (see
/// [`key_from_protocols`]) or, from other clients, as a header.
async fn live_events(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AdminState>,
) -> HttpResponse {
    let by_protocol = match (&state.auth, key_from_protocols(&req)) {
        (Some(auth), Some(k)) => auth.accepts(&k),
        _ => false,
    };
    if !by_protocol {
        if let Some(resp) = state.refuse(&req) {
            return resp;
        }
    }
    let viewer = events::Viewer::new(state.router.clone(), state.log.clone());
    ws::WsResponseBuilder::new(viewer, &req, stream)
        .protocols(&[EVENTS_PROTOCOL])
        .start()
        .unwrap_or_else(|e| {
            HttpResponse::BadRequest().json(json!({
                "error": {"message": format!("not a WebSocket request: {e}"), "type": "invalid_request_error"}
            }))
        })
}

/// `POST /admin/reload`: applies the configuration file now; 400 with the
/// reason if it is invalid (the running configuration stays).
async fn reload(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(resp) = state.refuse(&req) {
        return resp;
    }
    let Some(reloader) = &state.reloader else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    match reloader.send(Reload { source: "admin" }).await {
        Ok(Ok(summary)) => HttpResponse::Ok().json(json!({"reloaded": true, "changes": summary})),
        Ok(Err(reason)) => HttpResponse::BadRequest().json(json!({
            "error": {"message": format!("configuration rejected, the running one stays: {reason}"), "type": "invalid_request_error"}
        })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// How often a replica publishes its sessions to the cluster, and how
/// long they are shown after its last heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

/// Publishes this replica's sessions every [`HEARTBEAT`], for the other
/// replicas' `/admin/sessions`.
pub async fn heartbeat(router: Addr<Router>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(list) = router.send(Snapshot).await else {
            return;
        };
        let list: Vec<_> = list.iter().map(session_json).collect();
        if let Ok(text) = serde_json::to_string(&list) {
            cluster.publish_sessions(text, HEARTBEAT_TTL).await;
        }
    }
}

/// `GET /admin/sessions`: this replica's sessions; with a cluster, every
/// live replica's, each marked with its `replica` (this one's fresh, the
/// others' as of their last heartbeat, at most 2 s old).
async fn sessions(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(resp) = state.refuse(&req) {
        return resp;
    }
    let Ok(list) = state.router.send(Snapshot).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let mut sessions: Vec<_> = list.iter().map(session_json).collect();
    let Some(cluster) = &state.cluster else {
        return HttpResponse::Ok().json(json!({ "sessions": sessions }));
    };
    let me = cluster.replica();
    for s in &mut sessions {
        s["replica"] = json!(me);
    }
    let mut replicas = vec![me.to_owned()];
    let others = cluster.all_sessions().await;
    for (replica, list) in others.iter().flatten() {
        if replica == me {
            continue;
        }
        replicas.push(replica.clone());
        for mut s in list.as_array().cloned().unwrap_or_default() {
            s["replica"] = json!(replica);
            sessions.push(s);
        }
    }
    replicas.sort();
    HttpResponse::Ok().json(json!({
        "sessions": sessions,
        "replicas": replicas,
        "cluster": {
            "replica": me,
            "redis": if others.is_some() { "up" } else { "down: showing this replica only" },
        },
    }))
}

/// `GET /admin/clients`: every client key by name (never the key), its
/// limits, and what it used on this replica (`/metrics` has the same
/// counters, for summing over replicas).
async fn clients(
    req: HttpRequest,
    state: web::Data<AdminState>,
    app: web::Data<crate::http::AppState>,
) -> HttpResponse {
    if let Some(resp) = state.refuse(&req) {
        return resp;
    }
    let used = usage_by_client();
    let catalog = app.catalog();
    let list: Vec<_> = catalog
        .auth
        .clients()
        .map(|c| {
            let mut models: Option<Vec<&String>> = c.models.as_ref().map(|m| m.iter().collect());
            if let Some(m) = &mut models {
                m.sort();
            }
            let mut v = json!({
                "name": &*c.name,
                "limits": {
                    "rpm": c.rpm,
                    "tpm": c.tpm,
                    "max_concurrency": c.max_concurrency,
                    "models": models,
                },
                "requests": 0, "tokens_in": 0, "tokens_out": 0, "refused": {},
            });
            if let Some(u) = used.get(&*c.name) {
                v["requests"] = json!(u.requests);
                v["tokens_in"] = json!(u.tokens_in);
                v["tokens_out"] = json!(u.tokens_out);
                v["refused"] = json!(u.refused);
            }
            v
        })
        .collect();
    HttpResponse::Ok().json(json!({ "clients": list }))
}

#[derive(Default)]
struct Used {
    requests: u64,
    tokens_in: u64,
    tokens_out: u64,
    refused: std::collections::BTreeMap<String, u64>,
}

/// This replica's counters per client key name, read off the metrics.
fn usage_by_client() -> std::collections::HashMap<String, Used> {
    use prometheus::core::Collector as _;
    let mut out: std::collections::HashMap<String, Used> = Default::default();
    let Some(m) = crate::metrics::get() else {
        return out;
    };
    let label = |metric: &prometheus::proto::Metric, name: &str| {
        metric
            .get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    let each = |vec: &prometheus::IntCounterVec,
                f: &mut dyn FnMut(&prometheus::proto::Metric, u64)| {
        for family in vec.collect() {
            for metric in family.get_metric() {
                f(metric, metric.get_counter().get_value() as u64);
            }
        }
    };
    each(&m.client_requests, &mut |metric, n| {
        out.entry(label(metric, "client")).or_default().requests += n;
    });
    each(&m.client_tokens, &mut |metric, n| {
        let u = out.entry(label(metric, "client")).or_default();
        if label(metric, "direction") == "in" {
            u.tokens_in += n;
        } else {
            u.tokens_out += n;
        }
    });
    each(&m.client_refused, &mut |metric, n| {
        *out.entry(label(metric, "client"))
            .or_default()
            .refused
            .entry(label(metric, "limit"))
            .or_default() += n;
    });
    out
}

/// The newest events `/admin/restarts` reads from the cluster's stream.
const CLUSTER_RESTARTS: usize = 1000;

#[derive(Deserialize)]
struct RestartQuery {
    pool: Option<String>,
    session: Option<String>,
    /// A duration like `1h` or `15m`.
    since: Option<String>,
}

async fn restarts(
    req: HttpRequest,
    q: web::Query<RestartQuery>,
    state: web::Data<AdminState>,
) -> HttpResponse {
    if let Some(resp) = state.refuse(&req) {
        return resp;
    }
    let since = match q.since.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => SystemTime::now().checked_sub(d),
        Some(Err(e)) => {
            return HttpResponse::BadRequest().json(json!({
                "error": {"message": format!("since: {e} (use e.g. 15m, 1h)"), "type": "invalid_request_error", "param": "since"}
            }))
        }
    };
    // With a cluster, every replica's events from the shared stream (this
    // replica's own log when Redis does not answer).
    if let Some(cluster) = &state.cluster {
        if let Some(events) = cluster.restarts(CLUSTER_RESTARTS).await {
            let events: Vec<_> = events
                .into_iter()
                .filter(|e| {
                    let Ok(ev) = serde_json::from_value::<RestartEvent>(e.clone()) else {
                        return false;
                    };
                    q.pool.as_deref().is_none_or(|p| p == ev.pool)
                        && q.session.as_deref().is_none_or(|s| s == ev.session)
                        && since.is_none_or(|t| ev.at().is_some_and(|at| at >= t))
                })
                .collect();
            return HttpResponse::Ok().json(json!({ "events": events }));
        }
    }
    let Ok(events) = state.log.send(Recent).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let me = state.cluster.as_ref().map(|c| c.replica());
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| q.pool.as_deref().is_none_or(|p| p == e.pool))
        .filter(|e| q.session.as_deref().is_none_or(|s| s == e.session))
        .filter(|e| since.is_none_or(|t| e.at().is_some_and(|at| at >= t)))
        .map(|e| {
            let mut v = json!(e);
            if let Some(me) = me {
                v["replica"] = json!(me);
            }
            v
        })
        .collect();
    HttpResponse::Ok().json(json!({ "events": events }))
}

async fn reset(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AdminState>,
) -> HttpResponse {
    if let Some(resp) = state.refuse(&req) {
        return resp;
    }
    let (pool, session) = path.into_inner();
    match state
        .router
        .send(ResetSession {
            pool: pool.clone(),
            session: session.clone(),
        })
        .await
    {
        Ok(true) => {
            HttpResponse::Ok().json(json!({"reset": true, "pool": pool, "session": session}))
        }
        Ok(false) => HttpResponse::NotFound().json(json!({
            "error": {"message": format!("no session {pool}/{session}"), "type": "not_found_error"}
        })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

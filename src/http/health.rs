//! Liveness and readiness probes.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::actors::messages::Snapshot;
use crate::actors::SessionState;

/// `GET /`: says what answers here.
pub async fn root() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "troupe",
        "version": env!("CARGO_PKG_VERSION"),
        "openai": "/v1/chat/completions",
        "anthropic": "/v1/messages",
    }))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /metrics`: Prometheus text format, behind `server.metrics_key` when
/// one is set.
pub async fn metrics(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if state.catalog().metrics_auth.check(&req).is_err() {
        return HttpResponse::Unauthorized()
            .content_type("text/plain")
            .body("metrics need Authorization: Bearer <server.metrics_key>\n");
    }
    let Some(m) = crate::metrics::get() else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    if let Ok(sessions) = state.dispatcher.router.send(Snapshot).await {
        m.sessions.reset();
        for s in &sessions {
            let name = if s.state == SessionState::Ready && s.in_flight >= s.max_concurrency {
                "busy"
            } else {
                s.state.name()
            };
            m.sessions.with_label_values(&[&s.pool, name]).inc();
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.render())
}

/// `GET /readyz`: every configured model has at least one ready session.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let sessions = match state.dispatcher.router.send(Snapshot).await {
        Ok(s) => s,
        Err(_) => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({"status": "not_ready", "reason": "router unavailable"}))
        }
    };
    let catalog = state.catalog();
    let mut ready: BTreeMap<&str, usize> =
        catalog.models.iter().map(|m| (m.id.as_str(), 0)).collect();
    for s in &sessions {
        if s.state == SessionState::Ready {
            for m in &s.models {
                if let Some(n) = ready.get_mut(&**m) {
                    *n += 1;
                }
            }
        }
    }
    let missing: Vec<&str> = ready
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(m, _)| *m)
        .collect();
    let mut body = json!({
        "status": if missing.is_empty() { "ready" } else { "not_ready" },
        "ready_sessions": ready,
        "models_without_sessions": missing,
    });
    // A replica without Redis still serves (on its own state): it stays
    // ready, and says so.
    if let Some(c) = state.store.cluster() {
        body["cluster"] = json!({
            "replica": c.replica(),
            "redis": if c.is_up() { "up" } else { "down: using this replica's own state" },
        });
    }
    if missing.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

//! `/admin/events`: the dashboard's live feed. Each connected viewer is an
//! actor: it subscribes to the restart log's events as they are written and
//! sends the session table whenever it changes.

use std::time::Duration;

use actix::prelude::*;
use actix_web_actors::ws;
use serde_json::json;

use super::session_json;
use crate::actors::messages::Snapshot;
use crate::actors::restart_log::{Push, Recent, RestartLog, Subscribe};
use crate::actors::router::Router;

/// How often a viewer looks for session changes, and pings its browser.
const TICK: Duration = Duration::from_millis(500);
const PING_EVERY: u32 = 20;

/// One browser watching the dashboard.
pub struct Viewer {
    router: Addr<Router>,
    log: Addr<RestartLog>,
    last_sessions: String,
    ticks: u32,
}

impl Viewer {
    pub fn new(router: Addr<Router>, log: Addr<RestartLog>) -> Self {
        Viewer {
            router,
            log,
            last_sessions: String::new(),
            ticks: 0,
        }
    }

    fn refresh_sessions(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let router = self.router.clone();
        ctx.spawn(
            async move { router.send(Snapshot).await.ok() }
                .into_actor(self)
                .map(|snap, act, ctx| {
                    let Some(list) = snap else { return };
                    let text = json!({
                        "type": "sessions",
                        "sessions": list.iter().map(session_json).collect::<Vec<_>>()
                    })
                    .to_string();
                    // Cool-down countdowns change every tick; send only real changes
                    // plus a refresh every few seconds.
                    if text != act.last_sessions || act.ticks % 4 == 0 {
                        ctx.text(text.clone());
                        act.last_sessions = text;
                    }
                }),
        );
    }
}

impl Actor for Viewer {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // History first, then live events.
        let log = self.log.clone();
        ctx.wait(
            async move { log.send(Recent).await.ok() }
                .into_actor(self)
                .map(|events, _act, ctx| {
                    for e in events.unwrap_or_default().iter().rev().take(200).rev() {
                        if let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(e) {
                            fields.insert("type".into(), json!("event"));
                            ctx.text(serde_json::Value::Object(fields).to_string());
                        }
                    }
                }),
        );
        self.log.do_send(Subscribe(ctx.address().recipient()));
        self.refresh_sessions(ctx);
        ctx.run_interval(TICK, |act, ctx| {
            act.ticks = act.ticks.wrapping_add(1);
            if act.ticks % PING_EVERY == 0 {
                ctx.ping(b"");
            }
            act.refresh_sessions(ctx);
        });
    }
}

impl Handler<Push> for Viewer {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        ctx.text(&*msg.0);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Viewer {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(_) => ctx.stop(),
            Ok(_) => {}
        }
    }
}

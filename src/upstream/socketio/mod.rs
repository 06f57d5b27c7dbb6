//! The `socketio` upstream: web-chat backends that start a run over HTTP and
//! push its answer as socket.io events, with anonymous accounts. The
//! `langfast` preset is one such backend: Supabase-style sign-up
//! (`/auth/v1/signup`), runs started with
//! `/functions/v1/initiate-prompt-run`, answers as `execution:chunk` events
//! whose `content` is the whole text so far.
//!
//! Each session is one anonymous account and one long-lived socket.io
//! connection, opened in `establish` with the account's token. Several runs
//! share the socket; [`client`] routes events to them by execution id. The
//! socket going away is fatal to the session: its supervisor restarts it,
//! which reconnects (and signs up again only when the account expired).

pub(crate) mod config;

pub mod client;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde_json::{json, Value};

use self::client::{Connection, Endpoint, EventNames};
use super::http::{extra_headers, send_checked};
use super::{EventSink, Upstream, UpstreamContext};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, Role, StopReason, UpstreamError};
use crate::support::sync::lock;

/// The presets this kind knows.
pub const PRESETS: &[&str] = &["langfast"];
/// The Engine.IO path when none is configured.
pub const DEFAULT_SOCKET_PATH: &str = "/socket.io/";
/// The event langfast sends answer text on, the `langfast` preset's default.
pub const LANGFAST_CHUNK_EVENT: &str = "execution:chunk";
/// The event langfast may send when a run is over, the preset's default.
pub const LANGFAST_FINISH_EVENT: &str = "completion_finished";
/// An account this close to expiry is treated as expired, so a restarted
/// session does not reconnect with a token about to die. Small, because
/// the session refreshes well ahead of expiry anyway.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// State changes one run may see; far above any real answer, it only
/// bounds a misbehaving upstream.
const MAX_UPDATES: usize = 1_000_000;

/// One anonymous account.
#[derive(Debug, Clone, PartialEq)]
struct Account {
    access_token: String,
    refresh_token: Option<String>,
    user_id: String,
    expires: Option<SystemTime>,
}

impl Account {
    fn valid(&self) -> bool {
        self.expires
            .is_none_or(|e| e > SystemTime::now() + EXPIRY_MARGIN)
    }

    /// Reads a Supabase auth reply (`/signup` or `/token`): the session may
    /// be at the top level or under `session`.
    fn from_reply(v: &Value) -> Result<Self, UpstreamError> {
        let session = if v.get("access_token").is_some() {
            v
        } else {
            v.get("session").unwrap_or(v)
        };
        let access_token = session
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                UpstreamError::new(ErrorKind::Protocol, "sign-up reply has no access_token")
            })?;
        let user_id = session
            .get("user")
            .or_else(|| v.get("user"))
            .and_then(|u| u.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                UpstreamError::new(ErrorKind::Protocol, "sign-up reply has no user.id")
            })?;
        let expires = session
            .get("expires_at")
            .and_then(Value::as_f64)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .or_else(|| {
                session
                    .get("expires_in")
                    .and_then(Value::as_f64)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .map(|d| SystemTime::now() + d)
            });
        Ok(Account {
            access_token: access_token.to_owned(),
            refresh_token: session
                .get("refresh_token")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            user_id: user_id.to_owned(),
            expires,
        })
    }
}

/// One session of a `socketio` pool: an account and its socket.
pub struct SocketIo {
    http: reqwest::Client,
    supabase: String,
    anon_key: String,
    socket_url: String,
    socket_path: String,
    prompt_id: String,
    events: EventNames,
    headers: HeaderMap,
    account: Mutex<Option<Account>>,
    conn: Mutex<Option<Arc<Connection>>>,
}

impl SocketIo {
    pub fn new(ctx: &UpstreamContext<'_>) -> Result<Self, String> {
        let pool = ctx.pool;
        let own: config::Settings = pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        let langfast = own.preset.as_deref() == Some("langfast");
        let need = |v: &Option<String>, key: &str| {
            v.clone()
                .ok_or_else(|| format!("the socketio kind needs {key}"))
        };
        let chunk = match (&own.chunk_event, langfast) {
            (Some(c), _) => c.clone(),
            (None, true) => LANGFAST_CHUNK_EVENT.to_owned(),
            (None, false) => return Err("the socketio kind needs chunk_event".into()),
        };
        let finish = own
            .finish_event
            .clone()
            .or_else(|| langfast.then(|| LANGFAST_FINISH_EVENT.to_owned()));
        Ok(SocketIo {
            http: ctx.http.rest().clone(),
            supabase: need(&own.supabase_url, "supabase_url")?
                .trim_end_matches('/')
                .to_owned(),
            anon_key: own
                .anon_key
                .as_ref()
                .ok_or("the socketio kind needs anon_key")?
                .expose()
                .to_owned(),
            socket_url: need(&own.socket_url, "socket_url")?,
            socket_path: own
                .socket_path
                .clone()
                .unwrap_or_else(|| DEFAULT_SOCKET_PATH.to_owned()),
            prompt_id: need(&own.prompt_id, "prompt_id")?,
            events: EventNames { chunk, finish },
            headers: extra_headers(&pool.headers)?,
            account: Mutex::new(None),
            conn: Mutex::new(None),
        })
    }

    fn current_account(&self) -> Option<Account> {
        lock(&self.account).clone()
    }

    fn current_conn(&self) -> Option<Arc<Connection>> {
        lock(&self.conn).clone()
    }

    /// A POST to the Supabase backend with the anon key and `bearer`.
    fn post(&self, path: &str, bearer: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.supabase))
            .headers(self.headers.clone())
            .header("apikey", &self.anon_key)
            .bearer_auth(bearer)
            .header(CONTENT_TYPE, "application/json")
    }

    async fn auth_call(&self, path: &str, body: Value) -> Result<Account, UpstreamError> {
        let resp = send_checked(self.post(path, &self.anon_key).json(&body)).await?;
        let v: Value = resp.json().await.map_err(|e| {
            UpstreamError::new(ErrorKind::Protocol, format!("bad sign-up reply: {e}"))
        })?;
        Account::from_reply(&v)
    }

    /// Signs up a fresh anonymous account.
    async fn sign_up(&self) -> Result<Account, UpstreamError> {
        let account = self.auth_call("/auth/v1/signup", json!({})).await?;
        tracing::info!(user = %account.user_id, "signed up an anonymous account");
        Ok(account)
    }

    async fn connect(&self, account: &Account) -> Result<Connection, UpstreamError> {
        let endpoint = Endpoint {
            url: self.socket_url.clone(),
            path: self.socket_path.clone(),
            auth: json!({ "token": account.access_token }),
        };
        Connection::connect(&endpoint, self.events.clone()).await
    }
}

/// The conversation as the upstream takes it: role and text.
fn messages(req: &ChatRequest) -> Vec<Value> {
    let mut out = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        out.push(json!({"role": "system", "content": system}));
    }
    for m in &req.messages {
        let role = match m.role {
            Role::System => "system",
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        out.push(json!({"role": role, "content": m.joined_text()}));
    }
    out
}

/// The execution id of a started run: the first job's id when the reply
/// lists jobs, else the run id.
fn execution_id(reply: &Value, run_id: &str) -> String {
    let as_id = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    reply
        .get("jobs")
        .and_then(Value::as_array)
        .and_then(|jobs| jobs.first())
        .and_then(|j| j.get("job_id").or_else(|| j.get("id")))
        .and_then(as_id)
        .or_else(|| reply.get("run_id").and_then(as_id))
        .unwrap_or_else(|| run_id.to_owned())
}

fn stop_reason(finish: &str) -> StopReason {
    match finish {
        "length" | "max_tokens" => StopReason::Length,
        "content_filter" => StopReason::ContentFilter,
        _ => StopReason::End,
    }
}

fn lost(reason: Option<String>) -> UpstreamError {
    UpstreamError::new(
        ErrorKind::SessionLost,
        format!(
            "socket.io connection lost: {}",
            reason.unwrap_or_else(|| "closed".to_owned())
        ),
    )
}

#[async_trait]
impl Upstream for SocketIo {
    async fn establish(&self) -> Result<(), UpstreamError> {
        // A restarted session never keeps its old socket.
        drop(lock(&self.conn).take());
        let cached = self.current_account().filter(Account::valid);
        let fresh = cached.is_none();
        let mut account = match cached {
            Some(a) => a,
            None => self.sign_up().await?,
        };
        *lock(&self.account) = Some(account.clone());
        let conn = match self.connect(&account).await {
            // A cached token the server no longer accepts: a new account.
            Err(e) if e.kind == ErrorKind::Auth && !fresh => {
                account = self.sign_up().await?;
                *lock(&self.account) = Some(account.clone());
                self.connect(&account).await?
            }
            other => other?,
        };
        *lock(&self.conn) = Some(Arc::new(conn));
        Ok(())
    }

    async fn refresh(&self) -> Result<bool, UpstreamError> {
        let old = self.current_account();
        if let Some(token) = old.as_ref().and_then(|a| a.refresh_token.clone()) {
            let renewed = self
                .auth_call(
                    "/auth/v1/token?grant_type=refresh_token",
                    json!({ "refresh_token": token }),
                )
                .await;
            match renewed {
                // The same user: the socket, authenticated as that user,
                // stays valid.
                Ok(a) if old.as_ref().is_some_and(|o| o.user_id == a.user_id) => {
                    *lock(&self.account) = Some(a);
                    return Ok(true);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "token refresh failed; signing up again"),
            }
        }
        let account = self.sign_up().await?;
        *lock(&self.account) = Some(account);
        // A new user: the socket was authenticated as the old one, so the
        // session restarts and reconnects with the new account.
        Err(UpstreamError::new(
            ErrorKind::SessionLost,
            "signed up a new anonymous account; reconnecting the socket with it",
        ))
    }

    fn expires_at(&self) -> Option<SystemTime> {
        self.current_account().and_then(|a| a.expires)
    }

    fn export_credentials(&self) -> Option<Value> {
        let a = self.current_account()?;
        let expires = a
            .expires
            .and_then(|e| e.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        Some(json!({
            "access_token": a.access_token,
            "refresh_token": a.refresh_token,
            "user_id": a.user_id,
            "expires_unix": expires,
        }))
    }

    /// Anonymous accounts sign up and rotate refresh tokens.
    fn shares_credentials(&self) -> bool {
        true
    }

    fn import_credentials(&self, cached: Value) -> bool {
        let (Some(token), Some(user)) = (
            cached.get("access_token").and_then(Value::as_str),
            cached.get("user_id").and_then(Value::as_str),
        ) else {
            return false;
        };
        let expires = cached
            .get("expires_unix")
            .and_then(Value::as_f64)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .and_then(|d| UNIX_EPOCH.checked_add(d));
        let account = Account {
            access_token: token.to_owned(),
            refresh_token: cached
                .get("refresh_token")
                .and_then(Value::as_str)
                .map(str::to_owned),
            user_id: user.to_owned(),
            expires,
        };
        if !account.valid() {
            return false;
        }
        *lock(&self.account) = Some(account);
        true
    }

    async fn lost(&self) -> String {
        let Some(conn) = self.current_conn() else {
            return std::future::pending().await;
        };
        let mut alive = conn.alive_watch();
        drop(conn);
        // An error means the connection task is gone: the socket too.
        let _ = alive.wait_for(|up| !*up).await;
        lost(self.current_conn().and_then(|c| c.down_reason())).message
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        let conn = self
            .current_conn()
            .filter(|c| c.is_alive())
            .ok_or_else(|| lost(self.current_conn().and_then(|c| c.down_reason())))?;
        let account = self
            .current_account()
            .ok_or_else(|| UpstreamError::new(ErrorKind::Auth, "no account signed up"))?;
        let run_id = uuid::Uuid::new_v4().to_string();
        // Subscribed before the run starts: an upstream that names the run
        // by its run id may send events before the HTTP reply.
        let by_run = conn
            .subscribe(&run_id)
            .ok_or_else(|| lost(conn.down_reason()))?;
        // Only model and messages: the upstream rejects sampling
        // parameters ("Unsupported parameter: 'temperature'").
        let body = json!({
            "run_id": run_id,
            "prompt_id": self.prompt_id,
            "prompt_meta": {
                "model": model,
                "messages": messages(req),
                "response_format": "text",
                "stream": true,
            },
            "test_cases": [],
            "created_by": account.user_id,
        });
        let resp = send_checked(
            self.post("/functions/v1/initiate-prompt-run", &account.access_token)
                .json(&body),
        )
        .await?;
        let reply: Value = resp.json().await.unwrap_or(Value::Null);
        let id = execution_id(&reply, &run_id);
        let mut sub = if id == run_id {
            by_run
        } else {
            drop(by_run);
            conn.subscribe(&id)
                .ok_or_else(|| lost(conn.down_reason()))?
        };
        sink.send(ChatEvent::Start {
            model: model.to_owned(),
        })
        .await?;
        let mut sent = String::new();
        let mut state = sub.current();
        for _ in 0..MAX_UPDATES {
            if !state.content.starts_with(&sent) {
                return Err(UpstreamError::new(
                    ErrorKind::Protocol,
                    "the upstream rewrote text it had already sent",
                ));
            }
            let suffix = &state.content[sent.len()..];
            if !suffix.is_empty() {
                sink.send(ChatEvent::TextDelta(suffix.to_owned())).await?;
                sent.clone_from(&state.content);
            }
            if let Some(finish) = &state.completed {
                sink.send(ChatEvent::Stop(stop_reason(finish))).await?;
                return Ok(());
            }
            state = match sub.changed().await {
                Some(s) => s,
                None => return Err(lost(conn.down_reason())),
            };
        }
        Err(UpstreamError::new(
            ErrorKind::Protocol,
            "the upstream sent too many updates for one answer",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_up_replies_parse_with_or_without_a_session_object() {
        let a = Account::from_reply(&json!({
            "access_token": "t", "refresh_token": "r", "expires_in": 3600,
            "user": {"id": "u"}
        }))
        .unwrap();
        assert_eq!((a.access_token.as_str(), a.user_id.as_str()), ("t", "u"));
        assert!(a.valid());
        let b = Account::from_reply(&json!({
            "user": {"id": "u2"},
            "session": {"access_token": "t2", "expires_at": 1}
        }))
        .unwrap();
        assert_eq!(b.user_id, "u2");
        assert!(!b.valid(), "expired in 1970");
        assert!(Account::from_reply(&json!({"user": {"id": "u"}})).is_err());
    }

    #[test]
    fn execution_ids_come_from_jobs_else_the_run() {
        assert_eq!(
            execution_id(&json!({"run_id": "r", "jobs": [{"job_id": "j"}]}), "r"),
            "j"
        );
        assert_eq!(execution_id(&json!({"run_id": "r"}), "x"), "r");
        assert_eq!(execution_id(&Value::Null, "x"), "x");
    }

    #[test]
    fn only_roles_and_text_go_upstream() {
        let req = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![crate::canonical::Message::text(Role::User, "hi")],
            ..Default::default()
        };
        assert_eq!(
            messages(&req),
            vec![
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "hi"})
            ]
        );
    }
}

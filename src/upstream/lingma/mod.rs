//! The `lingma` upstream: a Lingma-style local agent process per session,
//! spoken to over a WebSocket with LSP-framed JSON-RPC ([`rpc`]).
//!
//! Each session spawns its own agent in its own work directory
//! (`<work_dir>/<pool>/<session>`, default `data_dir/lingma/...`), after
//! unpacking the pool's login state there ([`bundle`]). The agent writes its
//! port to an info file; the session connects to it and keeps the socket.
//! The agent dying closes the socket, which is fatal to the session: the
//! supervisor restarts it, which spawns a fresh agent.
//!
//! A turn is a `chat/ask` *notification* (the agent never answers it; a
//! client that waits for a reply stalls), answered by `chat/answer`
//! notifications and ended by `chat/finish`. The agent keeps conversations
//! by `sessionId`: a turn that continues one sends only the newest user
//! message with `isReply: true`. Turns that offer tools never continue one,
//! since the tool instructions and results must travel with the
//! conversation; tools come from the session's tool layer ([`crate::upstream::text::tools`]).

pub(crate) mod config;

pub mod bundle;
pub mod rpc;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

use self::rpc::Connection;
use super::{EventSink, Place, Upstream, UpstreamContext};
use crate::canonical::{
    ChatEvent, ChatRequest, ContentPart, ErrorKind, Role, StopReason, UpstreamError,
};
use crate::support::sync::lock;

/// The info file's name when none is configured.
pub const DEFAULT_INFO_FILE: &str = ".info";
/// How long the agent gets to write its info file and accept the socket.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The `sessionType` values the agent knows.
pub const SESSION_TYPES: &[&str] = &["chat", "developer"];
/// How much of the agent's stderr is kept for error reasons.
const STDERR_TAIL: usize = 8 * 1024;
/// How often the info file is looked for while the agent starts.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Notifications one turn may see; far above any real answer, it only
/// bounds a misbehaving agent.
const MAX_NOTES: usize = 1_000_000;

/// Process groups of agents alive now, so they can all be killed when the
/// gateway exits, whatever state their sessions are in.
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Kills every agent process (group) still running: called when the
/// gateway stops, so no agent outlives it.
pub fn kill_all_agents() {
    let groups = std::mem::take(&mut *lock(&LIVE_GROUPS));
    for g in groups {
        crate::upstream::process::kill_group(g);
    }
}

/// A running agent: its process group is killed when this is dropped.
struct Agent {
    child: tokio::process::Child,
    pgid: Option<i32>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
}

impl Agent {
    fn stderr_tail(&self) -> String {
        let buf = lock(&self.stderr);
        let (a, b) = buf.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    /// How the process ended, if it has.
    fn exit(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// `what` with the exit status and stderr tail, for error reasons.
    fn describe(&mut self, what: &str) -> String {
        let mut out = what.to_owned();
        if let Some(status) = self.exit() {
            out.push_str(&format!(" (agent {status})"));
        }
        let tail = self.stderr_tail();
        if !tail.is_empty() {
            out.push_str(&format!("; agent stderr: {tail}"));
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(g) = self.pgid {
            crate::upstream::process::kill_group(g);
            lock(&LIVE_GROUPS).remove(&g);
        }
        let _ = self.child.start_kill();
    }
}

/// Settings of one pool, shared by its sessions.
#[derive(Debug, Clone)]
struct Settings {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    work_dir: PathBuf,
    info_file: String,
    ws_path: String,
    startup_timeout: Duration,
    session_type: String,
    mode: String,
    bundle: Option<String>,
    bundle_file: Option<PathBuf>,
    answer: Value,
}

/// One session of a `lingma` pool: one agent process and its socket.
pub struct Lingma {
    settings: Settings,
    agent: Mutex<Option<Agent>>,
    conn: Mutex<Option<Arc<Connection>>>,
    /// Agent sessions a turn left unfinished (cancelled, failed): the
    /// agent holds part of a turn the client never saw, so they are never
    /// continued.
    broken: Arc<Mutex<IdSet>>,
    /// Agent sessions the running agent started: a restarted agent does
    /// not know its predecessor's, so those are never continued either.
    started: Mutex<IdSet>,
}

/// A bounded set of agent session ids.
#[derive(Default)]
struct IdSet {
    set: std::collections::HashSet<String>,
    order: VecDeque<String>,
}

/// How many agent session ids a set keeps; older ones have long left the
/// session's conversation memory too.
const MAX_IDS: usize = 10_000;

impl IdSet {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// Marks a turn's agent session broken, and asks the agent to stop the
/// answer, unless the turn ended cleanly.
struct Unfinished {
    conn: Arc<Connection>,
    broken: Arc<Mutex<IdSet>>,
    session_id: String,
    request_id: String,
    done: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        lock(&self.broken).insert(self.session_id.clone());
        // Best effort: an agent that does not know it ignores a notification.
        let _ = self.conn.notify(
            "chat/stop",
            json!({"requestId": self.request_id, "sessionId": self.session_id}),
        );
    }
}

/// Keeps names usable as directory names whatever the configuration says.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot resolve {}: {e}", p.display()))
}

impl Lingma {
    pub fn new(ctx: &UpstreamContext<'_>, place: &Place<'_>) -> Result<Self, String> {
        let pool = ctx.pool;
        let own: config::Settings = pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        let binary = own
            .agent_binary
            .ok_or("the lingma kind needs agent_binary")?;
        // The agent runs in its work directory: relative paths given to it
        // (and a relative program path) must not change meaning there.
        let binary = if binary.components().count() > 1 {
            absolute(&binary)?
        } else {
            binary
        };
        let work_dir = absolute(
            &own.work_dir
                .unwrap_or_else(|| place.data_dir.join("lingma"))
                .join(sanitize(&pool.name))
                .join(sanitize(place.session)),
        )?;
        let fill = |s: &str| s.replace("{work_dir}", &work_dir.display().to_string());
        Ok(Lingma {
            settings: Settings {
                binary,
                args: own.agent_args.iter().map(|a| fill(a)).collect(),
                env: own
                    .agent_env
                    .iter()
                    .map(|(k, v)| (k.clone(), fill(v)))
                    .collect(),
                info_file: own
                    .info_file
                    .unwrap_or_else(|| DEFAULT_INFO_FILE.to_owned()),
                ws_path: match own.ws_path.as_deref() {
                    None | Some("") => "/".to_owned(),
                    Some(p) if p.starts_with('/') => p.to_owned(),
                    Some(p) => format!("/{p}"),
                },
                startup_timeout: own.startup_timeout.unwrap_or(DEFAULT_STARTUP_TIMEOUT),
                session_type: own.session_type.unwrap_or_else(|| "chat".to_owned()),
                mode: own.agent_mode.unwrap_or_else(|| "chat".to_owned()),
                bundle: own.session_bundle.as_ref().map(|s| s.expose().to_owned()),
                bundle_file: own.session_bundle_file,
                answer: own.agent_request_result.unwrap_or(Value::Null),
                work_dir,
            },
            agent: Mutex::new(None),
            conn: Mutex::new(None),
            broken: Arc::new(Mutex::new(IdSet::default())),
            started: Mutex::new(IdSet::default()),
        })
    }

    fn current_conn(&self) -> Option<Arc<Connection>> {
        lock(&self.conn).clone()
    }

    /// Why the agent is gone, with what it said on stderr.
    fn lost_reason(&self) -> String {
        let why = self
            .current_conn()
            .and_then(|c| c.down_reason())
            .unwrap_or_else(|| "not connected".to_owned());
        let what = format!("lingma agent connection lost: {why}");
        match lock(&self.agent).as_mut() {
            Some(agent) => agent.describe(&what),
            None => what,
        }
    }

    fn lost_error(&self) -> UpstreamError {
        UpstreamError::new(ErrorKind::SessionLost, self.lost_reason())
    }

    /// Unpacks the login state into the work directory.
    fn install_bundle(&self) -> Result<(), UpstreamError> {
        let s = &self.settings;
        let text = match (&s.bundle, &s.bundle_file) {
            (Some(b), _) => b.clone(),
            (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
                UpstreamError::new(
                    ErrorKind::Connect,
                    format!("cannot read session_bundle_file {}: {e}", file.display()),
                )
            })?,
            (None, None) => return Ok(()),
        };
        let refused = |e: bundle::BundleError| {
            UpstreamError::new(ErrorKind::Connect, format!("session bundle refused: {e}"))
        };
        let gz = bundle::decode(&text).map_err(refused)?;
        let n = bundle::extract(&gz, &s.work_dir).map_err(refused)?;
        tracing::info!(dir = %s.work_dir.display(), entries = n, "session bundle unpacked");
        Ok(())
    }

    /// Spawns the agent in its work directory.
    fn spawn(&self) -> Result<Agent, UpstreamError> {
        let s = &self.settings;
        let err = |m: String| UpstreamError::new(ErrorKind::Connect, m);
        bundle::create_private_dir(&s.work_dir).map_err(|e| {
            err(format!(
                "cannot create work dir {}: {e}",
                s.work_dir.display()
            ))
        })?;
        // A stale info file would point at a dead agent's port.
        let _ = std::fs::remove_file(s.work_dir.join(&s.info_file));
        self.install_bundle()?;
        let mut cmd = tokio::process::Command::new(&s.binary);
        cmd.args(&s.args)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&s.work_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            err(format!(
                "cannot start agent_binary {}: {e}",
                s.binary.display()
            ))
        })?;
        // With process_group(0) the group id is the child's pid.
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        if let Some(g) = pgid {
            lock(&LIVE_GROUPS).insert(g);
        }
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        if let Some(mut pipe) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Ends when the agent closes stderr (exits).
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut t = lock(&tail);
                    t.extend(&buf[..n]);
                    let extra = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..extra);
                }
            });
        }
        Ok(Agent {
            child,
            pgid,
            stderr,
        })
    }

    /// Waits (bounded) for the info file and reads the port from it.
    async fn read_port(&self, deadline: tokio::time::Instant) -> Result<u16, UpstreamError> {
        let path = self.settings.work_dir.join(&self.settings.info_file);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(port) = parse_info(&text) {
                    return Ok(port);
                }
            }
            if let Some(agent) = lock(&self.agent).as_mut() {
                if agent.exit().is_some() {
                    return Err(UpstreamError::new(
                        ErrorKind::Connect,
                        agent.describe("the agent exited before writing its info file"),
                    ));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let what = format!(
                    "no port in {} after {:?}",
                    path.display(),
                    self.settings.startup_timeout
                );
                let msg = match lock(&self.agent).as_mut() {
                    Some(a) => a.describe(&what),
                    None => what,
                };
                return Err(UpstreamError::new(ErrorKind::Connect, msg));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Lingma {
    /// Spawns the agent, waits for its port and connects to it.
    async fn start_agent(&self) -> Result<(), UpstreamError> {
        let agent = self.spawn()?;
        *lock(&self.agent) = Some(agent);
        let deadline = tokio::time::Instant::now() + self.settings.startup_timeout;
        let port = self.read_port(deadline).await?;
        let url = format!("ws://127.0.0.1:{port}{}", self.settings.ws_path);
        // The port may be written a moment before the agent listens.
        let conn = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(
                left,
                Connection::connect(&url, self.settings.answer.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::new(
                    ErrorKind::Connect,
                    format!("the agent's WebSocket {url} did not open in time"),
                ))
            });
            match attempt {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "agent not accepting yet");
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => {
                    let msg = match lock(&self.agent).as_mut() {
                        Some(a) => a.describe(&e.message),
                        None => e.message,
                    };
                    return Err(UpstreamError::new(ErrorKind::Connect, msg));
                }
            }
        };
        *lock(&self.conn) = Some(Arc::new(conn));
        tracing::info!(dir = %self.settings.work_dir.display(), port, "lingma agent connected");
        Ok(())
    }
}

/// Reads the agent's info file: JSON `{"port": 12345, "pid": 678}` (the
/// port may be a string), or `port=12345` / `port: 12345` lines.
pub fn parse_info(text: &str) -> Option<u16> {
    let text = text.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        let port = v.get("port")?;
        return match port {
            Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|p| *p != 0);
    }
    text.lines()
        .filter_map(|l| l.split_once('=').or_else(|| l.split_once(':')))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("port"))
        .and_then(|(_, v)| v.trim().trim_matches('"').parse::<u16>().ok())
        .filter(|p| *p != 0)
}

/// A message's text as the agent sees it. Tool calls and results never get
/// here: the tool layer has made them text ([`crate::upstream::text::tools`]).
fn message_text(m: &crate::canonical::Message) -> String {
    let texts: Vec<&str> = m
        .content
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    texts.join("\n")
}

/// The whole conversation as one prompt, for a turn that starts an agent
/// session: a lone user message goes as it is, anything more is labelled
/// by role.
pub fn flatten(req: &ChatRequest) -> String {
    let system = req.system.clone().unwrap_or_default();
    if system.is_empty() && req.messages.len() == 1 && req.messages[0].role == Role::User {
        return message_text(&req.messages[0]);
    }
    let mut out = String::new();
    if !system.is_empty() {
        out.push_str(&format!("System: {system}\n\n"));
    }
    for m in &req.messages {
        let role = match m.role {
            Role::System => "System",
            Role::User | Role::Tool => "User",
            Role::Assistant => "Assistant",
        };
        out.push_str(&format!("{role}: {}\n\n", message_text(m)));
    }
    out.trim_end().to_owned()
}

/// The newest user turn (with any tool results after the last answer).
fn newest_turn(req: &ChatRequest) -> String {
    let start = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .map_or(0, |i| i + 1);
    let parts: Vec<String> = req.messages[start..]
        .iter()
        .map(message_text)
        .filter(|t| !t.is_empty())
        .collect();
    parts.join("\n\n")
}

/// The text delta a `chat/answer` carries.
pub(crate) fn answer_text(params: &Value) -> Option<&str> {
    ["text", "content", "delta"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_str))
}

/// A tool event's call id, name and arguments (compact JSON text).
pub(crate) fn tool_event(params: &Value) -> Option<(Option<String>, String, String)> {
    let inner = params
        .get("toolCall")
        .or_else(|| params.get("tool"))
        .filter(|v| v.is_object())
        .unwrap_or(params);
    let name = ["name", "toolName", "tool"]
        .iter()
        .find_map(|k| inner.get(*k).and_then(Value::as_str))
        .filter(|n| !n.is_empty())?;
    let args = ["parameters", "params", "arguments", "input", "args"]
        .iter()
        .find_map(|k| inner.get(*k))
        .map(|v| match v {
            // Arguments given as JSON text stay as they are when they parse.
            Value::String(s) if serde_json::from_str::<Value>(s).is_ok_and(|p| p.is_object()) => {
                s.clone()
            }
            Value::Object(_) => v.to_string(),
            Value::Null => "{}".to_owned(),
            other => json!({ "value": other }).to_string(),
        })
        .unwrap_or_else(|| "{}".to_owned());
    let id = ["toolCallId", "callId", "id"]
        .iter()
        .find_map(|k| inner.get(*k).or_else(|| params.get(*k)))
        .and_then(|v| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    Some((id, name.to_owned(), args))
}

/// How a `chat/finish` ended the turn: `Err` with the agent's message when
/// it reports a failure.
pub(crate) fn finish_outcome(params: &Value) -> Result<StopReason, String> {
    let error = params
        .get("error")
        .filter(|e| !e.is_null())
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => other
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| other.to_string(), str::to_owned),
        });
    let status = params.get("statusCode").and_then(Value::as_u64);
    let reason = params
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(e) = error {
        return Err(e);
    }
    if status.is_some_and(|s| s != 200 && s != 0) || reason.eq_ignore_ascii_case("error") {
        return Err(format!(
            "the agent ended the answer with {}",
            if reason.is_empty() {
                format!("status {}", status.unwrap_or_default())
            } else {
                format!("reason `{reason}`")
            }
        ));
    }
    Ok(match reason {
        "length" | "max_tokens" => StopReason::Length,
        _ => StopReason::End,
    })
}

/// Streams a turn's answer from its subscription into `sink`.
struct Turn<'a> {
    sink: &'a EventSink,
    calls: u32,
    seen_ids: BTreeSet<String>,
    text_sent: bool,
}

impl Turn<'_> {
    async fn text(&mut self, t: &str) -> Result<(), UpstreamError> {
        if t.is_empty() {
            return Ok(());
        }
        self.text_sent = true;
        self.sink.send(ChatEvent::TextDelta(t.to_owned())).await
    }

    async fn call(
        &mut self,
        id: Option<String>,
        name: String,
        args: String,
    ) -> Result<(), UpstreamError> {
        if let Some(id) = &id {
            if !self.seen_ids.insert(id.clone()) {
                return Ok(());
            }
        }
        let index = self.calls;
        self.calls += 1;
        let id = format!("call_{}", uuid::Uuid::new_v4().simple());
        self.sink
            .send(ChatEvent::tool_call_start(index, id, name))
            .await?;
        self.sink
            .send(ChatEvent::ToolCallArgsDelta { index, json: args })
            .await
    }
}

#[async_trait]
impl Upstream for Lingma {
    async fn establish(&self) -> Result<(), UpstreamError> {
        // A restarted session never keeps its old agent or socket.
        drop(lock(&self.conn).take());
        drop(lock(&self.agent).take());
        *lock(&self.started) = IdSet::default();
        let result = self.start_agent().await;
        if result.is_err() {
            // No half-started agent lingers through the backoff.
            drop(lock(&self.agent).take());
        }
        result
    }

    async fn lost(&self) -> String {
        let Some(conn) = self.current_conn() else {
            return std::future::pending().await;
        };
        let mut alive = conn.alive_watch();
        drop(conn);
        // An error means the connection task is gone: the socket too.
        let _ = alive.wait_for(|up| !*up).await;
        // Give the exit status a moment to be known, for the reason.
        for _ in 0..10 {
            let exited = lock(&self.agent)
                .as_mut()
                .is_none_or(|a| a.exit().is_some());
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.lost_reason()
    }

    fn stateful(&self) -> bool {
        true
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        self.chat_turn(req, model, sink, None).await.map(|_| ())
    }

    async fn chat_turn(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
        handle: Option<&str>,
    ) -> Result<Option<String>, UpstreamError> {
        let conn = self
            .current_conn()
            .filter(|c| c.is_alive())
            .ok_or_else(|| self.lost_error())?;
        let handle = handle.filter(|h| {
            lock(&self.started).set.contains(*h) && !lock(&self.broken).set.contains(*h)
        });
        let (session_id, is_reply, content) = match handle {
            Some(h) => (h.to_owned(), true, newest_turn(req)),
            None => (uuid::Uuid::new_v4().to_string(), false, flatten(req)),
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut sub = conn
            .subscribe(&[&session_id, &request_id])
            .ok_or_else(|| self.lost_error())?;
        let mut params = json!({
            "requestId": request_id,
            "sessionId": session_id,
            "mode": self.settings.mode,
            "sessionType": self.settings.session_type,
            "stream": true,
            "source": 1,
            "isReply": is_reply,
            "content": content,
            "text": content,
        });
        if !model.is_empty() {
            params["modelKey"] = json!(model);
        }
        conn.notify("chat/ask", params)?;
        lock(&self.started).insert(session_id.clone());
        let mut unfinished = Unfinished {
            conn,
            broken: self.broken.clone(),
            session_id: session_id.clone(),
            request_id: request_id.clone(),
            done: false,
        };
        sink.send(ChatEvent::Start {
            model: req.model.clone(),
        })
        .await?;
        let mut turn = Turn {
            sink,
            calls: 0,
            seen_ids: BTreeSet::new(),
            text_sent: false,
        };
        for _ in 0..MAX_NOTES {
            let Some(note) = sub.next().await else {
                return Err(self.lost_error());
            };
            // Another turn's request on the same agent session is not ours.
            if let Some(r) = note.params.get("requestId").and_then(Value::as_str) {
                if r != request_id {
                    continue;
                }
            }
            match note.method.as_str() {
                "chat/answer" => {
                    if let Some(t) = answer_text(&note.params) {
                        turn.text(t).await?;
                    }
                }
                "tool/call/sync" | "tool/invoke" | "tool/invokeResult" => {
                    if let Some((id, name, args)) = tool_event(&note.params) {
                        turn.call(id, name, args).await?;
                    }
                }
                "chat/finish" => {
                    let stop = finish_outcome(&note.params).map_err(|e| {
                        UpstreamError::new(ErrorKind::Protocol, format!("lingma agent: {e}"))
                    })?;
                    // An agent that sends the answer only at the end.
                    if !turn.text_sent && turn.calls == 0 {
                        if let Some(full) = note.params.get("fullAnswer").and_then(Value::as_str) {
                            turn.text(full).await?;
                        }
                    }
                    let stop = if turn.calls > 0 {
                        StopReason::ToolUse
                    } else {
                        stop
                    };
                    sink.send(ChatEvent::Stop(stop)).await?;
                    unfinished.done = true;
                    return Ok(Some(session_id));
                }
                _ => {}
            }
        }
        Err(UpstreamError::new(
            ErrorKind::Protocol,
            "the agent sent too many notifications for one answer",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Message;

    #[test]
    fn info_files_in_both_formats() {
        assert_eq!(parse_info(r#"{"port": 12345, "pid": 678}"#), Some(12345));
        assert_eq!(parse_info(r#"{"port": "8080"}"#), Some(8080));
        assert_eq!(parse_info("pid=1\nport=4242\n"), Some(4242));
        assert_eq!(parse_info("port: 99"), Some(99));
        assert_eq!(parse_info(r#"{"port": 0}"#), None);
        assert_eq!(parse_info(r#"{"por"#), None);
        assert_eq!(parse_info(""), None);
    }

    #[test]
    fn first_turns_flatten_and_later_ones_send_the_newest() {
        let mut req = ChatRequest {
            messages: vec![Message::text(Role::User, "hi")],
            ..Default::default()
        };
        assert_eq!(flatten(&req), "hi");
        req.system = Some("be brief".into());
        req.messages.push(Message::text(Role::Assistant, "hello"));
        req.messages.push(Message::text(Role::User, "again"));
        let all = flatten(&req);
        assert!(all.starts_with("System: be brief"), "{all}");
        assert!(all.ends_with("User: again"), "{all}");
        assert_eq!(newest_turn(&req), "again");
    }

    #[test]
    fn tool_events_and_finishes_read_tolerantly() {
        let (id, name, args) = tool_event(&json!({"sessionId": "s", "toolCallId": "t1",
            "name": "read_file", "parameters": {"path": "a"}}))
        .unwrap();
        assert_eq!((id.as_deref(), name.as_str()), (Some("t1"), "read_file"));
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"path": "a"})
        );
        let (_, name, args) =
            tool_event(&json!({"toolCall": {"toolName": "x", "arguments": "{\"a\":1}"}})).unwrap();
        assert_eq!((name.as_str(), args.as_str()), ("x", "{\"a\":1}"));
        assert!(tool_event(&json!({"sessionId": "s"})).is_none());
        assert_eq!(
            finish_outcome(&json!({"sessionId": "s"})),
            Ok(StopReason::End)
        );
        assert!(finish_outcome(&json!({"error": {"message": "quota"}}))
            .unwrap_err()
            .contains("quota"));
        assert!(finish_outcome(&json!({"statusCode": 500})).is_err());
    }

    #[test]
    fn names_cannot_escape_the_work_dir() {
        assert_eq!(sanitize("../etc"), "_etc");
        assert_eq!(sanitize("pool-1"), "pool-1");
    }
}

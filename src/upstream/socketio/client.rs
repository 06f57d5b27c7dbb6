//! A small Engine.IO v4 + socket.io client over `tokio-tungstenite`, enough
//! for web-chat backends that push answers as socket.io events: the
//! websocket transport only, the default namespace, auth on CONNECT, pings
//! answered, events routed to the run they belong to.
//!
//! One connection is one tokio task that owns the websocket. Runs subscribe
//! by execution id; the task keeps, per subscriber, only the latest state
//! of its answer (the upstreams this serves send the whole text so far in
//! every event), so a slow client never blocks the other runs sharing the
//! socket and nothing grows without bound. Dropping the [`Connection`] ends
//! the task and closes the socket; dropping a [`Subscription`] removes its
//! route. Nothing outlives its owner: that is what keeps a pool that
//! reconnects all day free of leaked sockets and tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::canonical::{ErrorKind, UpstreamError};
use crate::support::sync::lock;

/// How long connecting, the Engine.IO open and the socket.io CONNECT may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a close frame may take to go out when the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Events for execution ids nobody has subscribed to yet are kept this many
/// at most: a run learns its job id only from the HTTP reply that started
/// it, and the first events may arrive before that reply.
const MAX_ORPHANS: usize = 256;
/// Messages read before the handshake must be over.
const MAX_HANDSHAKE_MESSAGES: usize = 64;
/// The largest message accepted from the upstream.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http(s)://` or `ws(s)://` origin of the socket.io server.
    pub url: String,
    /// The Engine.IO path, `/socket.io/` by default.
    pub path: String,
    /// The CONNECT packet's auth payload (`{"token": ...}`).
    pub auth: Value,
}

impl Endpoint {
    /// The websocket URL of the Engine.IO v4 websocket transport.
    pub fn ws_url(&self) -> Result<String, UpstreamError> {
        let base = self.url.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if base.starts_with("ws://") || base.starts_with("wss://") {
            base.to_owned()
        } else {
            return Err(UpstreamError::new(
                ErrorKind::Connect,
                format!("socket_url `{}` is not an http(s) or ws(s) URL", self.url),
            ));
        };
        let path = self.path.trim_matches('/');
        Ok(format!("{base}/{path}/?EIO=4&transport=websocket"))
    }
}

/// What a run knows of its answer so far, as the socket told it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunState {
    /// The whole text so far.
    pub content: String,
    /// Set when the upstream said the answer is complete, with its
    /// `finish_reason` (empty when it gave none).
    pub completed: Option<String>,
}

impl RunState {
    /// Folds one chunk event in. An event whose content is a prefix of what
    /// is already known arrived late and changes nothing.
    fn apply_chunk(&mut self, payload: &Value) {
        if let Some(content) = payload.get("content").and_then(Value::as_str) {
            if !self.content.starts_with(content) {
                self.content = content.to_owned();
            }
        }
        if payload.get("status").and_then(Value::as_str) == Some("completed") {
            let reason = payload
                .get("finish_reason")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.completed = Some(reason.to_owned());
        }
    }

    fn apply_finish(&mut self) {
        if self.completed.is_none() {
            self.completed = Some(String::new());
        }
    }
}

/// Which events carry what.
#[derive(Debug, Clone)]
pub struct EventNames {
    /// The event carrying `{executionId, status, finish_reason, content}`.
    pub chunk: String,
    /// An event that ends a run, if the upstream sends one.
    pub finish: Option<String>,
}

/// Routes of one connection: execution id → the run's latest state.
#[derive(Default)]
pub(crate) struct Routes {
    subscribers: HashMap<String, watch::Sender<RunState>>,
    orphans: HashMap<String, RunState>,
    /// Orphan ids, oldest first, to evict past [`MAX_ORPHANS`].
    orphan_order: VecDeque<String>,
}

impl Routes {
    fn deliver(&mut self, id: &str, f: impl Fn(&mut RunState)) {
        if let Some(tx) = self.subscribers.get(id) {
            tx.send_modify(|s| f(s));
            return;
        }
        if !self.orphans.contains_key(id) {
            while self.orphan_order.len() >= MAX_ORPHANS {
                if let Some(old) = self.orphan_order.pop_front() {
                    self.orphans.remove(&old);
                }
            }
            self.orphan_order.push_back(id.to_owned());
        }
        f(self.orphans.entry(id.to_owned()).or_default());
    }
}

/// One live socket.io connection. Dropping it closes the socket.
pub struct Connection {
    routes: Arc<Mutex<Routes>>,
    /// `true` while the socket is up; the sender lives in the task.
    alive: watch::Receiver<bool>,
    /// Dropped with the connection, which tells the task to close.
    _shutdown: oneshot::Sender<()>,
    /// Why the socket went down, once it has.
    reason: Arc<Mutex<Option<String>>>,
}

/// A run's view of the socket: the state of one execution id. Dropping it
/// removes the route.
pub struct Subscription {
    id: String,
    routes: Arc<Mutex<Routes>>,
    rx: watch::Receiver<RunState>,
}

impl Subscription {
    /// Waits for the run's state to change; `None` when the socket is gone.
    pub async fn changed(&mut self) -> Option<RunState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// The state now, without waiting.
    pub fn current(&mut self) -> RunState {
        self.rx.borrow_and_update().clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        routes.subscribers.remove(&self.id);
        routes.orphans.remove(&self.id);
    }
}

fn connect_error(message: impl Into<String>) -> UpstreamError {
    UpstreamError::new(ErrorKind::Connect, message)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Connection {
    /// Connects, waits for the Engine.IO open packet, sends the socket.io
    /// CONNECT with `auth` and waits for the server to accept it. A refused
    /// CONNECT is an [`ErrorKind::Auth`] error.
    pub async fn connect(endpoint: &Endpoint, events: EventNames) -> Result<Self, UpstreamError> {
        let url = endpoint.ws_url()?;
        let (mut ws, ping_every) = tokio::time::timeout(CONNECT_TIMEOUT, handshake(&url, endpoint))
            .await
            .map_err(|_| {
                UpstreamError::new(ErrorKind::Timeout, "socket.io handshake timed out")
            })??;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (alive_tx, alive) = watch::channel(true);
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let reason = Arc::new(Mutex::new(None));
        let task_routes = routes.clone();
        let task_reason = reason.clone();
        tokio::spawn(async move {
            let why = loop {
                let next = tokio::select! {
                    _ = &mut stop => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                        break "connection closed by the gateway".to_owned();
                    }
                    next = tokio::time::timeout(ping_every, ws.next()) => next,
                };
                let msg = match next {
                    Err(_) => break "no ping from the server in time".to_owned(),
                    Ok(None) => break "the server closed the socket".to_owned(),
                    Ok(Some(Err(e))) => break format!("socket error: {e}"),
                    Ok(Some(Ok(m))) => m,
                };
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => break "the server closed the socket".to_owned(),
                    // Binary attachments and websocket pings need nothing
                    // from us (tungstenite answers pings itself).
                    _ => continue,
                };
                match handle_packet(text.as_str(), &events, &task_routes) {
                    Packet::Ping => {
                        if let Err(e) = ws.send(Message::text("3")).await {
                            break format!("cannot answer a ping: {e}");
                        }
                    }
                    Packet::Close(why) => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                        break why;
                    }
                    Packet::Other => {}
                }
            };
            tracing::debug!(reason = %why, "socket.io connection ended");
            *lock(&task_reason) = Some(why);
            // Dropping the senders tells every run on this socket that it
            // is gone.
            // Under the routes lock, so no run subscribes in between and
            // waits on a socket that is gone.
            let mut routes = lock(&task_routes);
            routes.subscribers.clear();
            routes.orphans.clear();
            routes.orphan_order.clear();
            let _ = alive_tx.send(false);
            drop(routes);
        });
        Ok(Connection {
            routes,
            alive,
            _shutdown: shutdown,
            reason,
        })
    }

    /// Whether the socket is still up.
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// A receiver that turns `false` (or closes) when the socket goes down.
    pub fn alive_watch(&self) -> watch::Receiver<bool> {
        self.alive.clone()
    }

    /// Why the socket went down, if it has.
    pub fn down_reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Starts routing the events of execution `id` to the returned
    /// subscription, including any that arrived before it. `None` when the
    /// socket is already down.
    pub fn subscribe(&self, id: &str) -> Option<Subscription> {
        let mut routes = lock(&self.routes);
        if !self.is_alive() {
            return None;
        }
        let initial = routes.orphans.remove(id).unwrap_or_default();
        routes.orphan_order.retain(|o| o != id);
        let (tx, rx) = watch::channel(initial.clone());
        // A fresh receiver has seen the initial value; mark it changed when
        // events are already waiting, so the run reads them at once.
        let mut rx = rx;
        if initial != RunState::default() {
            rx.mark_changed();
        }
        routes.subscribers.insert(id.to_owned(), tx);
        Some(Subscription {
            id: id.to_owned(),
            routes: self.routes.clone(),
            rx,
        })
    }

    /// Routes currently held (subscribers, orphans), for tests.
    #[cfg(test)]
    fn route_counts(&self) -> (usize, usize) {
        let routes = lock(&self.routes);
        (routes.subscribers.len(), routes.orphans.len())
    }
}

/// Opens the websocket and runs the Engine.IO open and socket.io CONNECT.
/// Returns the socket and how long to wait for the next server ping.
async fn handshake(url: &str, endpoint: &Endpoint) -> Result<(Ws, Duration), UpstreamError> {
    let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let status = resp.status().as_u16();
                let kind = if matches!(status, 401 | 403) {
                    ErrorKind::Auth
                } else {
                    ErrorKind::Connect
                };
                let mut err = UpstreamError::new(
                    kind,
                    format!("socket.io server refused the websocket ({status})"),
                );
                err.status = Some(status);
                err
            }
            other => connect_error(format!("cannot open the socket: {other}")),
        })?;
    let mut ping_every = None;
    let auth = serde_json::to_string(&endpoint.auth)
        .map_err(|e| connect_error(format!("cannot encode the auth payload: {e}")))?;
    for _ in 0..MAX_HANDSHAKE_MESSAGES {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| connect_error("the socket closed during the handshake"))?
            .map_err(|e| connect_error(format!("socket error during the handshake: {e}")))?;
        let Message::Text(text) = msg else {
            if let Message::Close(_) = msg {
                return Err(connect_error("the socket closed during the handshake"));
            }
            continue;
        };
        let text = text.as_str();
        if let Some(open) = text.strip_prefix('0') {
            let open: Value = serde_json::from_str(open)
                .map_err(|e| connect_error(format!("bad Engine.IO open packet: {e}")))?;
            let ms = |k: &str| open.get(k).and_then(Value::as_u64).unwrap_or(25_000);
            ping_every = Some(Duration::from_millis(
                ms("pingInterval") + ms("pingTimeout"),
            ));
            ws.send(Message::text(format!("40{auth}")))
                .await
                .map_err(|e| connect_error(format!("cannot send CONNECT: {e}")))?;
        } else if text == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| connect_error(format!("cannot answer a ping: {e}")))?;
        } else if text.starts_with("40") {
            let every = ping_every
                .ok_or_else(|| connect_error("socket.io CONNECT answered before the open"))?;
            return Ok((ws, every));
        } else if let Some(refusal) = text.strip_prefix("44") {
            let message = serde_json::from_str::<Value>(refusal)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| refusal.to_owned());
            let mut err = UpstreamError::new(
                ErrorKind::Auth,
                format!("socket.io server refused the connection: {message}"),
            );
            err.status = Some(401);
            return Err(err);
        } else if text.starts_with('1') || text.starts_with("41") {
            return Err(connect_error(
                "the server closed the socket during the handshake",
            ));
        }
    }
    Err(connect_error("no socket.io CONNECT answer"))
}

/// What the connection task must do after one packet.
#[derive(Debug, PartialEq)]
pub(crate) enum Packet {
    Ping,
    Close(String),
    Other,
}

/// Reads one Engine.IO packet, routing socket.io events.
pub(crate) fn handle_packet(text: &str, events: &EventNames, routes: &Mutex<Routes>) -> Packet {
    if text == "2" {
        return Packet::Ping;
    }
    if text.starts_with('1') {
        return Packet::Close("the server closed the Engine.IO session".to_owned());
    }
    if text.starts_with("41") {
        return Packet::Close("the server disconnected the socket".to_owned());
    }
    let Some(event) = text.strip_prefix("42") else {
        return Packet::Other;
    };
    // An ack id may precede the array; only the default namespace is used.
    let event = event.trim_start_matches(|c: char| c.is_ascii_digit());
    let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(event) else {
        return Packet::Other;
    };
    let (Some(name), payload) = (parts.first().and_then(Value::as_str), parts.get(1)) else {
        return Packet::Other;
    };
    let Some(payload) = payload else {
        return Packet::Other;
    };
    let id = payload
        .get("executionId")
        .or_else(|| payload.get("execution_id"))
        .or_else(|| payload.get("job_id"))
        .or_else(|| payload.get("run_id"))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let Some(id) = id else {
        return Packet::Other;
    };
    if name == events.chunk {
        lock(routes).deliver(&id, |s| s.apply_chunk(payload));
    } else if events.finish.as_deref() == Some(name) {
        lock(routes).deliver(&id, RunState::apply_finish);
    }
    Packet::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    fn names() -> EventNames {
        EventNames {
            chunk: "execution:chunk".into(),
            finish: Some("completion_finished".into()),
        }
    }

    #[test]
    fn urls_follow_the_engine_io_convention() {
        let ep = |url: &str| Endpoint {
            url: url.into(),
            path: "/socket.io/".into(),
            auth: json!({}),
        };
        assert_eq!(
            ep("http://127.0.0.1:9/").ws_url().unwrap(),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ep("https://h.example").ws_url().unwrap(),
            "wss://h.example/socket.io/?EIO=4&transport=websocket"
        );
        assert!(ep("ftp://x").ws_url().is_err());
    }

    #[test]
    fn packets_route_cumulative_chunks_by_execution_id() {
        let routes = Mutex::new(Routes::default());
        let n = names();
        assert_eq!(handle_packet("2", &n, &routes), Packet::Ping);
        assert!(matches!(handle_packet("41", &n, &routes), Packet::Close(_)));
        let ev = |id: &str, content: &str, status: &str| {
            format!(
                "42{}",
                json!(["execution:chunk", {"executionId": id, "status": status, "content": content, "finish_reason": null}])
            )
        };
        handle_packet(&ev("a", "Hel", "in_progress"), &n, &routes);
        handle_packet(&ev("a", "Hello", "in_progress"), &n, &routes);
        // A late, shorter event changes nothing.
        handle_packet(&ev("a", "Hel", "in_progress"), &n, &routes);
        handle_packet(&ev("b", "x", "completed"), &n, &routes);
        let r = lock(&routes);
        assert_eq!(r.orphans["a"].content, "Hello");
        assert_eq!(r.orphans["a"].completed, None);
        assert_eq!(r.orphans["b"].completed.as_deref(), Some(""));
    }

    #[test]
    fn orphans_are_bounded() {
        let mut routes = Routes::default();
        for i in 0..(MAX_ORPHANS * 3) {
            routes.deliver(&i.to_string(), RunState::apply_finish);
        }
        assert_eq!(routes.orphans.len(), MAX_ORPHANS);
        assert_eq!(routes.orphan_order.len(), MAX_ORPHANS);
    }

    /// A minimal socket.io server: open, CONNECT checked against `token`,
    /// then one chunk for execution `run-1` and silence until the client
    /// leaves.
    async fn serve(listener: TcpListener, token: &'static str) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let open = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
                if ws.send(Message::text(open)).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { break };
                    if let Some(auth) = t.as_str().strip_prefix("40") {
                        let ok = serde_json::from_str::<Value>(auth)
                            .ok()
                            .and_then(|v| {
                                v.get("token").and_then(Value::as_str).map(|s| s == token)
                            })
                            .unwrap_or(false);
                        if !ok {
                            let _ = ws.send(Message::text(r#"44{"message":"bad token"}"#)).await;
                            continue;
                        }
                        let _ = ws.send(Message::text(r#"40{"sid":"x"}"#)).await;
                        let chunk = json!(["execution:chunk", {"executionId": "run-1", "status": "completed", "content": "hi", "finish_reason": "stop"}]);
                        let _ = ws.send(Message::text(format!("42{chunk}"))).await;
                    }
                }
            });
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_route_events_refuse_bad_auth_and_leak_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener, "good"));
        let endpoint = |token: &str| Endpoint {
            url: format!("http://127.0.0.1:{port}"),
            path: "/socket.io/".into(),
            auth: json!({ "token": token }),
        };
        let refused = Connection::connect(&endpoint("bad"), names())
            .await
            .err()
            .unwrap();
        assert_eq!(refused.kind, ErrorKind::Auth);

        // Warm up, then measure from a settled start.
        drop(
            Connection::connect(&endpoint("good"), names())
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let metrics = tokio::runtime::Handle::current().metrics();
        let (fds0, tasks0) = (open_fds(), metrics.num_alive_tasks());
        for _ in 0..60 {
            let conn = Connection::connect(&endpoint("good"), names())
                .await
                .unwrap();
            let mut sub = conn.subscribe("run-1").unwrap();
            let mut state = sub.current();
            for _ in 0..50 {
                if state.completed.is_some() {
                    break;
                }
                state = match tokio::time::timeout(Duration::from_secs(5), sub.changed()).await {
                    Ok(Some(s)) => s,
                    other => panic!("no event: {other:?}"),
                };
            }
            assert_eq!(state.content, "hi");
            assert_eq!(state.completed.as_deref(), Some("stop"));
            drop(sub);
            assert_eq!(conn.route_counts(), (0, 0));
        }
        let mut settled = (usize::MAX, usize::MAX);
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            settled = (open_fds(), metrics.num_alive_tasks());
            if settled.0 <= fds0 + 2 && settled.1 <= tasks0 {
                break;
            }
        }
        assert!(settled.0 <= fds0 + 2, "fds {fds0} -> {}", settled.0);
        assert!(settled.1 <= tasks0, "tasks {tasks0} -> {}", settled.1);
        server.abort();
    }

    #[tokio::test]
    async fn a_dead_socket_ends_its_subscriptions() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, opens, accepts CONNECT, then drops the socket.
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let open = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
            ws.send(Message::text(open)).await.unwrap();
            let _ = ws.next().await;
            ws.send(Message::text(r#"40{"sid":"x"}"#)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(ws);
        });
        let ep = Endpoint {
            url: format!("ws://127.0.0.1:{port}"),
            path: "socket.io".into(),
            auth: json!({"token": "t"}),
        };
        let conn = Connection::connect(&ep, names()).await.unwrap();
        let mut sub = conn.subscribe("x").unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), sub.changed()).await;
        assert_eq!(end, Ok(None));
        assert!(!conn.is_alive());
        assert!(conn.down_reason().is_some());
        assert!(conn.subscribe("y").is_none());
        server.await.unwrap();
    }
}

//! JSON-RPC 2.0 with LSP framing (`Content-Length: N\r\n\r\n{json}`) over
//! one WebSocket to a Lingma agent.
//!
//! The agent frames every message the LSP way even inside WebSocket
//! messages, and a WebSocket message may carry several LSP messages or part
//! of one, so [`Decoder`] reassembles them from the byte stream whatever the
//! message boundaries.
//!
//! One connection is one tokio task that owns the socket. Turns subscribe
//! by their `sessionId` and `requestId` and receive the agent's
//! notifications for them; requests the agent makes of us (they carry an
//! `id`) are answered at once, since an agent waiting for its IDE stalls.
//! Dropping the [`Connection`] ends the task and closes the socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::canonical::{ErrorKind, UpstreamError};
use crate::support::sync::lock;

/// The largest LSP message (and WebSocket message) accepted.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// The largest LSP header block; real ones are a few dozen bytes.
const MAX_HEADER: usize = 4096;
/// How long a close frame may take to go out when the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames one JSON value the LSP way.
pub fn frame(v: &Value) -> String {
    let body = v.to_string();
    format!("Content-Length: {}\r\n\r\n{body}", body.len())
}

/// Reassembles LSP-framed messages from a byte stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes and returns every message now complete. A message that is
    /// not JSON is skipped (logged); a broken frame header is an error,
    /// since nothing after it can be trusted.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Value>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        // Each pass consumes one message or returns: bounded by the input.
        loop {
            let start = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if self.buf.is_empty() {
                return Ok(out);
            }
            // Tolerate a peer that sends bare JSON without a header.
            if self.buf[0] == b'{' || self.buf[0] == b'[' {
                let mut stream =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match stream.next() {
                    Some(Ok(v)) => {
                        let used = stream.byte_offset();
                        self.buf.drain(..used);
                        out.push(v);
                        continue;
                    }
                    Some(Err(e)) if e.is_eof() => return self.check_size(out),
                    Some(Err(e)) => return Err(format!("bad JSON-RPC message: {e}")),
                    None => return Ok(out),
                }
            }
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                if self.buf.len() > MAX_HEADER {
                    return Err("LSP header too long".into());
                }
                return Ok(out);
            };
            let header = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            let mut len = None;
            for line in header.split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse::<usize>().ok();
                    }
                }
            }
            let len =
                len.ok_or_else(|| format!("LSP header without Content-Length: {header:?}"))?;
            if len > MAX_MESSAGE {
                return Err(format!("LSP message of {len} bytes is over the limit"));
            }
            let body_start = end + 4;
            if self.buf.len() < body_start + len {
                return Ok(out);
            }
            let body: Vec<u8> = self
                .buf
                .drain(..body_start + len)
                .skip(body_start)
                .collect();
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a JSON-RPC message that is not JSON")
                }
            }
        }
    }

    fn check_size(&self, out: Vec<Value>) -> Result<Vec<Value>, String> {
        if self.buf.len() > MAX_MESSAGE {
            return Err("JSON-RPC message over the limit".into());
        }
        Ok(out)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A notification from the agent for one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub method: String,
    pub params: Value,
}

/// Routes by `sessionId` / `requestId` to the turns waiting for them.
#[derive(Default)]
struct Routes {
    next: u64,
    /// Key (session or request id) → subscription number.
    keys: HashMap<String, u64>,
    subs: HashMap<u64, mpsc::Sender<Note>>,
}

/// Notifications a turn may have waiting: beyond it the connection stops
/// reading the agent until the turn (its client) catches up, the same
/// backpressure every other kind has.
const NOTE_MAILBOX: usize = 64;
/// Frames waiting to be written to the agent.
const OUT_MAILBOX: usize = 64;

/// One WebSocket to an agent.
pub struct Connection {
    out: mpsc::Sender<String>,
    routes: Arc<Mutex<Routes>>,
    alive: watch::Receiver<bool>,
    reason: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The task closes the socket when the sender goes; abort is the
        // backstop should it be stuck on a write.
        let task = self.task.abort_handle();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(CLOSE_TIMEOUT).await;
                    task.abort();
                });
            }
            // Dropped after the runtime is gone (the gateway is stopping):
            // there is no socket left to close gracefully.
            Err(_) => task.abort(),
        }
    }
}

/// A turn's view of the connection: the agent's notifications for it.
/// Dropping it removes its routes.
pub struct Subscription {
    id: u64,
    routes: Arc<Mutex<Routes>>,
    rx: mpsc::Receiver<Note>,
}

impl Subscription {
    /// The next notification; `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<Note> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut r = lock(&self.routes);
        r.subs.remove(&self.id);
        let id = self.id;
        r.keys.retain(|_, v| *v != id);
    }
}

/// The key a notification is routed by: its session id, else request id.
pub(crate) fn route_keys(params: &Value) -> Vec<String> {
    let as_key = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    ["sessionId", "requestId"]
        .iter()
        .filter_map(|k| params.get(*k).and_then(as_key))
        .collect()
}

impl Connection {
    /// Connects to `url` (ws://127.0.0.1:PORT/path). `answer` is the result
    /// given to every request the agent makes of us.
    pub async fn connect(url: &str, answer: Value) -> Result<Self, UpstreamError> {
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        config.max_message_size = Some(MAX_MESSAGE);
        config.max_frame_size = Some(MAX_MESSAGE);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .map_err(|e| {
                UpstreamError::new(
                    ErrorKind::Connect,
                    format!("cannot open the agent's WebSocket {url}: {e}"),
                )
            })?;
        let (out_tx, out_rx) = mpsc::channel(OUT_MAILBOX);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (alive_tx, alive) = watch::channel(true);
        let reason = Arc::new(Mutex::new(None));
        let task = tokio::spawn(run(
            ws,
            out_rx,
            out_tx.clone(),
            routes.clone(),
            alive_tx,
            reason.clone(),
            answer,
        ));
        Ok(Connection {
            out: out_tx,
            routes,
            alive,
            reason,
            task,
        })
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    pub fn alive_watch(&self) -> watch::Receiver<bool> {
        self.alive.clone()
    }

    /// Why the connection went down, if it has.
    pub fn down_reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Routes notifications carrying any of `keys` to the subscription.
    /// `None` when the connection is down.
    pub fn subscribe(&self, keys: &[&str]) -> Option<Subscription> {
        let mut r = lock(&self.routes);
        if !self.is_alive() {
            return None;
        }
        r.next += 1;
        let id = r.next;
        let (tx, rx) = mpsc::channel(NOTE_MAILBOX);
        r.subs.insert(id, tx);
        for k in keys {
            r.keys.insert((*k).to_owned(), id);
        }
        Some(Subscription {
            id,
            routes: self.routes.clone(),
            rx,
        })
    }

    /// Sends a notification (no `id`: no reply is awaited).
    pub fn notify(&self, method: &str, params: Value) -> Result<(), UpstreamError> {
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params});
        self.out.try_send(frame(&msg)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => UpstreamError::new(
                ErrorKind::Unavailable,
                "the agent is not reading what the gateway writes",
            ),
            mpsc::error::TrySendError::Closed(_) => UpstreamError::new(
                ErrorKind::SessionLost,
                format!(
                    "agent connection lost: {}",
                    self.down_reason().unwrap_or_else(|| "closed".into())
                ),
            ),
        })
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The connection task: writes what turns send, reads and routes what the
/// agent sends, until either side closes.
async fn run(
    mut ws: Ws,
    mut out_rx: mpsc::Receiver<String>,
    out_tx: mpsc::Sender<String>,
    routes: Arc<Mutex<Routes>>,
    alive: watch::Sender<bool>,
    reason: Arc<Mutex<Option<String>>>,
    answer: Value,
) {
    // The task holds a sender for answers to the agent's requests; the
    // connection dropping its own is what ends the task.
    let replies = out_tx.downgrade();
    drop(out_tx);
    let mut decoder = Decoder::default();
    let why = loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(text) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break format!("cannot write to the agent: {e}");
                    }
                }
                None => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                    break "connection closed by the gateway".to_owned();
                }
            },
            msg = ws.next() => {
                let bytes = match msg {
                    None => break "the agent closed the connection".to_owned(),
                    Some(Err(e)) => break format!("agent connection error: {e}"),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Close(_))) => break "the agent closed the connection".to_owned(),
                    Some(Ok(_)) => continue,
                };
                let msgs = match decoder.feed(&bytes) {
                    Ok(m) => m,
                    Err(e) => break format!("agent broke the framing: {e}"),
                };
                for m in msgs {
                    handle(m, &routes, &replies, &answer).await;
                }
            }
        }
    };
    *lock(&reason) = Some(why);
    // Closing every route ends the turns waiting on them.
    {
        let mut r = lock(&routes);
        r.subs.clear();
        r.keys.clear();
    }
    let _ = alive.send(false);
}

/// Acts on one message from the agent (a batch is its messages in turn).
async fn handle(
    m: Value,
    routes: &Mutex<Routes>,
    replies: &mpsc::WeakSender<String>,
    answer: &Value,
) {
    match m {
        Value::Array(batch) => {
            for one in batch {
                handle_one(one, routes, replies, answer).await;
            }
        }
        one => handle_one(one, routes, replies, answer).await,
    }
}

async fn handle_one(
    m: Value,
    routes: &Mutex<Routes>,
    replies: &mpsc::WeakSender<String>,
    answer: &Value,
) {
    let method = m.get("method").and_then(Value::as_str);
    let id = m.get("id").filter(|v| !v.is_null());
    let Some(method) = method else {
        // A response to something we sent: we send only notifications.
        return;
    };
    if let Some(id) = id {
        // A request of ours to answer, so the agent does not stall.
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": answer});
        if let Some(tx) = replies.upgrade() {
            // Not awaited: this task is the one that empties the queue.
            let _ = tx.try_send(frame(&reply));
        }
    }
    let params = m.get("params").cloned().unwrap_or(Value::Null);
    let sub = {
        let r = lock(routes);
        route_keys(&params)
            .iter()
            .find_map(|k| r.keys.get(k))
            .and_then(|id| r.subs.get(id))
            .cloned()
    };
    if let Some(tx) = sub {
        // Waits while the turn's mailbox is full; fails only when the turn
        // is gone.
        let _ = tx
            .send(Note {
                method: method.to_owned(),
                params,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reassemble_across_and_within_frames() {
        let a = frame(&json!({"method": "chat/answer", "params": {"text": "héllo"}}));
        let b = frame(&json!({"method": "chat/finish", "params": {}}));
        let both = format!("{a}{b}");
        // Every split point, including inside the header and a multibyte char.
        for cut in 0..=both.len() {
            let mut d = Decoder::default();
            let mut got = d.feed(&both.as_bytes()[..cut]).unwrap();
            got.extend(d.feed(&both.as_bytes()[cut..]).unwrap());
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0]["params"]["text"], "héllo");
            assert_eq!(got[1]["method"], "chat/finish");
        }
        // Bare JSON is tolerated too.
        let mut d = Decoder::default();
        assert_eq!(d.feed(br#"{"a":1}{"b":2}"#).unwrap().len(), 2);
    }

    /// The next complete messages the agent receives.
    async fn read(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) -> Vec<Value> {
        let mut dec = Decoder::default();
        for _ in 0..100 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let got = dec.feed(t.as_bytes()).unwrap();
                    if !got.is_empty() {
                        return got;
                    }
                }
                other => panic!("agent got {other:?}"),
            }
        }
        panic!("no message")
    }

    /// An agent that, once a `chat/ask` arrives, asks a question of its
    /// own, waits for the answer, then streams two answers in one frame and
    /// a finish split across two frames, then closes.
    async fn agent(listener: tokio::net::TcpListener) {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let got = read(&mut ws).await;
        assert_eq!(got[0]["method"], "chat/ask");
        assert!(
            got[0].get("id").is_none(),
            "chat/ask must be a notification"
        );
        let ids = json!({"sessionId": "s1", "requestId": "r1"});
        let q = json!({"jsonrpc": "2.0", "id": 5, "method": "config/get", "params": ids});
        ws.send(Message::text(frame(&q))).await.unwrap();
        let reply = read(&mut ws).await;
        assert_eq!(reply[0], json!({"jsonrpc": "2.0", "id": 5, "result": null}));
        let a = |t: &str| {
            frame(&json!({"method": "chat/answer", "params": {"sessionId": "s1", "text": t}}))
        };
        ws.send(Message::text(format!("{}{}", a("he"), a("llo"))))
            .await
            .unwrap();
        let fin = frame(&json!({"method": "chat/finish", "params": {"sessionId": "s1"}}));
        let (x, y) = fin.as_bytes().split_at(9);
        ws.send(Message::binary(x.to_vec())).await.unwrap();
        ws.send(Message::binary(y.to_vec())).await.unwrap();
        let _ = ws.close(None).await;
    }

    #[tokio::test]
    async fn a_turn_over_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(agent(listener));
        let conn = Connection::connect(&format!("ws://127.0.0.1:{port}/"), Value::Null)
            .await
            .unwrap();
        let mut sub = conn.subscribe(&["s1", "r1"]).unwrap();
        conn.notify("chat/ask", json!({"sessionId": "s1", "requestId": "r1"}))
            .unwrap();
        let mut notes = Vec::new();
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                Ok(Some(n)) => notes.push(n.method),
                Ok(None) => break,
                Err(_) => panic!("no notification"),
            }
        }
        // The config/get request is routed too (it names the session).
        assert_eq!(
            notes,
            ["config/get", "chat/answer", "chat/answer", "chat/finish"]
        );
        server.await.unwrap();
        let mut alive = conn.alive_watch();
        let _ = tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|up| !*up)).await;
        assert!(!conn.is_alive());
        assert!(conn.down_reason().is_some());
        assert!(conn.subscribe(&["s2"]).is_none());
    }

    #[test]
    fn broken_headers_are_errors() {
        let mut d = Decoder::default();
        assert!(d.feed(b"Content-Type: x\r\n\r\n{}").is_err());
        let mut d = Decoder::default();
        assert!(d.feed(b"Content-Length: 99999999999\r\n\r\n").is_err());
        let mut d = Decoder::default();
        assert!(d.feed(&vec![b'x'; MAX_HEADER + 10]).is_err());
    }

    #[tokio::test]
    async fn notifications_route_and_requests_are_answered() {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (tx, mut rx) = mpsc::channel::<String>(4);
        let (sub_tx, mut sub_rx) = mpsc::channel(4);
        {
            let mut r = lock(&routes);
            r.subs.insert(1, sub_tx);
            r.keys.insert("s1".into(), 1);
        }
        let weak = tx.downgrade();
        let answer = json!({"ok": true});
        handle(
            json!({"method": "chat/answer", "params": {"sessionId": "s1", "text": "x"}}),
            &routes,
            &weak,
            &answer,
        )
        .await;
        handle(
            json!({"method": "chat/answer", "params": {"sessionId": "other", "text": "y"}}),
            &routes,
            &weak,
            &answer,
        )
        .await;
        handle(
            json!({"jsonrpc": "2.0", "id": 7, "method": "config/get", "params": {}}),
            &routes,
            &weak,
            &answer,
        )
        .await;
        assert_eq!(sub_rx.try_recv().unwrap().params["text"], "x");
        assert!(sub_rx.try_recv().is_err());
        let reply = rx.try_recv().unwrap();
        let mut d = Decoder::default();
        let v = d.feed(reply.as_bytes()).unwrap();
        assert_eq!(
            v[0],
            json!({"jsonrpc": "2.0", "id": 7, "result": {"ok": true}})
        );
    }
}

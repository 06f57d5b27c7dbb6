//! Upstream kinds. Each implements [`Upstream`]: establish a session, run
//! one [`ChatRequest`] into [`ChatEvent`]s. A session actor owns one
//! instance per account or connection.

pub mod anthropic;
pub mod cli;
pub mod demo;
pub(crate) mod http;
pub mod langgraph;
pub mod lingma;
pub mod ondemand;
pub mod openai;
pub(crate) mod process;
pub(crate) mod registry;
pub mod socketio;
pub(crate) mod text;

pub use registry::session_names;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::Either;
use tokio::sync::mpsc;

use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, UpstreamError};
use crate::config::{AccountConfig, PoolConfig};

/// One upstream account or connection, as a session actor drives it.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Logs in, connects or checks the process: whatever must succeed before
    /// the session takes requests. Failing here restarts the session.
    async fn establish(&self) -> Result<(), UpstreamError> {
        Ok(())
    }

    /// Fetches fresh credentials (after the upstream refused the current
    /// ones, or ahead of their expiry). `Ok(true)` when they changed, so a
    /// refused request is worth one more try.
    async fn refresh(&self) -> Result<bool, UpstreamError> {
        Ok(false)
    }

    /// When the current credentials expire, for kinds whose do.
    fn expires_at(&self) -> Option<std::time::SystemTime> {
        None
    }

    /// Login state worth keeping across process restarts, for the
    /// credential cache. Never logged.
    fn export_credentials(&self) -> Option<serde_json::Value> {
        None
    }

    /// Whether replicas of a cluster share this kind's login state (an
    /// account logged in or refreshed once, for all of them): kinds whose
    /// login makes or rotates tokens.
    fn shares_credentials(&self) -> bool {
        false
    }

    /// Takes back cached login state before `establish`; false if unusable.
    fn import_credentials(&self, _cached: serde_json::Value) -> bool {
        false
    }

    /// Resolves, with the reason, when the long-lived connection made by
    /// `establish` is gone, so the session restarts at once rather than
    /// on the next request's failure. Kinds without one never resolve.
    async fn lost(&self) -> String {
        std::future::pending().await
    }

    /// Whether this kind takes tools itself. Kinds that do not get them
    /// from one layer the session applies ([`text::tools`]): they never
    /// see tools, tool calls or tool results, only text.
    fn native_tools(&self) -> bool {
        false
    }

    /// Whether this kind keeps conversations upstream (threads, upstream
    /// sessions), so a turn should continue the upstream conversation of
    /// the turns before it.
    fn stateful(&self) -> bool {
        false
    }

    /// Whether a conversation handle means the same thing from another
    /// machine (a thread or session id on the upstream server), so another
    /// replica may continue it. Handles that live on this machine (a
    /// CLI's local session, a local agent's session) do not.
    fn portable_handles(&self) -> bool {
        false
    }

    /// Runs one turn of a conversation. `handle` is the upstream
    /// conversation (thread id, session id) the earlier turns used, when
    /// known; the returned handle is what the next turn continues.
    /// Stateless kinds need not implement it.
    async fn chat_turn(
        &self,
        request: &ChatRequest,
        model: &str,
        sink: &EventSink,
        handle: Option<&str>,
    ) -> Result<Option<String>, UpstreamError> {
        let _ = handle;
        self.chat(request, model, sink).await.map(|()| None)
    }

    /// Runs one request, sending its events to `sink`, and returns when the
    /// upstream's answer is over. `model` is the upstream's model name.
    /// A returned error is delivered to the client by the caller.
    async fn chat(
        &self,
        request: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError>;
}

/// The sending half of a request's bounded mailbox. A full mailbox makes the
/// upstream read wait: a slow client slows its own upstream, nobody else's.
#[derive(Debug)]
pub struct EventSink {
    tx: mpsc::Sender<ChatEvent>,
    /// The answer's text, kept only when a conversation key depends on it.
    /// This and `tools` are boxed: every upstream call's task holds its
    /// sink for its whole life, and inline they were 224 of its bytes.
    transcript: Option<Box<std::sync::Mutex<String>>>,
    /// The tool-emulation layer, for kinds without native tools: it turns
    /// call blocks in the answer's text into tool-call events.
    tools: Option<Box<std::sync::Mutex<text::tools::Extractor>>>,
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<ChatEvent>) -> Self {
        EventSink {
            tx,
            transcript: None,
            tools: None,
        }
    }

    /// Sends the answer's events through `extractor` first.
    pub(crate) fn extracting_tools(mut self, extractor: Option<text::tools::Extractor>) -> Self {
        self.tools = extractor.map(|e| Box::new(std::sync::Mutex::new(e)));
        self
    }

    /// Also keeps the answer's text, for [`EventSink::transcript`].
    pub fn keeping_transcript(mut self) -> Self {
        self.transcript = Some(Box::new(std::sync::Mutex::new(String::new())));
        self
    }

    /// The text sent so far, if kept.
    pub fn transcript(&self) -> Option<String> {
        let t = self.transcript.as_ref()?;
        Some(crate::support::sync::lock(t).clone())
    }

    /// Sends one event; fails with [`ErrorKind::Cancelled`] when the client
    /// is gone, so the upstream call stops.
    ///
    /// Not an `async fn`: the tool layer's part runs when called, and the
    /// wait for room is boxed (see `deliver`). Every upstream call's task
    /// holds one of these futures for its whole life, one per open stream:
    /// 280 bytes, against 584 as an `async fn` around tokio's send.
    pub fn send(
        &self,
        ev: ChatEvent,
    ) -> impl std::future::Future<Output = Result<(), UpstreamError>> + Send + '_ {
        match &self.tools {
            None => Either::Left(self.deliver(ev)),
            Some(tools) => {
                let mut out = Vec::new();
                crate::support::sync::lock(tools).event(ev, &mut out);
                Either::Right(self.deliver_all(out))
            }
        }
    }

    /// Ends an answer whose kind sent no `Stop`: text the tool layer still
    /// holds is delivered (nothing is cut silently).
    ///
    /// What is left to deliver, if anything, waits in a box: every call's
    /// task holds this future at its end, and most have nothing to deliver.
    pub(crate) fn flush(
        &self,
    ) -> impl std::future::Future<Output = Result<(), UpstreamError>> + Send + '_ {
        let mut out = Vec::new();
        if let Some(tools) = &self.tools {
            crate::support::sync::lock(tools).finish(&mut out);
        }
        if out.is_empty() {
            Either::Left(std::future::ready(Ok(())))
        } else {
            Either::Right(Box::pin(self.deliver_all(out)))
        }
    }

    async fn deliver_all(&self, events: Vec<ChatEvent>) -> Result<(), UpstreamError> {
        for ev in events {
            self.deliver(ev).await?;
        }
        Ok(())
    }

    async fn deliver(&self, ev: ChatEvent) -> Result<(), UpstreamError> {
        if let (Some(t), ChatEvent::TextDelta(text)) = (&self.transcript, &ev) {
            crate::support::sync::lock(t).push_str(text);
        }
        let gone = || UpstreamError::new(ErrorKind::Cancelled, "client went away");
        // Room in the mailbox is the common case and needs no waiting; the
        // wait for room (a slow client) is boxed, so that across the await
        // the future holds a pointer rather than tokio's send future.
        let wait = match self.tx.try_send(ev) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(ev)) => Box::pin(self.tx.send(ev)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(gone()),
        };
        wait.await.map_err(|_| gone())
    }

    /// Sends without waiting; fails when the mailbox is full or closed.
    pub fn try_send(&self, ev: ChatEvent) -> Result<(), UpstreamError> {
        self.tx
            .try_send(ev)
            .map_err(|_| UpstreamError::new(ErrorKind::Cancelled, "mailbox full or closed"))
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// An account's API key. A key given as `api_key_file` is read again when
/// the upstream refuses it, so a key rotated on disk is picked up without a
/// restart.
pub struct ApiKey {
    current: std::sync::RwLock<Arc<str>>,
    /// The header value last built, with its scheme and key: built once,
    /// not on every request.
    header: std::sync::RwLock<Option<(&'static str, Arc<str>, ::http::HeaderValue)>>,
    file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("ApiKey")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// The key of `account`, if it has one.
    pub fn of(account: Option<&AccountConfig>) -> Option<Self> {
        let account = account?;
        let key = account.api_key.as_ref()?;
        Some(ApiKey {
            current: std::sync::RwLock::new(Arc::from(key.expose())),
            header: std::sync::RwLock::new(None),
            file: account.api_key_file.clone(),
        })
    }

    /// The key to send now.
    pub fn get(&self) -> Arc<str> {
        crate::support::sync::read(&self.current).clone()
    }

    /// Re-reads `api_key_file`; `Ok(true)` when the key changed.
    pub fn reload(&self) -> Result<bool, UpstreamError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            UpstreamError::new(
                ErrorKind::Auth,
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        let fresh = text.trim();
        if fresh.is_empty() || *self.get() == *fresh {
            return Ok(false);
        }
        *crate::support::sync::write(&self.current) = Arc::from(fresh);
        Ok(true)
    }

    /// The key as a sensitive header value, after `scheme` (`"Bearer "`, or
    /// `""` for the bare key).
    pub fn header(&self, scheme: &'static str) -> Result<::http::HeaderValue, UpstreamError> {
        let key = self.get();
        if let Some((s, k, v)) = &*crate::support::sync::read(&self.header) {
            if *s == scheme && Arc::ptr_eq(k, &key) {
                return Ok(v.clone());
            }
        }
        let mut value = String::from(scheme);
        value.push_str(&key);
        let v = http::client::secret_header(&value)?;
        *crate::support::sync::write(&self.header) = Some((scheme, key, v.clone()));
        Ok(v)
    }
}

/// Everything an upstream instance needs from the configuration.
pub struct UpstreamContext<'a> {
    pub pool: &'a PoolConfig,
    pub account: Option<&'a AccountConfig>,
    /// The thread's HTTP clients (connection pools are per host, not per
    /// key).
    pub http: http::client::HttpClient,
}

/// Where a session lives, for kinds that keep files per session (a
/// `lingma` agent's work directory).
pub struct Place<'a> {
    /// The session's name (its account, or `pool-N`).
    pub session: &'a str,
    /// `server.data_dir`.
    pub data_dir: &'a std::path::Path,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_mailbox_waits_for_room_and_a_gone_client_cancels() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(tx).keeping_transcript();
        sink.send(ChatEvent::TextDelta("one ".into()))
            .await
            .unwrap();
        // The mailbox is full: the second send waits until the first is taken.
        let second = sink.send(ChatEvent::TextDelta("two".into()));
        tokio::pin!(second);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        assert!(matches!(rx.recv().await, Some(ChatEvent::TextDelta(t)) if t == "one "));
        second.await.unwrap();
        assert!(matches!(rx.recv().await, Some(ChatEvent::TextDelta(t)) if t == "two"));
        assert_eq!(sink.transcript().as_deref(), Some("one two"));
        // Full, then the client leaves while the send waits.
        sink.send(ChatEvent::TextDelta("three".into()))
            .await
            .unwrap();
        let waiting = sink.send(ChatEvent::TextDelta("four".into()));
        drop(rx);
        let err = waiting.await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        let err = sink.flush().await;
        assert!(err.is_ok(), "nothing held, nothing to deliver");
        let err = sink
            .send(ChatEvent::TextDelta("five".into()))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
    }

    #[test]
    fn the_key_header_is_built_once_per_key_and_follows_a_rotated_file() {
        let dir = std::env::temp_dir().join(format!("troupe-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "sk-one\n").unwrap();
        let account = AccountConfig {
            name: "a".into(),
            api_key: Some(crate::config::Secret::new("sk-one")),
            api_key_file: Some(file.clone()),
        };
        let key = ApiKey::of(Some(&account)).unwrap();
        let first = key.header("Bearer ").unwrap();
        assert_eq!(first, "Bearer sk-one");
        assert!(first.is_sensitive());
        assert_eq!(key.header("").unwrap(), "sk-one");
        assert_eq!(key.header("Bearer ").unwrap(), "Bearer sk-one");
        std::fs::write(&file, "sk-two\n").unwrap();
        assert!(key.reload().unwrap());
        assert_eq!(key.header("Bearer ").unwrap(), "Bearer sk-two");
        assert!(!format!("{key:?}").contains("sk-"), "{key:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

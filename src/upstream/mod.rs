//! Upstream kinds. Each implements [`Upstream`]: establish a session, run
//! one [`ChatRequest`] into [`ChatEvent`]s. A session actor owns one
//! instance per account or connection.

pub mod demo;
pub mod openai;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, UpstreamError};
use crate::config::{AccountConfig, Kind, PoolConfig};

/// One upstream account or connection, as a session actor drives it.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Logs in, connects or checks the process: whatever must succeed before
    /// the session takes requests. Failing here restarts the session.
    async fn establish(&self) -> Result<(), UpstreamError> {
        Ok(())
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
}

impl EventSink {
    pub fn new(tx: mpsc::Sender<ChatEvent>) -> Self {
        EventSink { tx }
    }

    /// Sends one event; fails with [`ErrorKind::Cancelled`] when the client
    /// is gone, so the upstream call stops.
    pub async fn send(&self, ev: ChatEvent) -> Result<(), UpstreamError> {
        self.tx
            .send(ev)
            .await
            .map_err(|_| UpstreamError::new(ErrorKind::Cancelled, "client went away"))
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

/// Everything an upstream instance needs from the configuration.
pub struct UpstreamContext<'a> {
    pub pool: &'a PoolConfig,
    pub account: Option<&'a AccountConfig>,
    /// Shared HTTP client (connection pools are per host, not per key).
    pub http: reqwest::Client,
}

/// Builds the upstream instance for one session.
pub fn build(ctx: UpstreamContext<'_>) -> Result<Arc<dyn Upstream>, String> {
    match ctx.pool.kind {
        Kind::Demo => Ok(Arc::new(demo::Demo::new(ctx.pool))),
        Kind::Openai => Ok(Arc::new(openai::OpenAi::new(&ctx)?)),
    }
}

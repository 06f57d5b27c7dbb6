//! The restart log: every restart, give-up, cool-down, credential refresh and
//! reset is one JSON line in `data_dir/restarts.jsonl`, rotated by size and
//! kept across process restarts; the newest lines are also kept in memory for
//! the admin API. Operators read it with `troupe restarts`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

/// File name of the current log inside `data_dir`.
pub const FILE_NAME: &str = "restarts.jsonl";

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The session stopped after a fault and will start again after `backoff_ms`.
    Restart,
    /// Too many restarts within the window: the session is `failed`.
    GiveUp,
    /// The session (or one of its models) stops taking requests for a while.
    Cooldown,
    /// A cool-down ended or a trial request decided.
    CooldownEnd,
    /// Credentials were refreshed.
    Refresh,
    /// An operator reset the session.
    Reset,
    /// A `failed` session is tried again by itself, after `backoff_ms`.
    Revive,
    /// The watchdog found a dead session actor and re-created it.
    Respawn,
    /// The configuration was reloaded (pool and session are `*`).
    Reload,
    /// A new configuration was invalid and the running one stayed.
    ReloadRejected,
}

/// Why a session restarted: a closed set, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Logging in, connecting or spawning failed.
    EstablishFailed,
    /// The upstream connection went away between requests.
    ConnectionLost,
    /// Refreshing credentials failed.
    RefreshFailed,
    /// The upstream refused the credentials.
    Auth,
    /// The upstream no longer knows the session.
    SessionLost,
    /// The session's actor died; the watchdog made a new one.
    ActorDied,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::EstablishFailed => "establish_failed",
            Cause::ConnectionLost => "connection_lost",
            Cause::RefreshFailed => "refresh_failed",
            Cause::Auth => "auth",
            Cause::SessionLost => "session_lost",
            Cause::ActorDied => "actor_died",
        }
    }
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Restart => "restart",
            EventKind::GiveUp => "give_up",
            EventKind::Cooldown => "cooldown",
            EventKind::CooldownEnd => "cooldown_end",
            EventKind::Refresh => "refresh",
            EventKind::Reset => "reset",
            EventKind::Revive => "revive",
            EventKind::Respawn => "respawn",
            EventKind::Reload => "reload",
            EventKind::ReloadRejected => "reload_rejected",
        }
    }
}

/// One line of the restart log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct RestartEvent {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub pool: String,
    pub session: String,
    pub event: EventKind,
    /// Why, in words; never a secret.
    pub reason: String,
    /// Restarts so far in the current run of failures.
    #[serde(default)]
    pub attempt: u32,
    /// Delay before the next start or the length of a cool-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// Of a restart or a give-up: why, from a closed set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl RestartEvent {
    /// An event stamped now.
    pub fn now(pool: &str, session: &str, event: EventKind, reason: impl Into<String>) -> Self {
        RestartEvent {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            pool: pool.to_owned(),
            session: session.to_owned(),
            event,
            reason: reason.into(),
            attempt: 0,
            backoff_ms: None,
            cause: None,
        }
    }

    /// When it happened, if the stamp parses.
    pub fn at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.time).ok()
    }
}

/// A JSON text for live viewers (the admin dashboard's WebSocket).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Push(pub std::sync::Arc<str>);

/// A live viewer wants every new event as it is written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<Push>);

/// The restart log actor: appends lines, rotates, remembers the newest.
pub struct RestartLog {
    dir: PathBuf,
    max_bytes: u64,
    keep_files: usize,
    file: Option<File>,
    size: u64,
    recent: VecDeque<RestartEvent>,
    recent_cap: usize,
    viewers: Vec<Recipient<Push>>,
    /// Replicas sharing a restart stream, if any.
    cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
}

impl RestartLog {
    /// Opens (or creates) the log in `dir`; the newest `recent_cap` lines of
    /// the existing file are loaded so the admin API shows history at once.
    pub fn open(dir: &Path, max_bytes: u64, keep_files: usize, recent_cap: usize) -> Self {
        let mut log = RestartLog {
            dir: dir.to_path_buf(),
            max_bytes,
            keep_files,
            file: None,
            size: 0,
            recent: VecDeque::with_capacity(recent_cap),
            recent_cap,
            viewers: Vec::new(),
            cluster: None,
        };
        if let Err(e) = super::private_dir(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create data_dir; restart log kept in memory only");
            return log;
        }
        for ev in read_events(&dir.join(FILE_NAME)) {
            log.remember(ev);
        }
        log.reopen();
        log
    }

    /// Also adds every event to the cluster's capped restart stream.
    pub(crate) fn with_cluster(
        mut self,
        cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    ) -> Self {
        self.cluster = cluster;
        self
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn reopen(&mut self) {
        match super::private_append(&self.path()) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                tracing::error!(path = %self.path().display(), error = %e, "cannot open the restart log");
                self.file = None;
            }
        }
    }

    /// `restarts.jsonl` → `.1` → `.2` ...; the oldest beyond `keep_files` goes.
    fn rotate(&mut self) {
        self.file = None;
        let base = self.path();
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", base.display()));
        let _ = std::fs::remove_file(numbered(self.keep_files));
        for n in (1..self.keep_files).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep_files > 0 {
            let _ = std::fs::rename(&base, numbered(1));
        } else {
            let _ = std::fs::remove_file(&base);
        }
        self.reopen();
    }

    fn remember(&mut self, ev: RestartEvent) {
        if self.recent.len() == self.recent_cap {
            self.recent.pop_front();
        }
        if self.recent_cap > 0 {
            self.recent.push_back(ev);
        }
    }

    fn append(&mut self, ev: &RestartEvent) {
        let Ok(mut line) = serde_json::to_vec(ev) else {
            return;
        };
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(&line) {
                Ok(()) => self.size += line.len() as u64,
                Err(e) => tracing::error!(error = %e, "cannot write the restart log"),
            }
        }
    }
}

impl Actor for RestartLog {
    type Context = Context<Self>;
}

impl Handler<RestartEvent> for RestartLog {
    type Result = ();

    fn handle(&mut self, ev: RestartEvent, _: &mut Self::Context) {
        if let Some(m) = crate::metrics::get() {
            m.session_events
                .with_label_values(&[&ev.pool, ev.event.as_str()])
                .inc();
            if let (EventKind::Restart | EventKind::Respawn, Some(cause)) = (ev.event, ev.cause) {
                m.session_restarts
                    .with_label_values(&[&ev.pool, cause.as_str()])
                    .inc();
            }
        }
        tracing::info!(pool = %ev.pool, session = %ev.session, event = ev.event.as_str(), reason = %ev.reason, attempt = ev.attempt, backoff_ms = ev.backoff_ms, "session event");
        self.append(&ev);
        if let Some(c) = &self.cluster {
            if let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(&ev) {
                fields.insert("replica".into(), c.replica().into());
                c.publish_restart(serde_json::Value::Object(fields).to_string());
            }
        }
        if !self.viewers.is_empty() {
            let mut msg = serde_json::json!({"type": "event"});
            if let (Ok(serde_json::Value::Object(fields)), Some(obj)) =
                (serde_json::to_value(&ev), msg.as_object_mut())
            {
                obj.extend(fields);
            }
            let text: std::sync::Arc<str> = std::sync::Arc::from(msg.to_string().as_str());
            self.viewers.retain(|v| v.connected());
            for v in &self.viewers {
                v.do_send(Push(text.clone()));
            }
        }
        self.remember(ev);
    }
}

impl Handler<Subscribe> for RestartLog {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.viewers.retain(|v| v.connected());
        self.viewers.push(msg.0);
    }
}

/// The newest events in memory, oldest first.
#[derive(Message)]
#[rtype(result = "Vec<RestartEvent>")]
pub struct Recent;

impl Handler<Recent> for RestartLog {
    type Result = MessageResult<Recent>;

    fn handle(&mut self, _: Recent, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.recent.iter().cloned().collect())
    }
}

/// Reads every parseable line of a log file; unreadable lines are skipped
/// (a crash can leave half a line at the end).
pub fn read_events(path: &Path) -> Vec<RestartEvent> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Every event in `dir`, rotated files first, oldest first.
pub fn read_all(dir: &Path) -> Vec<RestartEvent> {
    let base = dir.join(FILE_NAME);
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix(FILE_NAME)?
                .strip_prefix('.')?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out = Vec::new();
    for (_, p) in rotated {
        out.extend(read_events(&p));
    }
    out.extend(read_events(&base));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> RestartEvent {
        let mut e = RestartEvent::now("p", "s", EventKind::Restart, format!("fault {i}"));
        e.attempt = i;
        e.backoff_ms = Some(500);
        e
    }

    #[test]
    fn lines_survive_reopen_and_rotation_keeps_order() {
        let dir = std::env::temp_dir().join(format!("troupe-rl-{}", uuid::Uuid::new_v4().simple()));
        let mut log = RestartLog::open(&dir, 400, 3, 5);
        for i in 0..20 {
            let e = ev(i);
            log.append(&e);
            log.remember(e);
        }
        drop(log);
        let all = read_all(&dir);
        // Rotation dropped the oldest files but what is kept is in order.
        let attempts: Vec<u32> = all.iter().map(|e| e.attempt).collect();
        assert!(!attempts.is_empty() && attempts.len() < 20, "{attempts:?}");
        assert!(
            attempts.windows(2).all(|w| w[0] + 1 == w[1]),
            "{attempts:?}"
        );
        assert_eq!(*attempts.last().unwrap(), 19);
        let reopened = RestartLog::open(&dir, 400, 3, 5);
        assert_eq!(reopened.recent.back().map(|e| e.attempt), Some(19));
        assert!(reopened.recent.len() <= 5);
        assert!(all[0].at().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

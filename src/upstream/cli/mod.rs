//! The `cli` upstream: a local command-line chat program (Claude Code,
//! Codex, Gemini CLI, or any program given as a `custom` command) run once
//! per request, its streamed JSON lines (or plain text) read into events.
//!
//! One session per configured account (or `sessions` of them); each
//! session runs up to `max_concurrency` processes at once. The presets
//! keep their own conversations, so this kind is stateful: the CLI's
//! session id is the conversation handle, and a later turn resumes it with
//! only the newest user turn as the prompt.
//!
//! Every process runs in its own process group, killed as a whole when the
//! request ends early (client gone, timeout): a CLI's own children die
//! with it. Stdout is read line by line under a length cap; stderr is kept
//! apart and only its tail shows up in error messages.

pub(crate) mod config;

pub mod claude;
pub mod codex;
pub mod gemini;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::text::flatten::flatten;
use super::{EventSink, Upstream, UpstreamContext};
use crate::canonical::{ChatEvent, ChatRequest, ErrorKind, StopReason, UpstreamError, Usage};

/// The `preset` values a `cli` pool accepts.
pub const PRESETS: &[&str] = &["claude", "codex", "gemini", "custom"];

/// The `output_format` values of a `custom` command: plain text lines, or
/// the JSON lines of one of the presets.
pub const OUTPUT_FORMATS: &[&str] = &["text", "claude", "codex", "gemini"];

/// Model names that mean "the CLI's own default model": never passed as
/// `--model`, since no CLI knows a model called `claude` or `codex`.
pub const BACKEND_NAMES: &[&str] = &["claude", "codex", "gemini"];

/// Longest stdout line read when a pool sets no `max_line`: long enough
/// for any real answer line, short enough that a runaway program cannot
/// fill memory.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// How much of a process's stderr is kept for error messages.
const STDERR_TAIL: usize = 8 * 1024;

/// How long the `--version` check of `establish` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a process that closed its stdout may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a process group has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// Which program a pool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    Claude,
    Codex,
    Gemini,
    Custom,
}

/// How a program's stdout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Claude,
    Codex,
    Gemini,
}

/// One CLI program, as one session runs it.
pub struct Cli {
    preset: Preset,
    format: Format,
    program: PathBuf,
    /// `custom`: the argument template after the program.
    template: Vec<String>,
    extra_args: Vec<String>,
    cwd: Option<PathBuf>,
    env: BTreeMap<String, String>,
    max_line: usize,
}

impl Cli {
    pub fn new(ctx: &UpstreamContext<'_>) -> Result<Self, String> {
        let own: config::Settings = ctx
            .pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        let preset = match own.preset.as_deref() {
            Some("claude") => Preset::Claude,
            Some("codex") => Preset::Codex,
            Some("gemini") => Preset::Gemini,
            Some("custom") => Preset::Custom,
            Some(other) => return Err(format!("preset: unknown cli preset `{other}`")),
            None => return Err("preset: the cli kind needs a preset".to_owned()),
        };
        let format = match (preset, own.output_format.as_deref()) {
            (Preset::Claude, _) | (Preset::Custom, Some("claude")) => Format::Claude,
            (Preset::Codex, _) | (Preset::Custom, Some("codex")) => Format::Codex,
            (Preset::Gemini, _) | (Preset::Custom, Some("gemini")) => Format::Gemini,
            (Preset::Custom, None | Some("text")) => Format::Text,
            (Preset::Custom, Some(other)) => {
                return Err(format!("output_format: unknown format `{other}`"))
            }
        };
        let (program, template) = match preset {
            Preset::Custom => {
                let Some((first, rest)) = own.command.split_first() else {
                    return Err("command: the custom preset needs a command".to_owned());
                };
                (PathBuf::from(first), rest.to_vec())
            }
            _ => {
                let name = own.preset.as_deref().unwrap_or_default();
                (
                    own.binary.clone().unwrap_or_else(|| PathBuf::from(name)),
                    Vec::new(),
                )
            }
        };
        Ok(Cli {
            preset,
            format,
            program,
            template,
            extra_args: own.extra_args,
            cwd: own.cwd,
            env: own.env,
            max_line: own.max_line.map_or(DEFAULT_MAX_LINE, |b| b.0),
        })
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own group, so the CLI's children can be killed with it.
            .process_group(0);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// The argument list of one turn. `resume`: the CLI's session to
    /// continue; the prompt then holds only the newest turn.
    fn args(&self, req: &ChatRequest, model: &str, resume: Option<&str>) -> Vec<String> {
        let model_arg = (!BACKEND_NAMES.contains(&model)).then(|| model.to_owned());
        let system = req
            .system
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned);
        let system_apart = match self.preset {
            Preset::Claude => true,
            Preset::Custom => self.template.iter().any(|a| a.contains("{system}")),
            Preset::Codex | Preset::Gemini => false,
        };
        let prompt = if system_apart && resume.is_none() {
            let mut bare = req.clone();
            bare.system = None;
            flatten(&bare, false)
        } else {
            flatten(req, resume.is_some())
        };
        // A prompt starting with `-` would be read as an option.
        let prompt = if prompt.starts_with('-') {
            format!(" {prompt}")
        } else {
            prompt
        };
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_owned());
        match self.preset {
            Preset::Claude => {
                for s in ["--print", "--output-format", "stream-json", "--verbose"] {
                    push(s);
                }
                if let Some(m) = &model_arg {
                    push("--model");
                    push(m);
                }
                if let Some(s) = &system {
                    push("--system-prompt");
                    push(s);
                }
                if let Some(id) = resume {
                    push("--resume");
                    push(id);
                }
                a.extend(self.extra_args.iter().cloned());
            }
            Preset::Codex => {
                push("exec");
                push("--json");
                if let Some(m) = &model_arg {
                    push("--model");
                    push(m);
                }
                a.extend(self.extra_args.iter().cloned());
                if let Some(id) = resume {
                    a.push("resume".to_owned());
                    a.push(id.to_owned());
                }
            }
            Preset::Gemini => {
                push("--output-format");
                push("stream-json");
                if let Some(m) = &model_arg {
                    push("--model");
                    push(m);
                }
                if let Some(id) = resume {
                    push("--resume");
                    push(id);
                }
                a.extend(self.extra_args.iter().cloned());
            }
            Preset::Custom => {
                let system = system.unwrap_or_default();
                for t in &self.template {
                    a.push(
                        t.replace("{prompt}", &prompt)
                            .replace("{model}", model)
                            .replace("{system}", &system),
                    );
                }
                a.extend(self.extra_args.iter().cloned());
                return a;
            }
        }
        a.push(prompt);
        a
    }

    /// Runs one process to its end. `content` is set once anything but
    /// the preamble reached the client, after which nothing may be retried.
    async fn run(
        &self,
        args: Vec<String>,
        model: &str,
        sink: &EventSink,
        content: &mut bool,
    ) -> Result<Option<String>, UpstreamError> {
        let mut child = self.command(&args).spawn().map_err(|e| {
            UpstreamError::new(
                ErrorKind::SessionLost,
                format!("cannot start {}: {e}", self.program.display()),
            )
        })?;
        let mut group = Group {
            pgid: child.id(),
            stderr_task: None,
        };
        let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
        if let Some(err) = child.stderr.take() {
            group.stderr_task = Some(tokio::spawn(keep_tail(err, tail.clone())));
        }
        let Some(stdout) = child.stdout.take() else {
            return Err(UpstreamError::new(
                ErrorKind::SessionLost,
                "the CLI's stdout is not piped",
            ));
        };
        sink.send(ChatEvent::Start {
            model: model.to_owned(),
        })
        .await?;
        let mut reader = BufReader::new(stdout);
        let mut out = Out::new();
        let mut parser: Option<Box<dyn Parser>> = match self.format {
            Format::Text => None,
            Format::Claude => Some(Box::new(claude::Claude::default())),
            Format::Codex => Some(Box::new(codex::Codex)),
            Format::Gemini => Some(Box::new(gemini::Gemini)),
        };
        let mut line = Vec::new();
        // Ends at the end of stdout; the line cap bounds each read.
        let failure = loop {
            match next_line(&mut reader, self.max_line, &mut line).await {
                Ok(false) => break None,
                Ok(true) => {}
                Err(e) => break Some(e),
            }
            let text = String::from_utf8_lossy(&line);
            let step = match parser.as_mut() {
                None => {
                    out.text(&text);
                    out.text("\n");
                    Ok(())
                }
                Some(p) => match serde_json::from_str::<Value>(text.trim()) {
                    Ok(v) => p.line(&v, &mut out),
                    // Banners and warnings some CLIs print among the JSON.
                    Err(_) => {
                        tracing::debug!(line = %text, "cli printed a line that is not JSON");
                        Ok(())
                    }
                },
            };
            for ev in out.events.drain(..) {
                *content = true;
                sink.send(ev).await?;
            }
            if let Err(e) = step {
                break Some(e);
            }
        };
        let status = match failure {
            Some(_) => None,
            None => match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    return Err(UpstreamError::new(
                        ErrorKind::Connect,
                        format!("cannot wait for the CLI: {e}"),
                    ))
                }
                Err(_) => None,
            },
        };
        let stderr = group.stderr_tail(&tail).await;
        let with_stderr = |mut e: UpstreamError| {
            if !stderr.is_empty() {
                e.message = format!("{}; stderr: {stderr}", e.message);
            }
            e
        };
        if let Some(e) = failure {
            return Err(with_stderr(e));
        }
        match status {
            Some(s) if s.success() => {}
            Some(s) if out.done => {
                tracing::debug!(status = %s, "cli ended its answer, then failed");
            }
            other => {
                let how = match other {
                    Some(s) => format!("the CLI exited with {s}"),
                    None => "the CLI did not exit after closing its output".to_owned(),
                };
                // Nothing answered yet: the program itself is broken, so the
                // session restarts (and checks it again); midway it is a
                // broken stream.
                let kind = if *content {
                    ErrorKind::Connect
                } else {
                    ErrorKind::SessionLost
                };
                return Err(with_stderr(UpstreamError::new(kind, how)));
            }
        }
        for ev in out.events.drain(..) {
            sink.send(ev).await?;
        }
        let reason = if out.calls > 0 {
            StopReason::ToolUse
        } else {
            StopReason::End
        };
        sink.send(ChatEvent::Stop(reason)).await?;
        if let Some(u) = out.usage {
            sink.send(ChatEvent::Usage(u)).await?;
        }
        Ok(out.session)
    }

    /// Finds the program the way the process would: a path as given, a
    /// bare name on `PATH` (the pool's own `env.PATH` if it sets one).
    fn locate(&self) -> Option<PathBuf> {
        if self.program.components().count() > 1 {
            let p = match &self.cwd {
                Some(dir) if self.program.is_relative() => dir.join(&self.program),
                _ => self.program.clone(),
            };
            return is_executable(&p).then_some(p);
        }
        let path = self
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())?;
        std::env::split_paths(&path)
            .map(|d| d.join(&self.program))
            .find(|p| is_executable(p))
    }
}

/// Whether `p` is a file someone may execute.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[async_trait]
impl Upstream for Cli {
    /// Checks that the program is there and runs: presets answer
    /// `--version`; a custom command is only looked up, since its
    /// program's options are unknown.
    async fn establish(&self) -> Result<(), UpstreamError> {
        let lost = |m: String| UpstreamError::new(ErrorKind::SessionLost, m);
        if self.locate().is_none() {
            return Err(lost(format!(
                "binary: `{}` not found or not executable",
                self.program.display()
            )));
        }
        if self.preset == Preset::Custom {
            return Ok(());
        }
        let child = self
            .command(&["--version".to_owned()])
            .spawn()
            .map_err(|e| lost(format!("cannot start {}: {e}", self.program.display())))?;
        let group = Group {
            pgid: child.id(),
            stderr_task: None,
        };
        let done = tokio::time::timeout(VERSION_TIMEOUT, child.wait_with_output()).await;
        drop(group);
        match done {
            Err(_) => Err(lost(format!(
                "`{} --version` did not answer within {VERSION_TIMEOUT:?}",
                self.program.display()
            ))),
            Ok(Err(e)) => Err(lost(format!("cannot run {}: {e}", self.program.display()))),
            Ok(Ok(o)) if !o.status.success() => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                Err(lost(format!(
                    "`{} --version` exited with {}; stderr: {}",
                    self.program.display(),
                    o.status,
                    last_chars(stderr.trim(), STDERR_TAIL)
                )))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    fn stateful(&self) -> bool {
        self.preset != Preset::Custom
    }

    async fn chat_turn(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
        handle: Option<&str>,
    ) -> Result<Option<String>, UpstreamError> {
        let mut content = false;
        if let Some(id) = handle.filter(|_| self.stateful()) {
            let args = self.args(req, model, Some(id));
            match self.run(args, model, sink, &mut content).await {
                Ok(session) => return Ok(session.or_else(|| Some(id.to_owned()))),
                // The CLI lost its session (deleted, another machine): the
                // whole conversation goes to a new one. Only before any
                // content, so nothing is repeated.
                Err(e) if !content && e.kind != ErrorKind::Cancelled => {
                    tracing::info!(error = %e, "cli could not resume its session; starting anew");
                }
                Err(e) => return Err(e),
            }
        }
        let args = self.args(req, model, None);
        self.run(args, model, sink, &mut content).await
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        self.chat_turn(req, model, sink, None).await.map(|_| ())
    }
}

/// Reads one stdout line (without its newline) into `buf`; `Ok(false)`
/// at the end. A line longer than `cap` is an error, never a bigger buffer.
pub(crate) async fn next_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    cap: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, UpstreamError> {
    buf.clear();
    // Each pass consumes input or returns, and `cap` bounds the input.
    loop {
        let avail = r.fill_buf().await.map_err(|e| {
            UpstreamError::new(
                ErrorKind::Connect,
                format!("cannot read the CLI's output: {e}"),
            )
        })?;
        if avail.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, end) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > cap {
            return Err(UpstreamError::new(
                ErrorKind::Protocol,
                format!("the CLI printed a line longer than max_line ({cap} bytes)"),
            ));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(if end { take + 1 } else { take });
        if end {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
    }
}

/// Keeps the last [`STDERR_TAIL`] bytes of a process's stderr.
async fn keep_tail(mut err: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 4096];
    // Ends when the process group closes stderr (exit or kill).
    loop {
        let n = match err.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut t = crate::support::sync::lock(&tail);
        t.extend_from_slice(&chunk[..n]);
        if t.len() > STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            t.drain(..cut);
        }
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn last_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A running process group. Dropping it (the request finished, failed,
/// timed out or its client left) kills the whole group: SIGTERM, then
/// SIGKILL for whatever ignored it.
struct Group {
    pgid: Option<u32>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl Group {
    /// The stderr kept so far, waiting briefly for the rest of it.
    async fn stderr_tail(&mut self, tail: &Mutex<Vec<u8>>) -> String {
        if let Some(task) = self.stderr_task.as_mut() {
            // A grandchild may hold stderr open: don't wait for it long.
            let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
        }
        let t = crate::support::sync::lock(tail);
        let s = String::from_utf8_lossy(&t);
        last_chars(s.trim(), STDERR_TAIL).to_owned()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        // A pid past i32 cannot be a process group on Linux.
        if let Ok(pgid) = i32::try_from(pgid) {
            crate::upstream::process::end_group(pgid, KILL_GRACE);
        }
    }
}

/// A reader of one CLI's JSON lines.
pub trait Parser: Send {
    /// Reads one line into `out`; an error line ends the answer with it.
    fn line(&mut self, v: &Value, out: &mut Out) -> Result<(), UpstreamError>;
}

/// What the lines of one answer said so far.
pub struct Out {
    /// Events not yet sent.
    pub events: Vec<ChatEvent>,
    /// The CLI's session id, the conversation handle of the next turn.
    pub session: Option<String>,
    pub usage: Option<Usage>,
    /// The CLI's final line was read.
    pub done: bool,
    /// Some answer text was read.
    pub any_text: bool,
    /// Tool calls the CLI reported itself.
    calls: u32,
}

impl Out {
    pub(crate) fn new() -> Self {
        Out {
            events: Vec::new(),
            session: None,
            usage: None,
            done: false,
            any_text: false,
            calls: 0,
        }
    }

    pub fn text(&mut self, t: &str) {
        if t.is_empty() {
            return;
        }
        self.any_text = true;
        self.events.push(ChatEvent::TextDelta(t.to_owned()));
    }

    pub fn thinking(&mut self, t: &str) {
        if !t.is_empty() {
            self.events.push(ChatEvent::ThinkingDelta(t.to_owned()));
        }
    }

    /// A tool call the CLI reported itself.
    pub fn tool_call(&mut self, id: &str, name: &str, args: &str) {
        let index = self.calls;
        self.calls += 1;
        let id = if id.is_empty() {
            format!("call_{}", uuid::Uuid::new_v4().simple())
        } else {
            id.to_owned()
        };
        self.events
            .push(ChatEvent::tool_call_start(index, id, name.to_owned()));
        self.events.push(ChatEvent::ToolCallArgsDelta {
            index,
            json: args.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};
    use serde_json::json;

    fn feed(p: &mut dyn Parser, lines: &[Value]) -> Result<Out, UpstreamError> {
        let mut out = Out::new();
        for l in lines {
            p.line(l, &mut out)?;
        }
        Ok(out)
    }

    fn texts(out: &Out) -> String {
        out.events
            .iter()
            .filter_map(|e| match e {
                ChatEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn claude_uses_every_block_and_skips_streamed_text() {
        let mut p = claude::Claude::default();
        let out = feed(
            &mut p,
            &[
                json!({"type":"system","subtype":"init","session_id":"s1"}),
                json!({"type":"assistant","message":{"content":[
                    {"type":"text","text":"one "},
                    {"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}},
                    {"type":"text","text":"two"}]}}),
                json!({"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":" three"}}}),
                json!({"type":"assistant","message":{"content":[{"type":"text","text":" three"}]}}),
                json!({"type":"result","subtype":"success","is_error":false,"result":"x","session_id":"s1","usage":{"input_tokens":7,"output_tokens":3}}),
            ],
        )
        .unwrap();
        assert_eq!(texts(&out), "one two three");
        assert_eq!(out.session.as_deref(), Some("s1"));
        assert_eq!(out.usage.unwrap().input, 7);
        assert!(out.done);
        assert!(out
            .events
            .iter()
            .any(|e| matches!(e, ChatEvent::ToolCallStart { call, .. } if call.name == "Bash")));
    }

    #[test]
    fn claude_error_results_fail() {
        let mut p = claude::Claude::default();
        let e = feed(
            &mut p,
            &[json!({"type":"result","is_error":true,"result":"bad key"})],
        )
        .err()
        .unwrap();
        assert!(e.message.contains("bad key"));
    }

    #[test]
    fn codex_and_gemini_lines_read() {
        let out = feed(
            &mut codex::Codex,
            &[
                json!({"type":"thread.started","thread_id":"th"}),
                json!({"type":"item.completed","item":{"type":"reasoning","text":"hmm"}}),
                json!({"type":"item.completed","item":{"type":"agent_message","text":"hi"}}),
                json!({"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":4,"output_tokens":2}}),
            ],
        )
        .unwrap();
        assert_eq!(texts(&out), "hi");
        assert_eq!(out.session.as_deref(), Some("th"));
        assert_eq!(out.usage.unwrap().input, 6);
        assert!(feed(
            &mut codex::Codex,
            &[json!({"type":"turn.failed","error":{"message":"x"}})]
        )
        .is_err());
        let out = feed(
            &mut gemini::Gemini,
            &[
                json!({"type":"init","session_id":"g1"}),
                json!({"type":"message","role":"user","content":"echo"}),
                json!({"type":"message","role":"assistant","content":"an","delta":true}),
                json!({"type":"message","role":"assistant","content":"swer","delta":true}),
                json!({"type":"result","status":"success","stats":{"input_tokens":5,"output_tokens":2}}),
            ],
        )
        .unwrap();
        assert_eq!(texts(&out), "answer");
        assert_eq!(out.usage.unwrap().output, 2);
    }

    /// Loads one `cli` pool written as TOML lines; the error text if refused.
    fn check(pool: &str) -> Result<crate::config::Config, String> {
        let dir =
            std::env::temp_dir().join(format!("troupe-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        let text = format!("[[pools]]\nname = \"c\"\nkind = \"cli\"\nmodels = [\"m\"]\n{pool}\n");
        std::fs::write(&path, text).unwrap();
        let r = crate::app::load_config(&path).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn cli_pools_validate_naming_the_key() {
        assert!(check("preset = \"claude\"").is_ok());
        assert!(check("preset = \"custom\"\ncommand = [\"llm\", \"{prompt}\"]").is_ok());
        for (pool, key) in [
            ("", "pools[0].preset:"),
            ("preset = \"bard\"", "pools[0].preset:"),
            ("preset = \"custom\"", "pools[0].command:"),
            (
                "preset = \"custom\"\ncommand = [\"llm\"]",
                "pools[0].command:",
            ),
            (
                "preset = \"claude\"\ncommand = [\"x\", \"{prompt}\"]",
                "pools[0].command:",
            ),
            (
                "preset = \"custom\"\ncommand = [\"x\", \"{prompt}\"]\noutput_format = \"xml\"",
                "pools[0].output_format:",
            ),
            ("preset = \"claude\"\nmax_line = 10", "pools[0].max_line:"),
            ("preset = \"claude\"\nsessions = 0", "pools[0].sessions:"),
        ] {
            let e = check(pool).err().unwrap_or_default();
            assert!(e.starts_with(key), "{pool:?}: {e}");
        }
        let e = check("preset = \"claude\"\n[[pools.accounts]]\nname = \"a\"\napi_key = \"k\"")
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("pools[0].accounts[0].api_key:"), "{e}");
    }

    #[tokio::test]
    async fn long_lines_are_refused() {
        let data = b"short\nlooooooooong\n".to_vec();
        let mut r = BufReader::new(&data[..]);
        let mut buf = Vec::new();
        assert!(next_line(&mut r, 8, &mut buf).await.unwrap());
        assert_eq!(buf, b"short");
        assert!(next_line(&mut r, 8, &mut buf).await.is_err());
    }

    #[test]
    fn backend_names_are_not_models_and_resume_sends_the_newest_turn() {
        let cfg = crate::config::from_value(
            json!({"pools": [{
                "name": "c", "kind": "cli", "models": ["claude", "opus=claude-opus-4"], "preset": "claude"
            }]}),
            crate::upstream::registry::check_pool,
        )
        .unwrap();
        let pool = &cfg.pools[0];
        let ctx = UpstreamContext {
            pool,
            account: None,
            http: crate::upstream::http::client::HttpClient::new(std::time::Duration::from_secs(5))
                .unwrap(),
        };
        let cli = Cli::new(&ctx).unwrap();
        let req = ChatRequest {
            system: Some("be brief".into()),
            messages: vec![
                Message::text(Role::User, "first"),
                Message::text(Role::Assistant, "ok"),
                Message::text(Role::User, "second"),
            ],
            ..ChatRequest::default()
        };
        let a = cli.args(&req, "claude", None);
        assert!(!a.contains(&"--model".to_owned()));
        assert!(a.contains(&"be brief".to_owned()));
        assert!(a.last().unwrap().contains("first"));
        let a = cli.args(&req, "claude-opus-4", Some("s9"));
        assert!(a
            .windows(2)
            .any(|w| w[0] == "--model" && w[1] == "claude-opus-4"));
        assert!(a.windows(2).any(|w| w[0] == "--resume" && w[1] == "s9"));
        assert_eq!(a.last().unwrap(), "second");
    }
}

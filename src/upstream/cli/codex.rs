//! Codex's `exec --json` lines.

use serde_json::Value;

use super::{Out, Parser};
use crate::canonical::{ErrorKind, UpstreamError, Usage};

/// Reads Codex's JSON lines: `thread.started` (the thread id to resume),
/// completed `agent_message` and `reasoning` items, `turn.completed` with
/// usage, and `error` / `turn.failed`.
#[derive(Debug, Default)]
pub struct Codex;

impl Parser for Codex {
    fn line(&mut self, v: &Value, out: &mut Out) -> Result<(), UpstreamError> {
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "thread.started" => {
                if let Some(id) = v.get("thread_id").and_then(Value::as_str) {
                    out.session = Some(id.to_owned());
                }
            }
            "item.completed" => {
                let item = v.get("item").unwrap_or(&Value::Null);
                let text = item.get("text").and_then(Value::as_str).unwrap_or("");
                match item.get("type").and_then(Value::as_str) {
                    Some("agent_message") => out.text(text),
                    Some("reasoning") => out.thinking(text),
                    _ => {}
                }
            }
            "turn.completed" => {
                if let Some(u) = v.get("usage") {
                    let n = |k: &str| {
                        u.get(k)
                            .and_then(Value::as_u64)
                            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
                    };
                    let cached = n("cached_input_tokens");
                    out.usage = Some(Usage {
                        // Codex counts cached tokens inside input_tokens.
                        input: n("input_tokens").saturating_sub(cached),
                        output: n("output_tokens"),
                        cache_read: cached,
                        cache_write: 0,
                    });
                }
                out.done = true;
            }
            "turn.failed" => {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("turn failed");
                return Err(UpstreamError::new(
                    ErrorKind::Unavailable,
                    format!("codex: {message}"),
                ));
            }
            "error" => {
                let message = v.get("message").and_then(Value::as_str).unwrap_or("error");
                return Err(UpstreamError::new(
                    ErrorKind::Unavailable,
                    format!("codex: {message}"),
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

//! Claude Code's `--output-format stream-json --verbose` lines.

use serde_json::Value;

use super::{Out, Parser};
use crate::canonical::{ErrorKind, UpstreamError, Usage};

/// Reads Claude Code's JSON lines: `system` (session id), `assistant`
/// messages (every content block), optional `stream_event` deltas and the
/// final `result`.
#[derive(Debug, Default)]
pub struct Claude {
    /// Text arrived as `stream_event` deltas since the last `assistant`
    /// message, so that message's text blocks would repeat it.
    streamed_text: bool,
    streamed_thinking: bool,
}

impl Parser for Claude {
    fn line(&mut self, v: &Value, out: &mut Out) -> Result<(), UpstreamError> {
        if let Some(id) = v.get("session_id").and_then(Value::as_str) {
            if !id.is_empty() {
                out.session = Some(id.to_owned());
            }
        }
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "stream_event" => self.stream_event(v.get("event").unwrap_or(&Value::Null), out),
            "assistant" => self.assistant(v, out),
            "result" => result(v, out)?,
            _ => {}
        }
        Ok(())
    }
}

impl Claude {
    fn stream_event(&mut self, ev: &Value, out: &mut Out) {
        if ev.get("type").and_then(Value::as_str) != Some("content_block_delta") {
            return;
        }
        let delta = ev.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    self.streamed_text = true;
                    out.text(t);
                }
            }
            Some("thinking_delta") => {
                if let Some(t) = delta.get("thinking").and_then(Value::as_str) {
                    self.streamed_thinking = true;
                    out.thinking(t);
                }
            }
            _ => {}
        }
    }

    /// Every content block of the message, not only the first.
    fn assistant(&mut self, v: &Value, out: &mut Out) {
        let blocks = v
            .pointer("/message/content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") if !self.streamed_text => {
                    if let Some(t) = b.get("text").and_then(Value::as_str) {
                        out.text(t);
                    }
                }
                Some("thinking") if !self.streamed_thinking => {
                    if let Some(t) = b.get("thinking").and_then(Value::as_str) {
                        out.thinking(t);
                    }
                }
                Some("tool_use") => {
                    let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = b.get("name").and_then(Value::as_str).unwrap_or("tool");
                    let input = b
                        .get("input")
                        .cloned()
                        .unwrap_or(Value::Object(Default::default()));
                    out.tool_call(id, name, &input.to_string());
                }
                _ => {}
            }
        }
        self.streamed_text = false;
        self.streamed_thinking = false;
    }
}

/// The final line: usage, and the answer's text when no message carried it.
fn result(v: &Value, out: &mut Out) -> Result<(), UpstreamError> {
    if v.get("is_error").and_then(Value::as_bool) == Some(true)
        || v.get("subtype")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("error"))
    {
        let message = v
            .get("result")
            .and_then(Value::as_str)
            .or_else(|| v.get("subtype").and_then(Value::as_str))
            .unwrap_or("claude reported an error");
        return Err(UpstreamError::new(
            ErrorKind::Unavailable,
            format!("claude: {message}"),
        ));
    }
    if !out.any_text {
        if let Some(t) = v.get("result").and_then(Value::as_str) {
            out.text(t);
        }
    }
    if let Some(u) = v.get("usage") {
        out.usage = Some(usage(u));
    }
    out.done = true;
    Ok(())
}

/// Anthropic-style usage; cached tokens are counted apart.
pub fn usage(u: &Value) -> Usage {
    let n = |k: &str| {
        u.get(k)
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Usage {
        input: n("input_tokens"),
        output: n("output_tokens"),
        cache_read: n("cache_read_input_tokens"),
        cache_write: n("cache_creation_input_tokens"),
    }
}

//! Gemini CLI's `--output-format stream-json` lines.

use serde_json::Value;

use super::{Out, Parser};
use crate::canonical::{ErrorKind, UpstreamError, Usage};

/// Reads Gemini CLI's JSON lines: `init` (session id), `message` (only the
/// assistant's; the user's prompt is echoed too), `tool_use`, `error` and
/// the final `result` with its token stats.
#[derive(Debug, Default)]
pub struct Gemini;

impl Parser for Gemini {
    fn line(&mut self, v: &Value, out: &mut Out) -> Result<(), UpstreamError> {
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "init" => {
                if let Some(id) = v.get("session_id").and_then(Value::as_str) {
                    if !id.is_empty() {
                        out.session = Some(id.to_owned());
                    }
                }
            }
            "message" if v.get("role").and_then(Value::as_str) == Some("assistant") => {
                if let Some(t) = v.get("content").and_then(Value::as_str) {
                    out.text(t);
                }
            }
            "tool_use" => {
                let id = v.get("tool_id").and_then(Value::as_str).unwrap_or("");
                let name = v.get("tool_name").and_then(Value::as_str).unwrap_or("tool");
                let args = v
                    .get("parameters")
                    .cloned()
                    .unwrap_or(Value::Object(Default::default()));
                out.tool_call(id, name, &args.to_string());
            }
            // Warnings are not the end of the answer.
            "error" if v.get("severity").and_then(Value::as_str) != Some("warning") => {
                let message = v.get("message").and_then(Value::as_str).unwrap_or("error");
                return Err(UpstreamError::new(
                    ErrorKind::Unavailable,
                    format!("gemini: {message}"),
                ));
            }
            "result" => {
                if v.get("status").and_then(Value::as_str) == Some("error") {
                    let message = v
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("error");
                    return Err(UpstreamError::new(
                        ErrorKind::Unavailable,
                        format!("gemini: {message}"),
                    ));
                }
                if let Some(s) = v.get("stats").or_else(|| v.get("usage")) {
                    let n = |k: &str| {
                        s.get(k)
                            .and_then(Value::as_u64)
                            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
                    };
                    let usage = Usage {
                        input: n("input_tokens").max(n("prompt_tokens")),
                        output: n("output_tokens").max(n("candidates_tokens")),
                        ..Usage::default()
                    };
                    if usage != Usage::default() {
                        out.usage = Some(usage);
                    }
                }
                out.done = true;
            }
            _ => {}
        }
        Ok(())
    }
}

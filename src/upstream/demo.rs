//! The built-in `demo` upstream: no network, deterministic answers streamed
//! at a configurable pace. It lets the gateway answer out of the box and
//! gives tests and benchmarks an upstream with no moving parts.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{EventSink, Upstream};
use crate::canonical::{ChatEvent, ChatRequest, Role, StopReason, Tool, ToolChoice, UpstreamError};
use crate::config::PoolConfig;

/// The opening of every demo answer.
pub const PREFIX: &str = "This is the troupe demo model. You said: ";

/// A demo session.
pub struct Demo {
    delay: Duration,
}

impl Demo {
    pub fn new(pool: &PoolConfig) -> Self {
        Demo {
            delay: pool.chunk_delay.unwrap_or(Duration::from_millis(20)),
        }
    }
}

/// What the demo model decides to answer.
#[derive(Debug, PartialEq)]
enum Plan {
    Text(String),
    Call { name: String, arguments: String },
}

fn plan(req: &ChatRequest) -> Plan {
    if let Some(last) = req.messages.last() {
        if last.role == Role::Tool {
            return Plan::Text(format!("The tool returned: {}", last.joined_text()));
        }
    }
    let said = req.last_user_text().unwrap_or_default();
    if let Some(tool) = chosen_tool(req, &said) {
        return Plan::Call {
            name: tool.name.clone(),
            arguments: arguments_for(&tool.parameters).to_string(),
        };
    }
    Plan::Text(format!("{PREFIX}{said}"))
}

fn chosen_tool<'a>(req: &'a ChatRequest, said: &str) -> Option<&'a Tool> {
    let mentioned = || {
        let lower = said.to_lowercase();
        req.tools
            .iter()
            .find(|t| lower.contains(&t.name.to_lowercase()))
    };
    match &req.tool_choice {
        Some(ToolChoice::None) => None,
        Some(ToolChoice::Tool(name)) => req.tools.iter().find(|t| &t.name == name),
        Some(ToolChoice::Required) => mentioned().or(req.tools.first()),
        Some(ToolChoice::Auto) | None => mentioned(),
    }
}

/// Arguments that satisfy a JSON schema's declared properties.
fn arguments_for(schema: &Value) -> Value {
    let mut out = Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            out.insert(name.clone(), value_for(prop));
        }
    }
    Value::Object(out)
}

fn value_for(prop: &Value) -> Value {
    if let Some(first) = prop
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("number") | Some("integer") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        Some("object") => arguments_for(prop),
        _ => json!("demo"),
    }
}

/// Splits text into word chunks, each word with the spaces after it.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word_end = rest.find(' ').unwrap_or(rest.len());
        let end = rest[word_end..]
            .find(|c| c != ' ')
            .map_or(rest.len(), |i| word_end + i);
        let (w, r) = rest.split_at(end);
        rest = r;
        Some(w)
    })
}

#[async_trait]
impl Upstream for Demo {
    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        sink.send(ChatEvent::Start {
            model: model.to_owned(),
        })
        .await?;
        match plan(req) {
            Plan::Text(mut text) => {
                let limit = req.sampling.max_tokens.map_or(usize::MAX, |n| n as usize);
                let mut stop = StopReason::End;
                // Like a real model, stop before the earliest stop sequence.
                if let Some(cut) = req
                    .sampling
                    .stop
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    text.truncate(cut);
                    stop = StopReason::StopSequence;
                }
                for (i, w) in words(&text).enumerate() {
                    if i >= limit {
                        stop = StopReason::Length;
                        break;
                    }
                    if !self.delay.is_zero() {
                        tokio::time::sleep(self.delay).await;
                    }
                    sink.send(ChatEvent::TextDelta(w.to_owned())).await?;
                }
                sink.send(ChatEvent::Stop(stop)).await?;
            }
            Plan::Call { name, arguments } => {
                sink.send(ChatEvent::ToolCallStart {
                    index: 0,
                    id: format!("call_demo_{}", name),
                    name,
                })
                .await?;
                // Stream the arguments in pieces, as real models do.
                let third = arguments.len().div_ceil(3).max(1);
                let mut rest = arguments.as_str();
                while !rest.is_empty() {
                    let mut cut = third.min(rest.len());
                    while !rest.is_char_boundary(cut) {
                        cut += 1;
                    }
                    let (piece, r) = rest.split_at(cut);
                    rest = r;
                    if !self.delay.is_zero() {
                        tokio::time::sleep(self.delay).await;
                    }
                    sink.send(ChatEvent::ToolCallArgsDelta {
                        index: 0,
                        json: piece.to_owned(),
                    })
                    .await?;
                }
                sink.send(ChatEvent::Stop(StopReason::ToolUse)).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{ContentPart, Message};

    #[test]
    fn words_keep_their_spaces() {
        let w: Vec<_> = words("a bc  d").collect();
        assert_eq!(w, vec!["a ", "bc  ", "d"]);
        assert_eq!(words("").count(), 0);
    }

    #[test]
    fn plans_text_tool_calls_and_tool_replies() {
        let mut req = ChatRequest {
            messages: vec![Message::text(Role::User, "what is the weather")],
            ..Default::default()
        };
        assert_eq!(
            plan(&req),
            Plan::Text(format!("{PREFIX}what is the weather"))
        );
        req.tools.push(Tool {
            name: "weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["c", "f"]}
            }}),
        });
        match plan(&req) {
            Plan::Call { name, arguments } => {
                assert_eq!(name, "weather");
                let v: Value = serde_json::from_str(&arguments).unwrap();
                assert_eq!(v, json!({"city": "demo", "days": 1, "unit": "c"}));
            }
            other => panic!("expected a call, got {other:?}"),
        }
        req.tool_choice = Some(ToolChoice::None);
        assert!(matches!(plan(&req), Plan::Text(_)));
        req.messages.push(Message {
            role: Role::Tool,
            content: vec![ContentPart::ToolResult {
                call_id: "x".into(),
                content: vec![ContentPart::Text("sunny".into())],
                is_error: false,
            }],
            name: None,
        });
        assert_eq!(plan(&req), Plan::Text("The tool returned: sunny".into()));
    }
}

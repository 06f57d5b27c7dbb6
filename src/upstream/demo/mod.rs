//! The built-in `demo` upstream: no network, deterministic answers streamed
//! at a configurable pace. It lets the gateway answer out of the box and
//! gives tests and benchmarks an upstream with no moving parts.

pub(crate) mod config;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{EventSink, Upstream};
use crate::canonical::{
    ChatEvent, ChatRequest, ErrorKind, Role, StopReason, Tool, ToolChoice, UpstreamError,
};
use crate::config::PoolConfig;

/// The opening of every demo answer.
pub const PREFIX: &str = "This is the troupe demo model. You said: ";

/// A demo session.
pub struct Demo {
    delay: Duration,
    /// With `credential_ttl`, the session "logs in" and its token expires,
    /// like the web-chat accounts it stands in for.
    ttl: Option<Duration>,
    login: Mutex<Option<Login>>,
}

/// A simulated login: an opaque token and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Login {
    token: String,
    expires: SystemTime,
}

impl Login {
    fn fresh(ttl: Duration) -> Self {
        Login {
            token: format!("demo-{}", uuid::Uuid::new_v4().simple()),
            expires: SystemTime::now() + ttl,
        }
    }

    fn valid(&self) -> bool {
        self.expires > SystemTime::now()
    }
}

impl Demo {
    pub fn new(pool: &PoolConfig) -> Result<Self, String> {
        let own: config::Settings = pool
            .settings(&|k| k.to_owned())
            .map_err(|e| e.to_string())?;
        Ok(Demo {
            delay: own.chunk_delay.unwrap_or(Duration::from_millis(20)),
            ttl: own.credential_ttl,
            login: Mutex::new(None),
        })
    }

    fn login(&self) -> std::sync::MutexGuard<'_, Option<Login>> {
        crate::support::sync::lock(&self.login)
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
    fn native_tools(&self) -> bool {
        true
    }

    async fn establish(&self) -> Result<(), UpstreamError> {
        if let Some(ttl) = self.ttl {
            let mut login = self.login();
            if !login.as_ref().is_some_and(Login::valid) {
                *login = Some(Login::fresh(ttl));
            }
        }
        Ok(())
    }

    async fn refresh(&self) -> Result<bool, UpstreamError> {
        let Some(ttl) = self.ttl else {
            return Ok(false);
        };
        *self.login() = Some(Login::fresh(ttl));
        Ok(true)
    }

    fn expires_at(&self) -> Option<SystemTime> {
        self.login().as_ref().map(|l| l.expires)
    }

    fn export_credentials(&self) -> Option<Value> {
        let login = self.login().clone()?;
        let expires = login.expires.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        Some(json!({"token": login.token, "expires_unix": expires}))
    }

    /// Its simulated logins stand for real ones.
    fn shares_credentials(&self) -> bool {
        self.ttl.is_some()
    }

    fn import_credentials(&self, cached: Value) -> bool {
        let (Some(token), Some(expires)) = (
            cached.get("token").and_then(Value::as_str),
            cached.get("expires_unix").and_then(Value::as_f64),
        ) else {
            return false;
        };
        let Some(expires) = Duration::try_from_secs_f64(expires)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
        else {
            return false;
        };
        let login = Login {
            token: token.to_owned(),
            expires,
        };
        if self.ttl.is_none() || !login.valid() {
            return false;
        }
        *self.login() = Some(login);
        true
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        sink: &EventSink,
    ) -> Result<(), UpstreamError> {
        crate::canonical::fault::maybe_panic(req, "session");
        if self.ttl.is_some() && !self.login().as_ref().is_some_and(Login::valid) {
            return Err(UpstreamError::new(
                ErrorKind::Auth,
                "demo credentials expired",
            ));
        }
        sink.send(ChatEvent::Start {
            model: model.to_owned(),
        })
        .await?;
        match plan(req) {
            Plan::Text(mut text) => {
                let limit = req.sampling.max_tokens.map_or(usize::MAX, |n| n as usize);
                let mut stop = StopReason::End;
                // Like a real model, stop before the earliest stop sequence.
                let matched = req
                    .sampling
                    .stop
                    .iter()
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
                    .min_by_key(|(at, _)| *at);
                let mut sequence = None;
                if let Some((cut, s)) = matched {
                    text.truncate(cut);
                    stop = StopReason::StopSequence;
                    sequence = Some(s.clone());
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
                if let (StopReason::StopSequence, Some(s)) = (stop, sequence) {
                    sink.send(ChatEvent::StopSequence(s)).await?;
                }
                sink.send(ChatEvent::Stop(stop)).await?;
            }
            Plan::Call { name, arguments } => {
                sink.send(ChatEvent::tool_call_start(
                    0,
                    format!("call_demo_{}", name),
                    name,
                ))
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
    use crate::canonical::Message;

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
        req.messages.push(Message::tool_result("x", "sunny"));
        assert_eq!(plan(&req), Plan::Text("The tool returned: sunny".into()));
    }
}

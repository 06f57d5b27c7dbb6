use serde_json::Value;

/// One chat turn as the gateway understands it, whichever protocol it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The public model name the client asked for.
    pub model: String,
    /// The leading system prompt (OpenAI's leading system/developer messages,
    /// Anthropic's `system`).
    pub system: Option<String>,
    /// The conversation, oldest first. System messages that appear later in
    /// the conversation stay here with [`Role::System`].
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<Tool>,
    /// How the model must use `tools`; `None` means the upstream default.
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools at once (`None`: upstream default).
    pub parallel_tool_calls: Option<bool>,
    /// Sampling parameters, each optional.
    pub sampling: Sampling,
    /// Whether the client wants a stream.
    pub stream: bool,
    /// Whether an OpenAI streaming client asked for a usage chunk.
    pub include_usage: bool,
    /// End-user id given by the client (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// The conversation id the client named (thread id, user), if any.
    pub affinity: Option<String>,
    /// Conversation keys, set by the HTTP layer once the caller is known.
    pub conversation: Option<super::Conversation>,
    /// OpenAI `response_format`, passed through to upstreams that understand it.
    pub response_format: Option<Value>,
    /// OpenAI `reasoning_effort`, passed through to upstreams that understand it.
    pub reasoning_effort: Option<String>,
    /// Anthropic extended thinking: the token budget when enabled.
    pub thinking_budget: Option<u32>,
    /// The prompt's token count once counted (see [`super::tokens`]).
    pub prompt_tokens: super::tokens::PromptTokens,
    /// The request as the client sent it. An upstream of the same protocol
    /// gets this body with only the model and the streaming fields
    /// changed, so every field, modelled here or not, arrives unchanged
    /// and in its exact form (`max_completion_tokens`, system blocks,
    /// `cache_control` where it was).
    pub native: Option<Native>,
    /// The decoder accepted something the protocol's own servers refuse
    /// (a `system` role inside Anthropic `messages`, a tool without a
    /// schema) and repaired it: the body cannot go upstream as it came.
    pub repaired: bool,
    /// What the client sent that the canonical model cannot carry (an
    /// OpenAI `file` part, an Anthropic server tool), by name: an upstream
    /// of the client's protocol gets it with the body; for any other it is
    /// named as dropped.
    pub untranslated: Vec<String>,
    /// Tools a Responses client declared free-form (`custom`, such as
    /// Codex's `apply_patch`): offered upstream as functions taking one
    /// string, `input`; calls to them go back as `custom_tool_call` items.
    pub free_form_tools: Vec<String>,
    /// Chat Completions members a client of another OpenAI protocol set,
    /// under their Chat Completions names (`prompt_cache_key`,
    /// `service_tier`, `safety_identifier`, `verbosity`): an OpenAI
    /// upstream takes them as they are; others are told they were dropped.
    pub openai_extras: serde_json::Map<String, Value>,
}

/// A chat protocol on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAiChat,
    AnthropicMessages,
    OpenAiResponses,
}

/// A client's request body as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Native {
    pub wire: Wire,
    pub body: bytes::Bytes,
}

/// What an upstream kind takes: a wire protocol's whole request, or text
/// (with the few request fields it honours besides the conversation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    Wire(Wire),
    Text {
        /// Top-level request keys, in either protocol's names.
        honours: &'static [&'static str],
    },
}

impl ChatRequest {
    /// The client's body, if it is in `wire`: the one an upstream speaking
    /// `wire` should get.
    pub fn native_in(&self, wire: Wire) -> Option<&bytes::Bytes> {
        self.native
            .as_ref()
            .filter(|n| n.wire == wire && !self.repaired)
            .map(|n| &n.body)
    }
}

impl ChatRequest {
    /// The thinking budget to ask an Anthropic upstream for: the client's
    /// own, else one derived from an OpenAI `reasoning_effort`, kept below
    /// `max_tokens` as Anthropic requires. `None` leaves thinking off.
    pub fn effective_thinking_budget(&self, max_tokens: u32) -> Option<u32> {
        const MIN_BUDGET: u32 = 1024;
        let wanted = self
            .thinking_budget
            .or(match self.reasoning_effort.as_deref() {
                Some("minimal") | Some("low") => Some(1024),
                Some("medium") => Some(4096),
                Some("high") => Some(16384),
                _ => None,
            })?;
        let budget = wanted.min(max_tokens.saturating_sub(1));
        (budget >= MIN_BUDGET).then_some(budget)
    }

    /// The `reasoning_effort` to ask an OpenAI upstream for: the client's
    /// own, else one derived from an Anthropic thinking budget.
    pub fn effective_reasoning_effort(&self) -> Option<&str> {
        if let Some(e) = self.reasoning_effort.as_deref() {
            return Some(e);
        }
        self.thinking_budget.map(|b| match b {
            0..=2048 => "low",
            2049..=8192 => "medium",
            _ => "high",
        })
    }
}

/// Sampling parameters. `None` leaves the upstream's default in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool result; its content is one [`ContentPart::ToolResult`].
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentPart>,
    /// Optional participant name (OpenAI `name`).
    pub name: Option<String>,
}

impl Message {
    /// A message holding one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![ContentPart::Text(text.into())],
            name: None,
        }
    }

    /// An assistant message calling one tool.
    #[cfg(test)]
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Self {
        Message {
            role: Role::Assistant,
            content: vec![ContentPart::ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            }],
            name: None,
        }
    }

    /// A tool message answering call `call_id` with `text`.
    #[cfg(test)]
    pub fn tool_result(call_id: &str, text: &str) -> Self {
        Message {
            role: Role::Tool,
            content: vec![ContentPart::ToolResult {
                call_id: call_id.into(),
                content: vec![ContentPart::Text(text.into())],
                is_error: false,
            }],
            name: None,
        }
    }

    /// The message's text parts joined, the way a text-only upstream sees it.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            match part {
                ContentPart::Text(t) => push_para(&mut out, t),
                ContentPart::ToolResult { content, .. } => {
                    for inner in content {
                        if let ContentPart::Text(t) = inner {
                            push_para(&mut out, t);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

fn push_para(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(text);
}

/// A piece of message content.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text(String),
    Image(ImageSource),
    /// A call the assistant made; `arguments` is the JSON text of the input.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result of a tool call, answered by the client.
    ToolResult {
        call_id: String,
        content: Vec<ContentPart>,
        is_error: bool,
    },
    /// Model reasoning; the signature must travel with it back to Anthropic.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Encrypted reasoning an Anthropic upstream gave and wants back verbatim.
    RedactedThinking {
        data: String,
    },
    /// Reasoning an OpenAI Responses upstream gave: its summary, and its
    /// `encrypted_content`, which only such an upstream reads (others never
    /// get it).
    EncryptedReasoning {
        summary: String,
        data: String,
    },
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An http(s) URL the upstream fetches itself.
    Url(String),
    /// Inline bytes, base64-encoded.
    Base64 { media_type: String, data: String },
}

impl ImageSource {
    /// Parses `data:<mime>;base64,<data>` URLs into inline images; any other
    /// URL stays a URL.
    pub fn from_url(url: &str) -> Self {
        if let Some(rest) = url.strip_prefix("data:") {
            if let Some((meta, data)) = rest.split_once(',') {
                if let Some(media_type) = meta.strip_suffix(";base64") {
                    return ImageSource::Base64 {
                        media_type: media_type.to_owned(),
                        data: data.to_owned(),
                    };
                }
            }
        }
        ImageSource::Url(url.to_owned())
    }

    /// The image as a URL (inline images become `data:` URLs).
    pub fn to_url(&self) -> String {
        match self {
            ImageSource::Url(u) => u.clone(),
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

/// How the model must use the offered tools.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Must call some tool (OpenAI `required`, Anthropic `any`).
    Required,
    /// Must call this tool.
    Tool(String),
}

impl ChatRequest {
    /// The text of the newest user message, if the conversation ends with one.
    pub fn last_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(Message::joined_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinking_budget_and_reasoning_effort_translate() {
        let mut req = ChatRequest {
            thinking_budget: Some(3000),
            ..Default::default()
        };
        assert_eq!(req.effective_reasoning_effort(), Some("medium"));
        assert_eq!(req.effective_thinking_budget(8000), Some(3000));
        // Anthropic needs the budget below max_tokens, and at least 1024.
        assert_eq!(req.effective_thinking_budget(2000), Some(1999));
        assert_eq!(req.effective_thinking_budget(1000), None);
        req.thinking_budget = None;
        req.reasoning_effort = Some("high".into());
        assert_eq!(req.effective_thinking_budget(32000), Some(16384));
        assert_eq!(req.effective_reasoning_effort(), Some("high"));
        req.reasoning_effort = None;
        assert_eq!(req.effective_thinking_budget(32000), None);
    }

    #[test]
    fn data_urls_become_inline_images_and_back() {
        let img = ImageSource::from_url("data:image/png;base64,AAAA");
        assert_eq!(
            img,
            ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "AAAA".into()
            }
        );
        assert_eq!(img.to_url(), "data:image/png;base64,AAAA");
        assert_eq!(
            ImageSource::from_url("https://x/y.png"),
            ImageSource::Url("https://x/y.png".into())
        );
    }
}

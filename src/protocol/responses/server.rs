//! The Responses API, server side: request bodies decoded into the
//! canonical model (with what only this frontend uses kept beside it, in
//! [`Echo`]), and answers encoded as a response object or as its stream of
//! events.

use std::sync::Arc;

use bytes::{BufMut as _, BytesMut};
use serde_json::{json, Value};

use super::events;
use super::wire::{
    ContentIn, EchoOut, EventOut, FormatIn, IncompleteOut, InputDetailsOut, ItemIn, ItemOut,
    OutputDetailsOut, OutputTextOut, PartIn, ReasoningOut, ResponseErrorOut, ResponseOut,
    ResponsesRequest, SummaryTextOut, TextOut, ToolChoiceIn, ToolIn, UsageOut,
};
use crate::canonical::{
    Answer, ChatEvent, ChatRequest, ContentPart, ErrorKind, ImageSource, Message, Role, Sampling,
    StopReason, Tool, ToolChoice, UpstreamError, Usage, UsageTally,
};
use crate::protocol::encoder::{CallOrder, CallRoute};
use crate::protocol::{parse_json, DecodeError, EventEncoder};
use crate::support::ids::{random_id, unix_now};

/// Top-level fields the gateway honours whatever the upstream: the input,
/// tools (built-in ones are named apart), storage and streaming.
pub const ALWAYS_TAKEN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "stream",
    "tools",
    "tool_choice",
    "store",
    "previous_response_id",
    "include",
    "metadata",
    "user",
];

/// What an OpenAI (Chat Completions) upstream takes besides.
pub const TAKEN_BY_OPENAI: &[&str] = &[
    "temperature",
    "top_p",
    "max_output_tokens",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "prompt_cache_key",
    "service_tier",
    "safety_identifier",
];

/// What an Anthropic upstream takes besides (`reasoning.effort` becomes a
/// thinking budget).
pub const TAKEN_BY_ANTHROPIC: &[&str] = &[
    "temperature",
    "top_p",
    "max_output_tokens",
    "parallel_tool_calls",
    "reasoning",
];

/// Marks an Anthropic thinking signature carried in a reasoning item's
/// `encrypted_content`, so it goes back to Anthropic on the next turn.
const SIGNATURE_MARK: &str = "troupe-signature:";
/// What other upstreams than OpenAI Responses ones do not get.
pub const ENCRYPTED_REASONING: &str = "reasoning.encrypted_content";

/// Marks Anthropic redacted thinking carried the same way.
const REDACTED_MARK: &str = "troupe-redacted:";

/// The request as a Responses client will see it echoed in the response
/// object, and what only this frontend acts on.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Option<String>,
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// Whether reasoning items carry `encrypted_content`
    /// (`include: ["reasoning.encrypted_content"]`).
    pub encrypted_reasoning: bool,
    pub metadata: Value,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub text_format: Value,
    pub reasoning_effort: Option<String>,
    pub reasoning_summary: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub parallel_tool_calls: bool,
    pub user: Option<String>,
    /// The input items as sent (a string input becomes one message), for
    /// `GET /responses/{id}/input_items`.
    pub input_items: Vec<ItemIn>,
    /// Tools of `namespace` groups: the name the upstream knows them by
    /// (`<namespace>__<name>`), the namespace, and the tool's own name,
    /// which calls carry back with their `namespace`.
    pub namespaced: Vec<(String, String, String)>,
}

/// The tools of a request, as they are read.
#[derive(Default)]
struct ToolSet {
    tools: Vec<Tool>,
    free_form: Vec<String>,
    echo: Vec<Value>,
    namespaced: Vec<(String, String, String)>,
}

/// A decoded request: the canonical one and what goes beside it.
pub type Decoded = (ChatRequest, Echo);

/// Decodes a Responses request body.
pub fn decode_request(body: &[u8]) -> Result<Decoded, DecodeError> {
    let wire: ResponsesRequest = parse_json(body)?;
    let decoded = from_wire(wire)?;
    crate::protocol::check_ranges(&decoded.0, 2.0)?;
    Ok(decoded)
}

fn unsupported(field: &str, what: &str) -> DecodeError {
    DecodeError::new(
        field,
        format!("`{field}` {what} is not supported by this gateway"),
    )
}

fn from_wire(w: ResponsesRequest) -> Result<Decoded, DecodeError> {
    if w.model.is_empty() {
        return Err(DecodeError::new("model", "`model` must not be empty"));
    }
    if w.background == Some(true) {
        return Err(unsupported("background", "= true"));
    }
    if w.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(DecodeError::new(
            "conversation",
            "`conversation` objects are not supported: use `previous_response_id`",
        ));
    }
    if w.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(unsupported("prompt", "(a stored prompt template)"));
    }
    let mut untranslated = Vec::new();
    let mut system: Option<String> = None;
    let instructions = match w.instructions {
        None => None,
        Some(super::wire::Instructions::Text(t)) => Some(t),
        Some(super::wire::Instructions::Items(items)) => {
            let mut text = String::new();
            for (i, item) in items.into_iter().enumerate() {
                let at = || format!("instructions[{i}]");
                let parts = message_parts(item.content, &at, &mut untranslated)?;
                for p in parts {
                    if let ContentPart::Text(t) = p {
                        push_para(&mut text, &t);
                    }
                }
            }
            Some(text)
        }
    };
    if let Some(i) = &instructions {
        if !i.is_empty() {
            system = Some(i.clone());
        }
    }
    let items = match w.input {
        None => Vec::new(),
        Some(super::wire::Input::Text(t)) => vec![ItemIn {
            kind: Some("message".into()),
            role: Some("user".into()),
            content: Some(ContentIn::Text(t)),
            ..ItemIn::default()
        }],
        Some(super::wire::Input::Items(items)) => items,
    };
    if items.is_empty() && w.previous_response_id.is_none() {
        return Err(DecodeError::new("input", "`input` must not be empty"));
    }
    let mut set = ToolSet::default();
    for (i, t) in w.tools.unwrap_or_default().into_iter().enumerate() {
        tool(t, &format!("tools[{i}]"), None, &mut set, &mut untranslated)?;
    }
    // Codex sends some models their tools as an `additional_tools` item.
    for (i, item) in items.iter().enumerate() {
        if item.kind.as_deref() != Some("additional_tools") {
            continue;
        }
        for (j, t) in item.tools.iter().flatten().enumerate() {
            let at = format!("input[{i}].tools[{j}]");
            let t: ToolIn = serde_json::from_value(t.clone())
                .map_err(|e| DecodeError::new(at.clone(), format!("invalid tool: {e}")))?;
            tool(t, &at, None, &mut set, &mut untranslated)?;
        }
    }
    let ToolSet {
        tools,
        free_form: free_form_tools,
        echo: tools_echo,
        namespaced,
    } = set;
    let messages = messages_of(&items, &mut system, &mut untranslated)?;
    let (tool_choice, tool_choice_echo) = match w.tool_choice {
        None => (None, json!("auto")),
        Some(ToolChoiceIn::Mode(m)) => {
            let choice = match m.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(DecodeError::new(
                        "tool_choice",
                        format!("`tool_choice` must be auto, none, required or a tool, not `{other}`"),
                    ))
                }
            };
            (Some(choice), json!(m))
        }
        Some(ToolChoiceIn::Tool { kind, name }) => match (kind.as_str(), name) {
            ("function" | "custom", Some(name)) if !name.is_empty() => {
                let echo = json!({"type": kind, "name": name});
                (Some(ToolChoice::Tool(name)), echo)
            }
            ("function" | "custom", _) => {
                return Err(DecodeError::new(
                    "tool_choice.name",
                    "a `tool_choice` of a function or custom tool needs its `name`",
                ))
            }
            ("allowed_tools", _) => {
                push_once(&mut untranslated, "tool_choice.allowed_tools");
                (Some(ToolChoice::Auto), json!("auto"))
            }
            (other, _) => {
                return Err(DecodeError::new(
                    "tool_choice.type",
                    format!(
                        "`tool_choice` forces the built-in tool `{other}`, which only OpenAI's own servers run; \
                         this gateway's upstreams cannot run it"
                    ),
                ))
            }
        },
    };
    let text = w.text.unwrap_or_default();
    let (response_format, text_format) = match text.format {
        None => (None, json!({"type": "text"})),
        Some(f) => format_of(f)?,
    };
    let reasoning = w.reasoning.unwrap_or_default();
    let mut openai_extras = serde_json::Map::new();
    for (key, value) in [
        ("prompt_cache_key", w.prompt_cache_key),
        ("service_tier", w.service_tier),
        ("safety_identifier", w.safety_identifier),
        ("verbosity", text.verbosity),
    ] {
        if let Some(v) = value {
            openai_extras.insert(key.to_owned(), Value::String(v));
        }
    }
    let include = w.include.unwrap_or_default();
    let store = w.store.unwrap_or(true);
    let metadata = w.metadata.map(Value::Object).unwrap_or_else(|| json!({}));
    let echo = Echo {
        instructions,
        store,
        previous_response_id: w.previous_response_id,
        encrypted_reasoning: include.iter().any(|i| i == "reasoning.encrypted_content"),
        metadata,
        tools: tools_echo,
        tool_choice: tool_choice_echo,
        text_format,
        reasoning_effort: reasoning.effort.clone(),
        reasoning_summary: reasoning.summary,
        max_output_tokens: w.max_output_tokens,
        temperature: w.temperature,
        top_p: w.top_p,
        parallel_tool_calls: w.parallel_tool_calls.unwrap_or(true),
        user: w.user.clone(),
        input_items: items,
        namespaced,
    };
    let chat = ChatRequest {
        model: w.model,
        system,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: w.parallel_tool_calls,
        sampling: Sampling {
            temperature: w.temperature,
            top_p: w.top_p,
            max_tokens: w.max_output_tokens,
            ..Sampling::default()
        },
        stream: w.stream.unwrap_or(false),
        include_usage: true,
        affinity: w.user.clone(),
        user: w.user,
        response_format,
        reasoning_effort: reasoning.effort,
        free_form_tools,
        untranslated,
        openai_extras,
        ..ChatRequest::default()
    };
    Ok((chat, echo))
}

fn push_once(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_owned());
    }
}

fn push_para(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(text);
}

/// The schema a free-form (`custom`) tool is offered upstream with: one
/// string, the tool's whole input.
fn free_form_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's whole input, as free-form text."}},
        "required": ["input"],
        "additionalProperties": false
    })
}

/// Reads one tool of `tools` (a namespace: each of its tools, named
/// `<namespace>__<name>` upstream so names stay apart).
fn tool(
    t: ToolIn,
    at: &str,
    namespace: Option<&str>,
    set: &mut ToolSet,
    untranslated: &mut Vec<String>,
) -> Result<(), DecodeError> {
    let named = |name: Option<String>| match name {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(DecodeError::new(
            format!("{at}.name"),
            "a function or custom tool needs a `name`",
        )),
    };
    let upstream_name = |set: &mut ToolSet, name: &str| match namespace {
        Some(ns) => {
            let full = format!("{ns}__{name}");
            set.namespaced
                .push((full.clone(), ns.to_owned(), name.to_owned()));
            full
        }
        None => name.to_owned(),
    };
    match t.kind.as_str() {
        "function" => {
            let name = named(t.name)?;
            let parameters = t
                .parameters
                .filter(|p| !p.is_null())
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            if namespace.is_none() {
                set.echo.push(json!({
                    "type": "function", "name": name, "description": t.description,
                    "parameters": parameters, "strict": false
                }));
            }
            let name = upstream_name(set, &name);
            set.tools.push(Tool {
                name,
                description: t.description,
                parameters,
            });
        }
        "custom" => {
            let name = named(t.name)?;
            let mut description = t.description.clone().unwrap_or_default();
            // A grammar says what the input must look like: the model
            // behind a chat upstream gets it as text.
            if let Some(def) = t.format.as_ref().and_then(|f| f["definition"].as_str()) {
                let syntax = t
                    .format
                    .as_ref()
                    .and_then(|f| f["syntax"].as_str())
                    .unwrap_or("grammar");
                push_para(
                    &mut description,
                    &format!("The input must follow this {syntax} grammar:\n{def}"),
                );
            }
            if namespace.is_none() {
                set.echo.push(json!({
                    "type": "custom", "name": name, "description": t.description,
                    "format": t.format.unwrap_or_else(|| json!({"type": "text"}))
                }));
            }
            let name = upstream_name(set, &name);
            set.free_form.push(name.clone());
            set.tools.push(Tool {
                name,
                description: (!description.is_empty()).then_some(description),
                parameters: free_form_schema(),
            });
        }
        "namespace" if namespace.is_none() => {
            let ns = named(t.name)?;
            for (j, inner) in t.tools.unwrap_or_default().into_iter().enumerate() {
                tool(
                    inner,
                    &format!("{at}.tools[{j}]"),
                    Some(&ns),
                    set,
                    untranslated,
                )?;
            }
        }
        "" => {
            return Err(DecodeError::new(
                format!("{at}.type"),
                "a tool needs a `type`",
            ))
        }
        kind => {
            // A built-in tool (or one newer than this gateway): left out of
            // what a chat upstream sees, named as dropped.
            push_once(untranslated, &format!("{kind} tool"));
        }
    }
    Ok(())
}

/// `text.format` as Chat Completions' `response_format`, and its echo.
fn format_of(f: FormatIn) -> Result<(Option<Value>, Value), DecodeError> {
    match f.kind.as_str() {
        "text" => Ok((None, json!({"type": "text"}))),
        "json_object" => Ok((
            Some(json!({"type": "json_object"})),
            json!({"type": "json_object"}),
        )),
        "json_schema" => {
            let Some(schema) = f.schema else {
                return Err(DecodeError::new(
                    "text.format.schema",
                    "a `json_schema` format needs `schema`",
                ));
            };
            let name = f.name.unwrap_or_else(|| "response".into());
            let mut inner = json!({"name": name, "schema": schema});
            if let Some(d) = &f.description {
                inner["description"] = json!(d);
            }
            if let Some(s) = f.strict {
                inner["strict"] = json!(s);
            }
            let mut echo = inner.clone();
            echo["type"] = json!("json_schema");
            Ok((
                Some(json!({"type": "json_schema", "json_schema": inner})),
                echo,
            ))
        }
        other => Err(DecodeError::new(
            "text.format.type",
            format!("`text.format.type` must be text, json_object or json_schema, not `{other}`"),
        )),
    }
}

/// Where an item or part is in the body (`input[3].content[0]`), spelled
/// out only for an error: most requests have none.
type At<'a> = &'a dyn Fn() -> String;

/// Content parts of a message (or of a tool output).
fn message_parts(
    content: Option<ContentIn>,
    at: At<'_>,
    untranslated: &mut Vec<String>,
) -> Result<Vec<ContentPart>, DecodeError> {
    match content {
        None => Ok(Vec::new()),
        Some(ContentIn::Text(t)) => Ok(vec![ContentPart::Text(t)]),
        Some(ContentIn::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.into_iter().enumerate() {
                if let Some(part) = part(p, &|| format!("{}.content[{j}]", at()), untranslated)? {
                    out.push(part);
                }
            }
            Ok(out)
        }
    }
}

fn part(
    p: PartIn,
    at: At<'_>,
    untranslated: &mut Vec<String>,
) -> Result<Option<ContentPart>, DecodeError> {
    match p.kind.as_str() {
        "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => match p.text {
            Some(t) => Ok(Some(ContentPart::Text(t))),
            None => Err(DecodeError::new(
                format!("{}.text", at()),
                "a text part needs `text`",
            )),
        },
        "refusal" => Ok(Some(ContentPart::Text(p.refusal.unwrap_or_default()))),
        "input_image" => match p.image_url {
            Some(url) => Ok(Some(ContentPart::Image(ImageSource::from_url(&url)))),
            None => {
                // An uploaded file id means nothing to other upstreams.
                push_once(untranslated, "input_image file_id parts");
                Ok(None)
            }
        },
        "input_file" | "input_audio" => {
            push_once(untranslated, &format!("{} parts", p.kind));
            Ok(None)
        }
        other => Err(DecodeError::new(
            format!("{}.type", at()),
            format!("content part type `{other}` is not supported"),
        )),
    }
}

/// Appends an assistant-side part to the conversation: to the assistant
/// message it ends with, or a new one. Reasoning after other content
/// starts a new turn, as it does in the model's own output.
fn push_assistant(messages: &mut Vec<Message>, part: ContentPart) {
    let is_thinking = |p: &ContentPart| {
        matches!(
            p,
            ContentPart::Thinking { .. }
                | ContentPart::RedactedThinking { .. }
                | ContentPart::EncryptedReasoning { .. }
        )
    };
    let thinking = is_thinking(&part);
    if let Some(last) = messages.last_mut() {
        let only_thinking = last.content.iter().all(is_thinking);
        if last.role == Role::Assistant && (!thinking || only_thinking) {
            last.content.push(part);
            return;
        }
    }
    messages.push(Message {
        role: Role::Assistant,
        content: vec![part],
        name: None,
    });
}

/// The conversation of `items`. Leading system and developer messages join
/// `system` (after `instructions`).
fn messages_of(
    items: &[ItemIn],
    system: &mut Option<String>,
    untranslated: &mut Vec<String>,
) -> Result<Vec<Message>, DecodeError> {
    let mut messages: Vec<Message> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = || format!("input[{i}]");
        let kind = item.kind.as_deref().unwrap_or("message");
        let need = |v: &Option<String>, field: &str| {
            v.clone().ok_or_else(|| {
                DecodeError::new(
                    format!("{}.{field}", at()),
                    format!("a `{kind}` item needs `{field}`"),
                )
            })
        };
        match kind {
            "message" => {
                let role = need(&item.role, "role")?;
                let parts = message_parts(item.content.clone(), &at, untranslated)?;
                match role.as_str() {
                    "system" | "developer" if messages.is_empty() => {
                        let mut text = system.take().unwrap_or_default();
                        for p in parts {
                            if let ContentPart::Text(t) = p {
                                push_para(&mut text, &t);
                            }
                        }
                        *system = Some(text);
                    }
                    "system" | "developer" => messages.push(Message {
                        role: Role::System,
                        content: parts,
                        name: None,
                    }),
                    "user" => messages.push(Message {
                        role: Role::User,
                        content: parts,
                        name: None,
                    }),
                    "assistant" => {
                        for p in parts {
                            push_assistant(&mut messages, p);
                        }
                    }
                    other => {
                        return Err(DecodeError::new(
                            format!("{}.role", at()),
                            format!("role `{other}` is not one of user, assistant, system, developer"),
                        ))
                    }
                }
            }
            "additional_tools" => {}
            "function_call" => {
                let call = ContentPart::ToolCall {
                    id: need(&item.call_id, "call_id")?,
                    name: namespaced(item.namespace.as_deref(), need(&item.name, "name")?),
                    arguments: item.arguments.clone().unwrap_or_default(),
                };
                push_assistant(&mut messages, call);
            }
            "custom_tool_call" => {
                let input = item.input.clone().unwrap_or_default();
                let call = ContentPart::ToolCall {
                    id: need(&item.call_id, "call_id")?,
                    name: namespaced(item.namespace.as_deref(), need(&item.name, "name")?),
                    arguments: json!({ "input": input }).to_string(),
                };
                push_assistant(&mut messages, call);
            }
            "local_shell_call" => {
                let call = ContentPart::ToolCall {
                    id: need(&item.call_id, "call_id")?,
                    name: "local_shell".into(),
                    arguments: item.action.clone().unwrap_or(Value::Null).to_string(),
                };
                push_assistant(&mut messages, call);
            }
            "function_call_output" | "custom_tool_call_output" | "local_shell_call_output" => {
                let call_id = need(&item.call_id, "call_id")?;
                let content = match item.output.clone() {
                    None => Vec::new(),
                    Some(ContentIn::Text(t)) => vec![ContentPart::Text(t)],
                    Some(parts @ ContentIn::Parts(_)) => {
                        message_parts(Some(parts), &|| format!("{}.output", at()), untranslated)?
                    }
                };
                messages.push(Message {
                    role: Role::Tool,
                    content: vec![ContentPart::ToolResult {
                        call_id,
                        content,
                        is_error: false,
                    }],
                    name: None,
                });
            }
            "reasoning" => {
                let mut text = String::new();
                for p in item.summary.iter().flatten() {
                    push_para(&mut text, p.text.as_deref().unwrap_or_default());
                }
                match item.encrypted_content.as_deref() {
                    Some(e) if e.starts_with(REDACTED_MARK) => push_assistant(
                        &mut messages,
                        ContentPart::RedactedThinking {
                            data: e[REDACTED_MARK.len()..].to_owned(),
                        },
                    ),
                    Some(e) if e.starts_with(SIGNATURE_MARK) => push_assistant(
                        &mut messages,
                        ContentPart::Thinking {
                            text,
                            signature: Some(e[SIGNATURE_MARK.len()..].to_owned()),
                        },
                    ),
                    Some(data) => {
                        // OpenAI's own encrypted reasoning: only an OpenAI
                        // Responses upstream reads it.
                        push_once(untranslated, ENCRYPTED_REASONING);
                        push_assistant(
                            &mut messages,
                            ContentPart::EncryptedReasoning {
                                summary: text,
                                data: data.to_owned(),
                            },
                        );
                    }
                    None => {
                        if !text.is_empty() {
                            push_assistant(
                                &mut messages,
                                ContentPart::Thinking {
                                    text,
                                    signature: None,
                                },
                            );
                        }
                    }
                }
            }
            "item_reference" => {
                return Err(DecodeError::new(
                    format!("{}.type", at()),
                    "`item_reference` items are not supported: send the item, or use `previous_response_id`",
                ))
            }
            other => {
                return Err(DecodeError::new(
                    format!("{}.type", at()),
                    format!("input item type `{other}` is not supported"),
                ))
            }
        }
    }
    Ok(messages)
}

/// The name the upstream knows a tool by (see [`Echo::namespaced`]).
fn namespaced(namespace: Option<&str>, name: String) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}__{name}"),
        _ => name,
    }
}

/// The `status` and `incomplete_details` of an answer that stopped for `r`.
fn status_of(r: StopReason) -> (&'static str, Option<IncompleteOut>) {
    match r {
        StopReason::Length => (
            "incomplete",
            Some(IncompleteOut {
                reason: "max_output_tokens",
            }),
        ),
        StopReason::ContentFilter => (
            "incomplete",
            Some(IncompleteOut {
                reason: "content_filter",
            }),
        ),
        _ => ("completed", None),
    }
}

pub fn usage_out(u: &Usage) -> UsageOut {
    let input = u.prompt_total();
    UsageOut {
        input_tokens: input,
        input_tokens_details: InputDetailsOut {
            cached_tokens: u.cache_read,
            cache_write_tokens: u.cache_write,
        },
        output_tokens: u.output,
        output_tokens_details: OutputDetailsOut {
            reasoning_tokens: 0,
        },
        total_tokens: input.saturating_add(u.output),
    }
}

/// The `code` of a failed response for an upstream error.
fn error_code(e: &UpstreamError) -> &'static str {
    match e.kind {
        ErrorKind::RateLimited => "rate_limit_exceeded",
        ErrorKind::InvalidRequest => "invalid_prompt",
        _ => "server_error",
    }
}

/// One output item being built.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub slot: Slot,
}

#[derive(Debug, Clone)]
pub enum Slot {
    Message {
        text: String,
    },
    Reasoning {
        text: String,
        /// Carried to the client as `encrypted_content` when it asked.
        encrypted: Option<String>,
        /// Closed to more thinking (a signature went out).
        sealed: bool,
    },
    Call {
        index: u32,
        call_id: String,
        name: String,
        arguments: String,
        /// A free-form tool's call: a `custom_tool_call` item whose input
        /// is the `input` member of the arguments.
        custom: bool,
        /// The namespace of a namespaced tool (`name` is then its own).
        namespace: Option<String>,
    },
}

/// A free-form call's input: the `input` string of its arguments (the
/// arguments as they came if they are not that shape).
fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(mut m)) => match m.remove("input") {
            Some(Value::String(s)) => s,
            _ => arguments.to_owned(),
        },
        _ => arguments.to_owned(),
    }
}

impl Item {
    /// Bytes of text the item holds (to size its JSON).
    fn text_len(&self) -> usize {
        match &self.slot {
            Slot::Message { text } => text.len(),
            Slot::Reasoning {
                text, encrypted, ..
            } => text.len() + encrypted.as_ref().map_or(0, String::len),
            Slot::Call { arguments, .. } => arguments.len(),
        }
    }

    fn out<'a>(&'a self, done: bool, input: &'a str, encrypted_ok: bool) -> ItemOut<'a> {
        let status = if done { "completed" } else { "in_progress" };
        match &self.slot {
            Slot::Message { text } => ItemOut::Message {
                id: &self.id,
                status,
                role: "assistant",
                content: if done {
                    vec![OutputTextOut::new(text)]
                } else {
                    Vec::new()
                },
            },
            Slot::Reasoning {
                text, encrypted, ..
            } => ItemOut::Reasoning {
                id: &self.id,
                summary: if done && !text.is_empty() {
                    vec![SummaryTextOut::new(text)]
                } else {
                    Vec::new()
                },
                encrypted_content: encrypted.as_deref().filter(|_| encrypted_ok && done),
            },
            Slot::Call {
                call_id,
                name,
                arguments,
                custom: false,
                namespace,
                ..
            } => ItemOut::FunctionCall {
                id: &self.id,
                status,
                call_id,
                name,
                namespace: namespace.as_deref(),
                arguments: if done { arguments } else { "" },
            },
            Slot::Call {
                call_id,
                name,
                custom: true,
                namespace,
                ..
            } => ItemOut::CustomToolCall {
                id: &self.id,
                status,
                call_id,
                name,
                namespace: namespace.as_deref(),
                input: if done { input } else { "" },
            },
        }
    }
}

/// Output items of a whole answer: reasoning, the message, then calls.
fn items_of(answer: &Answer, req: &ChatRequest, echo: &Echo) -> Vec<Item> {
    let mut items = Vec::new();
    if !answer.thinking.is_empty() || answer.encrypted_reasoning.is_some() {
        let encrypted = match (&answer.encrypted_reasoning, &answer.signature) {
            (Some(blob), _) => Some(blob.clone()),
            (None, Some(s)) => Some(format!("{SIGNATURE_MARK}{s}")),
            (None, None) => None,
        };
        items.push(Item {
            id: random_id("rs_"),
            slot: Slot::Reasoning {
                text: answer.thinking.clone(),
                encrypted,
                sealed: true,
            },
        });
    }
    for data in &answer.redacted_thinking {
        items.push(Item {
            id: random_id("rs_"),
            slot: Slot::Reasoning {
                text: String::new(),
                encrypted: Some(format!("{REDACTED_MARK}{data}")),
                sealed: true,
            },
        });
    }
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        items.push(Item {
            id: random_id("msg_"),
            slot: Slot::Message {
                text: answer.text.clone(),
            },
        });
    }
    for c in &answer.tool_calls {
        items.push(call_item(
            c.index,
            &c.id,
            &c.name,
            c.arguments.clone(),
            req,
            echo,
        ));
    }
    items
}

fn call_item(
    index: u32,
    id: &str,
    name: &str,
    arguments: String,
    req: &ChatRequest,
    echo: &Echo,
) -> Item {
    let custom = req.free_form_tools.iter().any(|t| t == name);
    let (name, namespace) = match echo.namespaced.iter().find(|(full, ..)| full == name) {
        Some((_, ns, bare)) => (bare.clone(), Some(ns.clone())),
        None => (name.to_owned(), None),
    };
    let call_id = if id.is_empty() {
        format!("call_{index}")
    } else {
        id.to_owned()
    };
    Item {
        id: random_id(if custom { "ctc_" } else { "fc_" }),
        slot: Slot::Call {
            index,
            call_id,
            name,
            arguments,
            custom,
            namespace,
        },
    }
}

/// What a response object needs besides its items.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created_at: u64,
    pub echo: Arc<Echo>,
    /// The echo's JSON members (see [`echo_json`]), made once.
    echo_json: Arc<[u8]>,
}

impl Head {
    pub fn new(id: String, created_at: u64, model: &str, echo: Arc<Echo>) -> Self {
        let echo_json = echo_json(&echo, model).into();
        Head {
            id,
            created_at,
            echo,
            echo_json,
        }
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    Running,
    Stopped(StopReason, &'a Usage),
    Failed(&'a UpstreamError),
}

/// The request's echo in a response object: its JSON members, without the
/// braces, made once per response.
fn echo_json(echo: &Echo, model: &str) -> Vec<u8> {
    let e = echo;
    let out = EchoOut {
        instructions: e.instructions.as_deref(),
        max_output_tokens: e.max_output_tokens,
        model,
        parallel_tool_calls: e.parallel_tool_calls,
        previous_response_id: e.previous_response_id.as_deref(),
        reasoning: (e.reasoning_effort.is_some() || e.reasoning_summary.is_some()).then_some(
            ReasoningOut {
                effort: e.reasoning_effort.as_deref(),
                summary: e.reasoning_summary.as_deref(),
            },
        ),
        store: e.store,
        temperature: e.temperature,
        text: TextOut {
            format: &e.text_format,
        },
        tool_choice: &e.tool_choice,
        tools: &e.tools,
        top_p: e.top_p,
        truncation: "disabled",
        user: e.user.as_deref(),
        metadata: &e.metadata,
    };
    let mut json = Vec::with_capacity(320);
    events::echo(&mut json, &out);
    json
}

/// The response object, as JSON; `output` is its items' JSON array.
fn response(
    head: &Head,
    output: &[u8],
    ending: Ending<'_>,
    error_message: &str,
    error_code: &'static str,
) -> Vec<u8> {
    let (status, incomplete, usage, error) = match ending {
        Ending::Running => ("in_progress", None, None, None),
        Ending::Stopped(r, u) => {
            let (status, incomplete) = status_of(r);
            (status, incomplete, Some(usage_out(u)), None)
        }
        Ending::Failed(_) => (
            "failed",
            None,
            None,
            Some(ResponseErrorOut {
                code: error_code,
                message: error_message,
            }),
        ),
    };
    let body = ResponseOut {
        id: &head.id,
        object: "response",
        created_at: head.created_at,
        status,
        completed_at: (status == "completed").then(unix_now),
        error,
        incomplete_details: incomplete,
        usage,
    };
    let mut out = Vec::with_capacity(256 + output.len() + head.echo_json.len());
    events::response_head(&mut out, &body);
    // The output items and the request's echo, already JSON, go in after.
    out.extend_from_slice(b",\"output\":");
    out.extend_from_slice(output);
    if !head.echo_json.is_empty() {
        out.push(b',');
        out.extend_from_slice(&head.echo_json);
    }
    out.push(b'}');
    out
}

/// The whole-answer body (a response object), and its output items as a
/// stored conversation keeps them.
pub fn completion_body(answer: &Answer, req: &ChatRequest, head: &Head) -> (Vec<u8>, Vec<u8>) {
    let items = items_of(answer, req, &head.echo);
    let (shown, kept) = both_items(&items, head.echo.encrypted_reasoning);
    let usage = answer.usage(req);
    let stop = answer.stop.unwrap_or(StopReason::End);
    let bytes = response(head, &shown, Ending::Stopped(stop, &usage), "", "");
    (bytes, kept.unwrap_or(shown))
}

/// The output items as a JSON array: `encrypted_ok` as the client asked
/// in the response it gets; `true` for what a stored conversation keeps
/// (reasoning with its signature whether or not the client asked to see
/// it, so a continued conversation hands it back).
fn items_json(items: &[Item], encrypted_ok: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + items.iter().map(Item::text_len).sum::<usize>());
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        match &item.slot {
            // The commonest item, by hand (see events.rs).
            Slot::Message { text } => events::message(&mut out, &item.id, Some(text)),
            _ => {
                let input = input_of(item);
                // Serializing into memory cannot fail.
                let _ = serde_json::to_writer(&mut out, &item.out(true, &input, encrypted_ok));
            }
        }
    }
    out.push(b']');
    out
}

/// The output items for the client, and as a stored conversation keeps
/// them when that differs (`None`: the same bytes), which is only when the
/// client did not ask for reasoning's encrypted content.
fn both_items(items: &[Item], encrypted_ok: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let shown = items_json(items, encrypted_ok);
    let differs = !encrypted_ok
        && items.iter().any(|i| {
            matches!(
                &i.slot,
                Slot::Reasoning {
                    encrypted: Some(_),
                    ..
                }
            )
        });
    let kept = differs.then(|| items_json(items, true));
    (shown, kept)
}

/// Rebuilds `chat`'s conversation as the continuation of a stored one:
/// `earlier` (the stored conversation's items), then this request's input.
/// The instructions are this request's own, as in the API.
pub fn continue_from(
    chat: &mut ChatRequest,
    earlier: &[ItemIn],
    echo: &Echo,
) -> Result<(), DecodeError> {
    let mut all = Vec::with_capacity(earlier.len() + echo.input_items.len());
    all.extend_from_slice(earlier);
    all.extend_from_slice(&echo.input_items);
    let mut system = echo.instructions.clone().filter(|i| !i.is_empty());
    let mut untranslated = std::mem::take(&mut chat.untranslated);
    // Errors name the items of this request, which come after the
    // earlier ones.
    chat.messages = messages_of(&all, &mut system, &mut untranslated).map_err(|mut e| {
        e.param = shift_index(&e.param, earlier.len());
        e
    })?;
    chat.system = system;
    chat.untranslated = untranslated;
    // The client's body holds only this turn: it cannot go upstream as it came.
    chat.repaired = true;
    Ok(())
}

/// `input[N]...` with `N` counted from `skip` items later.
fn shift_index(param: &str, skip: usize) -> String {
    let Some(rest) = param.strip_prefix("input[") else {
        return param.to_owned();
    };
    let Some((n, tail)) = rest.split_once(']') else {
        return param.to_owned();
    };
    match n.parse::<usize>() {
        Ok(n) if n >= skip => format!("input[{}]{tail}", n - skip),
        _ => format!("previous_response_id (stored item {n}{tail})"),
    }
}

/// Input items as stored: each with an id and a status, message content as
/// parts (the shape `GET /responses/{id}/input_items` lists).
pub fn stored_input(items: &[ItemIn]) -> Vec<ItemIn> {
    items.iter().map(stored_item).collect()
}

/// One input item as it is stored (see [`stored_input`]).
fn stored_item(item: &ItemIn) -> ItemIn {
    let mut item = item.clone();
    let kind = item.kind.get_or_insert_with(|| "message".into()).clone();
    if item.id.is_none() {
        let prefix = match kind.as_str() {
            "message" => "msg_",
            "function_call" => "fc_",
            "custom_tool_call" => "ctc_",
            "reasoning" => "rs_",
            _ => "item_",
        };
        item.id = Some(random_id(prefix));
    }
    if kind == "message" {
        if let Some(ContentIn::Text(t)) = &item.content {
            let t = t.clone();
            item.content = Some(ContentIn::Parts(vec![PartIn {
                kind: text_part_of(item.role.as_deref()).into(),
                text: Some(t),
                ..PartIn::default()
            }]));
        }
    }
    if item.status.is_none() && kind != "reasoning" {
        item.status = Some("completed".into());
    }
    item
}

/// The part a message's plain-text content becomes.
fn text_part_of(role: Option<&str>) -> &'static str {
    if role == Some("assistant") {
        "output_text"
    } else {
        "input_text"
    }
}

/// [`stored_input`] as a JSON array, as a stored response keeps it. A
/// message of plain text (what a string `input` becomes, and the commonest
/// item) is written by hand, as [`stored_item`] would make it.
pub fn stored_input_json(items: &[ItemIn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + items.len() * 128);
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        match item {
            ItemIn {
                kind,
                id,
                role,
                content: Some(ContentIn::Text(text)),
                status,
                name: None,
                call_id: None,
                arguments: None,
                input: None,
                output: None,
                summary: None,
                encrypted_content: None,
                action: None,
                namespace: None,
                tools: None,
            } if kind.as_deref().is_none_or(|k| k == "message") => {
                let id = match id {
                    Some(id) => std::borrow::Cow::Borrowed(id.as_str()),
                    None => std::borrow::Cow::Owned(random_id("msg_")),
                };
                events::stored_message(
                    &mut out,
                    &id,
                    role.as_deref(),
                    text_part_of(role.as_deref()),
                    text,
                    status.as_deref().unwrap_or("completed"),
                );
            }
            _ => {
                // Serializing into memory cannot fail.
                let _ = serde_json::to_writer(&mut out, &stored_item(item));
            }
        }
    }
    out.push(b']');
    out
}

/// A free-form call's input (empty for other items).
fn input_of(item: &Item) -> String {
    match &item.slot {
        Slot::Call {
            custom: true,
            arguments,
            ..
        } => custom_input(arguments),
        _ => String::new(),
    }
}

/// Called once a streamed response has ended, with the response object
/// and its output items as a stored conversation keeps them (JSON).
pub type OnEnd = Box<dyn FnOnce(&[u8], &[u8])>;

/// Encodes events as the Responses stream: `response.created` and
/// `response.in_progress`, one output item per reasoning, text or tool-call
/// run (added, its parts and deltas, done with the whole item), and one
/// terminal event (`response.completed`, `response.incomplete` or
/// `response.failed`) with the whole response, each event numbered.
///
/// Items never overlap, whatever order the upstream's events come in: as
/// in the Anthropic encoder, a call's item stays open until the end once
/// it is open (a later fragment may still be its own), and calls, text and
/// reasoning that arrive meanwhile are held and written whole at the end.
pub struct StreamEncoder {
    head: Head,
    req: Arc<ChatRequest>,
    seq: u64,
    started: bool,
    items: Vec<Item>,
    /// Whether the last item is still open.
    open: bool,
    calls: CallOrder,
    held: Vec<ChatEvent>,
    stop: Option<StopReason>,
    failed: bool,
    tally: UsageTally,
    on_end: Option<OnEnd>,
    /// The start of the open message item's text deltas.
    delta_prefix: BytesMut,
}

impl StreamEncoder {
    /// An encoder for the answer to `req`; `on_end` gets the response
    /// once it ended (to store it).
    pub fn new(head: Head, req: Arc<ChatRequest>, on_end: Option<OnEnd>) -> Self {
        StreamEncoder {
            head,
            req,
            seq: 0,
            started: false,
            items: Vec::new(),
            open: false,
            calls: CallOrder::default(),
            held: Vec::new(),
            stop: None,
            failed: false,
            tally: UsageTally::new(true),
            on_end,
            delta_prefix: BytesMut::new(),
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let json = response(&self.head, b"[]", Ending::Running, "", "");
        // Room for both events and the first item's: one allocation, not
        // a growth per event.
        out.reserve(2 * json.len() + 768);
        write_response_event("response.created", &json, self.seq, out);
        write_response_event("response.in_progress", &json, self.seq + 1, out);
        self.seq += 2;
    }

    fn open_kind(&self) -> Option<&Slot> {
        self.open
            .then(|| self.items.last().map(|i| &i.slot))
            .flatten()
    }

    fn in_call(&self) -> bool {
        self.open_call_index().is_some()
    }

    /// The index of the call whose item is open.
    fn open_call_index(&self) -> Option<u32> {
        match self.open_kind() {
            Some(Slot::Call { index, .. }) => Some(*index),
            _ => None,
        }
    }

    /// Opens `item` (closing the open one) and writes its `added` events.
    fn open_item(&mut self, item: Item, out: &mut BytesMut) {
        self.close(out);
        let output_index = self.items.len();
        if let Slot::Message { .. } = &item.slot {
            self.delta_prefix = events::delta_prefix(&item.id, output_index);
            events::message_item(out, output_index, &item.id, None, self.seq);
            events::content_part(out, false, &item.id, output_index, "", self.seq + 1);
            self.seq += 2;
        } else {
            let added = item.out(false, "", false);
            write_event(
                &EventOut::ItemAdded {
                    output_index,
                    item: &added,
                },
                self.seq,
                out,
            );
            self.seq += 1;
            if let Slot::Reasoning { .. } = &item.slot {
                write_event(
                    &EventOut::SummaryPartAdded {
                        item_id: &item.id,
                        output_index,
                        summary_index: 0,
                        part: SummaryTextOut::new(""),
                    },
                    self.seq,
                    out,
                );
                self.seq += 1;
            }
        }
        self.items.push(item);
        self.open = true;
    }

    /// Closes the open item: its `done` events, then the whole item.
    fn close(&mut self, out: &mut BytesMut) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let output_index = self.items.len() - 1;
        let Some(item) = self.items.last() else {
            return;
        };
        let mut seq = self.seq;
        let mut put = |ev: &EventOut<'_>, out: &mut BytesMut| {
            write_event(ev, seq, out);
            seq += 1;
        };
        let input = input_of(item);
        let id = &item.id;
        match &item.slot {
            Slot::Message { text } => {
                // All three by hand: the item is the whole answer's text,
                // in each of them (room made once).
                out.reserve(3 * text.len() + 768);
                events::output_text_done(out, id, output_index, text, self.seq);
                events::content_part(out, true, id, output_index, text, self.seq + 1);
                events::message_item(out, output_index, id, Some(text), self.seq + 2);
                self.seq += 3;
                return;
            }
            Slot::Reasoning { text, .. } => {
                put(
                    &EventOut::SummaryTextDone {
                        item_id: id,
                        output_index,
                        summary_index: 0,
                        text,
                    },
                    out,
                );
                put(
                    &EventOut::SummaryPartDone {
                        item_id: id,
                        output_index,
                        summary_index: 0,
                        part: SummaryTextOut::new(text),
                    },
                    out,
                );
            }
            Slot::Call { custom: true, .. } => {
                // The input is a string inside the arguments' JSON: it is
                // known whole only at the end, so it goes out as one delta.
                if !input.is_empty() {
                    put(
                        &EventOut::CustomInputDelta {
                            item_id: id,
                            output_index,
                            delta: &input,
                        },
                        out,
                    );
                }
                put(
                    &EventOut::CustomInputDone {
                        item_id: id,
                        output_index,
                        input: &input,
                    },
                    out,
                );
            }
            Slot::Call {
                name, arguments, ..
            } => put(
                &EventOut::ArgumentsDone {
                    item_id: id,
                    output_index,
                    name,
                    arguments,
                },
                out,
            ),
        }
        let done = item.out(true, &input, self.head.echo.encrypted_reasoning);
        put(
            &EventOut::ItemDone {
                output_index,
                item: &done,
            },
            out,
        );
        self.seq = seq;
    }

    fn open_call(&mut self, index: u32, id: &str, name: &str, out: &mut BytesMut) {
        let item = call_item(index, id, name, String::new(), &self.req, &self.head.echo);
        self.open_item(item, out);
    }

    fn flush_held(&mut self, out: &mut BytesMut) {
        for call in self.calls.take() {
            self.open_call(call.index, &call.id, &call.name, out);
            self.args(&call.arguments, out);
            self.close(out);
        }
        for ev in std::mem::take(&mut self.held) {
            self.content(&ev, out);
        }
    }

    /// Appends argument text to the open call.
    fn args(&mut self, json: &str, out: &mut BytesMut) {
        if json.is_empty() {
            return;
        }
        let output_index = self.items.len() - 1;
        let Some(Item {
            id,
            slot: Slot::Call {
                arguments, custom, ..
            },
        }) = self.items.last_mut()
        else {
            return;
        };
        arguments.push_str(json);
        if !*custom {
            write_event(
                &EventOut::ArgumentsDelta {
                    item_id: id,
                    output_index,
                    delta: json,
                },
                self.seq,
                out,
            );
            self.seq += 1;
        }
    }

    fn content(&mut self, ev: &ChatEvent, out: &mut BytesMut) {
        match ev {
            ChatEvent::TextDelta(t) | ChatEvent::ThinkingDelta(t) if t.is_empty() => {}
            ChatEvent::TextDelta(_)
            | ChatEvent::ThinkingDelta(_)
            | ChatEvent::ThinkingSignature(_)
            | ChatEvent::RedactedThinking(_)
            | ChatEvent::EncryptedReasoning(_)
                if self.in_call() =>
            {
                self.held.push(ev.clone());
            }
            ChatEvent::TextDelta(t) => {
                if !matches!(self.open_kind(), Some(Slot::Message { .. })) {
                    let item = Item {
                        id: random_id("msg_"),
                        slot: Slot::Message {
                            // A short answer's room at once.
                            text: String::with_capacity(t.len().max(256)),
                        },
                    };
                    self.open_item(item, out);
                }
                if let Some(Item {
                    slot: Slot::Message { text },
                    ..
                }) = self.items.last_mut()
                {
                    text.push_str(t);
                    events::text_delta(out, &self.delta_prefix, t, self.seq);
                    self.seq += 1;
                }
            }
            ChatEvent::ThinkingDelta(t) => {
                self.reasoning_item(out);
                let output_index = self.items.len() - 1;
                if let Some(Item {
                    id,
                    slot: Slot::Reasoning { text, .. },
                }) = self.items.last_mut()
                {
                    text.push_str(t);
                    write_event(
                        &EventOut::SummaryTextDelta {
                            item_id: id,
                            output_index,
                            summary_index: 0,
                            delta: t,
                        },
                        self.seq,
                        out,
                    );
                    self.seq += 1;
                }
            }
            ChatEvent::ThinkingSignature(s) => {
                self.reasoning_item(out);
                if let Some(Item {
                    slot:
                        Slot::Reasoning {
                            encrypted, sealed, ..
                        },
                    ..
                }) = self.items.last_mut()
                {
                    *encrypted = Some(format!("{SIGNATURE_MARK}{s}"));
                    *sealed = true;
                }
            }
            ChatEvent::EncryptedReasoning(blob) => {
                if !matches!(self.open_kind(), Some(Slot::Reasoning { .. })) {
                    let item = Item {
                        id: random_id("rs_"),
                        slot: Slot::Reasoning {
                            text: String::new(),
                            encrypted: None,
                            sealed: true,
                        },
                    };
                    self.open_item(item, out);
                }
                if let Some(Item {
                    slot:
                        Slot::Reasoning {
                            encrypted, sealed, ..
                        },
                    ..
                }) = self.items.last_mut()
                {
                    *encrypted = Some(blob.clone());
                    *sealed = true;
                }
            }
            ChatEvent::RedactedThinking(data) => {
                let item = Item {
                    id: random_id("rs_"),
                    slot: Slot::Reasoning {
                        text: String::new(),
                        encrypted: Some(format!("{REDACTED_MARK}{data}")),
                        sealed: true,
                    },
                };
                self.open_item(item, out);
                self.close(out);
            }
            ChatEvent::ToolCallStart { index, call } => {
                let (id, name) = (&call.id, &call.name);
                if self.calls.start(self.open_call_index(), *index, id, name) == CallRoute::Open {
                    self.open_call(*index, id, name, out);
                }
            }
            ChatEvent::ToolCallArgsDelta { index, json } if !json.is_empty() => {
                match self
                    .calls
                    .args(self.open_call_index(), *index, json, "call_")
                {
                    CallRoute::Write => self.args(json, out),
                    CallRoute::Orphan { id } => {
                        // Arguments without a start: give the call an item
                        // (now, or held) rather than drop its input.
                        let name = String::new();
                        let start = ChatEvent::tool_call_start(*index, id, name);
                        self.content(&start, out);
                        self.content(ev, out);
                    }
                    CallRoute::Open | CallRoute::Hold => {}
                }
            }
            ChatEvent::ToolCallArgsDelta { .. } => {}
            ChatEvent::Start { .. }
            | ChatEvent::Usage(_)
            | ChatEvent::StopSequence(_)
            | ChatEvent::AnthropicBlock(_)
            | ChatEvent::Stop(_)
            | ChatEvent::Error(_) => {}
        }
    }

    /// The open reasoning item that may take more thinking, or a new one.
    fn reasoning_item(&mut self, out: &mut BytesMut) {
        if !matches!(
            self.open_kind(),
            Some(Slot::Reasoning { sealed: false, .. })
        ) {
            let item = Item {
                id: random_id("rs_"),
                slot: Slot::Reasoning {
                    text: String::new(),
                    encrypted: None,
                    sealed: false,
                },
            };
            self.open_item(item, out);
        }
    }

    /// The terminal event for `ending`, with every item.
    fn terminal(&mut self, ending: Ending<'_>, out: &mut BytesMut) {
        let (shown, kept) = both_items(&self.items, self.head.echo.encrypted_reasoning);
        let (message, code) = match ending {
            Ending::Failed(e) => (e.message.as_str(), error_code(e)),
            _ => ("", ""),
        };
        let json = response(&self.head, &shown, ending, message, code);
        let name = match ending {
            Ending::Failed(_) => "response.failed",
            Ending::Stopped(r, _) if status_of(r).0 == "incomplete" => "response.incomplete",
            _ => "response.completed",
        };
        write_response_event(name, &json, self.seq, out);
        self.seq += 1;
        if let Some(on_end) = self.on_end.take() {
            on_end(&json, kept.as_deref().unwrap_or(&shown));
        }
    }
}

/// Writes `ev` as an SSE event with its `sequence_number`.
fn write_event(ev: &EventOut<'_>, seq: u64, out: &mut BytesMut) {
    out.put_slice(b"event: ");
    out.put_slice(ev.name().as_bytes());
    out.put_slice(b"\ndata: ");
    // Writing to memory cannot fail; serialization of these types cannot either.
    let _ = serde_json::to_writer(out.writer(), ev);
    end_event(out, seq);
}

/// Ends an event's JSON object (written up to its closing brace) with its
/// `sequence_number`, and the event.
fn end_event(out: &mut BytesMut, seq: u64) {
    if out.last() == Some(&b'}') {
        out.truncate(out.len() - 1);
    }
    events::close(out, seq);
}

/// Writes a lifecycle event (`response.created`...) around the response
/// object's JSON, serialized once for all the events that carry it.
fn write_response_event(name: &str, response: &[u8], seq: u64, out: &mut BytesMut) {
    out.reserve(response.len() + name.len() + 64);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: {\"type\":\"");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\",\"response\":");
    out.put_slice(response);
    out.put_u8(b'}');
    end_event(out, seq);
}

impl EventEncoder for StreamEncoder {
    fn usage(&self, req: &ChatRequest) -> Option<Usage> {
        Some(self.tally.finish(req))
    }

    fn tally(&mut self) -> Option<&mut UsageTally> {
        Some(&mut self.tally)
    }

    fn write_error(e: &UpstreamError, out: &mut BytesMut) {
        // No state left: a bare failed response.
        let head = Head::new(
            random_id("resp_"),
            unix_now(),
            "",
            Arc::new(Echo::default()),
        );
        let json = response(&head, b"[]", Ending::Failed(e), &e.message, error_code(e));
        write_response_event("response.failed", &json, 0, out);
    }

    fn event(&mut self, ev: &ChatEvent, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        self.tally.observe(ev);
        if ev.is_preamble() {
            return;
        }
        self.start(out);
        match ev {
            ChatEvent::Error(e) => {
                self.failed = true;
                self.close(out);
                self.terminal(Ending::Failed(e), out);
            }
            // Items close at the end, not here: fragments may still come
            // with or after the stop.
            ChatEvent::Stop(r) => {
                if self.stop.is_none() {
                    self.stop = Some(*r);
                }
            }
            _ => self.content(ev, out),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.is_some()
    }

    fn finish(&mut self, req: &ChatRequest, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        self.start(out);
        self.close(out);
        self.flush_held(out);
        self.close(out);
        let usage = self.tally.finish(req);
        let stop = self.stop.unwrap_or(StopReason::End);
        self.terminal(Ending::Stopped(stop, &usage), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_input_json_is_the_stored_items() {
        let text = |kind: Option<&str>, role: Option<&str>, t: &str| ItemIn {
            kind: kind.map(Into::into),
            id: Some(format!("msg_{}", t.len())),
            role: role.map(Into::into),
            content: Some(ContentIn::Text(t.into())),
            ..ItemIn::default()
        };
        let mut call = ItemIn {
            kind: Some("function_call".into()),
            id: Some("fc_1".into()),
            name: Some("f".into()),
            call_id: Some("call_1".into()),
            arguments: Some("{}".into()),
            ..ItemIn::default()
        };
        let items = vec![
            text(Some("message"), Some("user"), "hi \"there\"\n"),
            text(None, Some("assistant"), "ünï 🎉"),
            text(None, None, "no role"),
            ItemIn {
                status: Some("incomplete".into()),
                ..text(Some("message"), Some("developer"), "be brief")
            },
            call.clone(),
        ];
        let want = serde_json::to_string(&stored_input(&items)).unwrap();
        assert_eq!(String::from_utf8(stored_input_json(&items)).unwrap(), want);
        // Without ids, each item gets a new one of its kind.
        call.id = None;
        let fresh = vec![
            ItemIn {
                id: None,
                ..text(None, Some("user"), "x")
            },
            call,
        ];
        let got: Vec<Value> = serde_json::from_slice(&stored_input_json(&fresh)).unwrap();
        assert!(got[0]["id"].as_str().unwrap().starts_with("msg_"));
        assert!(got[1]["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(got[0]["content"][0]["type"], "input_text");
    }
}

//! Serde types of the Responses API wire format (`POST /v1/responses`).
//! Requests are read leniently into flat structs (unknown fields ignored,
//! `null` as absent) so a type error names its exact field; what each item
//! type needs is checked after. Response types borrow, so encoding copies
//! no text.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /responses` body.
#[derive(Debug, Default, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub instructions: Option<Instructions>,
    #[serde(default)]
    pub input: Option<Input>,
    #[serde(default)]
    pub tools: Option<Vec<ToolIn>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceIn>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub reasoning: Option<ReasoningIn>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub text: Option<TextIn>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
}

/// `instructions`: a string, or (rarely) input items.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of input items")]
pub enum Instructions {
    Text(String),
    Items(Vec<ItemIn>),
}

/// `input`: a string (one user message) or a list of items.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of input items")]
pub enum Input {
    Text(String),
    Items(Vec<ItemIn>),
}

/// One input item, every type's fields side by side.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ItemIn {
    /// Absent on the short message form (`{"role", "content"}`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `function_call`, `custom_tool_call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// `function_call`: the arguments' JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// `custom_tool_call`: the free-form input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `*_output` items: a string or content parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ContentIn>,
    /// `reasoning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Vec<PartIn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_content: Option<String>,
    /// `local_shell_call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Value>,
    /// A call of a tool in a `namespace` group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `additional_tools`: tools offered as an input item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
}

/// Message content (or a tool output): a string or parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum ContentIn {
    Text(String),
    Parts(Vec<PartIn>),
}

/// One content part (`input_text`, `output_text`, `input_image`,
/// `input_file`, `refusal`, `summary_text`, `reasoning_text`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PartIn {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One tool of `tools`: `function`, `custom`, a namespace of those, or a
/// built-in tool (`web_search`, `file_search`...) only OpenAI runs.
#[derive(Debug, Deserialize)]
pub struct ToolIn {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
    /// `custom`: the input's format (free text or a grammar).
    #[serde(default)]
    pub format: Option<Value>,
    /// `namespace`: the tools it groups.
    #[serde(default)]
    pub tools: Option<Vec<ToolIn>>,
}

/// `tool_choice`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "auto, none, required or a tool object")]
pub enum ToolChoiceIn {
    Mode(String),
    Tool {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        name: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
pub struct ReasoningIn {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TextIn {
    #[serde(default)]
    pub format: Option<FormatIn>,
    #[serde(default)]
    pub verbosity: Option<String>,
}

/// `text.format`: `text`, `json_object` or `json_schema` (flat: the schema
/// sits beside the type, unlike Chat Completions' `response_format`).
#[derive(Debug, Default, Deserialize)]
pub struct FormatIn {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// The response object, in bodies and in the stream's lifecycle events:
/// what changes as the answer goes (this), then its `output` items and the
/// request's echo ([`EchoOut`], serialized once per response), both
/// written after it as JSON already made.
#[derive(Debug, Serialize)]
pub struct ResponseOut<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created_at: u64,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    pub error: Option<ResponseErrorOut<'a>>,
    pub incomplete_details: Option<IncompleteOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
    // `output` follows, written from its items' JSON.
}

/// The members of a response object that echo its request.
#[derive(Debug, Serialize)]
pub struct EchoOut<'a> {
    pub instructions: Option<&'a str>,
    pub max_output_tokens: Option<u32>,
    pub model: &'a str,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<&'a str>,
    pub reasoning: Option<ReasoningOut<'a>>,
    pub store: bool,
    pub temperature: Option<f64>,
    pub text: TextOut<'a>,
    pub tool_choice: &'a Value,
    pub tools: &'a [Value],
    pub top_p: Option<f64>,
    pub truncation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    pub metadata: &'a Value,
}

#[derive(Debug, Serialize)]
pub struct ResponseErrorOut<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IncompleteOut {
    pub reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ReasoningOut<'a> {
    pub effort: Option<&'a str>,
    pub summary: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct TextOut<'a> {
    pub format: &'a Value,
}

/// One output item.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemOut<'a> {
    Message {
        id: &'a str,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputTextOut<'a>>,
    },
    Reasoning {
        id: &'a str,
        summary: Vec<SummaryTextOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<&'a str>,
    },
    FunctionCall {
        id: &'a str,
        status: &'static str,
        call_id: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
        arguments: &'a str,
    },
    CustomToolCall {
        id: &'a str,
        status: &'static str,
        call_id: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
        input: &'a str,
    },
}

/// An `output_text` content part.
#[derive(Debug, Clone, Serialize)]
pub struct OutputTextOut<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
    pub annotations: [(); 0],
    pub logprobs: [(); 0],
}

impl<'a> OutputTextOut<'a> {
    pub fn new(text: &'a str) -> Self {
        OutputTextOut {
            kind: "output_text",
            text,
            annotations: [],
            logprobs: [],
        }
    }
}

/// A `summary_text` part of a reasoning item.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryTextOut<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
}

impl<'a> SummaryTextOut<'a> {
    pub fn new(text: &'a str) -> Self {
        SummaryTextOut {
            kind: "summary_text",
            text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageOut {
    pub input_tokens: u32,
    pub input_tokens_details: InputDetailsOut,
    pub output_tokens: u32,
    pub output_tokens_details: OutputDetailsOut,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct InputDetailsOut {
    pub cached_tokens: u32,
    pub cache_write_tokens: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutputDetailsOut {
    pub reasoning_tokens: u32,
}

/// The stream's item events. Every one carries `sequence_number`, added by
/// the encoder around it. The lifecycle events (`response.created`...) and
/// a message item's events, the commonest, are written without these types
/// (`events.rs`, held to them by its tests).
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum EventOut<'a> {
    #[serde(rename = "response.output_item.added")]
    ItemAdded {
        output_index: usize,
        item: &'a ItemOut<'a>,
    },
    #[serde(rename = "response.output_item.done")]
    ItemDone {
        output_index: usize,
        item: &'a ItemOut<'a>,
    },
    #[cfg(test)]
    #[serde(rename = "response.content_part.added")]
    PartAdded {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        part: OutputTextOut<'a>,
    },
    #[cfg(test)]
    #[serde(rename = "response.content_part.done")]
    PartDone {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        part: OutputTextOut<'a>,
    },
    #[cfg(test)]
    #[serde(rename = "response.output_text.done")]
    TextDone {
        item_id: &'a str,
        output_index: usize,
        content_index: usize,
        text: &'a str,
        logprobs: [(); 0],
    },
    #[serde(rename = "response.reasoning_summary_part.added")]
    SummaryPartAdded {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        part: SummaryTextOut<'a>,
    },
    #[serde(rename = "response.reasoning_summary_part.done")]
    SummaryPartDone {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        part: SummaryTextOut<'a>,
    },
    #[serde(rename = "response.reasoning_summary_text.delta")]
    SummaryTextDelta {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        delta: &'a str,
    },
    #[serde(rename = "response.reasoning_summary_text.done")]
    SummaryTextDone {
        item_id: &'a str,
        output_index: usize,
        summary_index: usize,
        text: &'a str,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta {
        item_id: &'a str,
        output_index: usize,
        delta: &'a str,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone {
        item_id: &'a str,
        output_index: usize,
        name: &'a str,
        arguments: &'a str,
    },
    #[serde(rename = "response.custom_tool_call_input.delta")]
    CustomInputDelta {
        item_id: &'a str,
        output_index: usize,
        delta: &'a str,
    },
    #[serde(rename = "response.custom_tool_call_input.done")]
    CustomInputDone {
        item_id: &'a str,
        output_index: usize,
        input: &'a str,
    },
}

impl EventOut<'_> {
    /// The event's `type`, which is also its SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            EventOut::ItemAdded { .. } => "response.output_item.added",
            EventOut::ItemDone { .. } => "response.output_item.done",
            #[cfg(test)]
            EventOut::PartAdded { .. } => "response.content_part.added",
            #[cfg(test)]
            EventOut::PartDone { .. } => "response.content_part.done",
            #[cfg(test)]
            EventOut::TextDone { .. } => "response.output_text.done",
            EventOut::SummaryPartAdded { .. } => "response.reasoning_summary_part.added",
            EventOut::SummaryPartDone { .. } => "response.reasoning_summary_part.done",
            EventOut::SummaryTextDelta { .. } => "response.reasoning_summary_text.delta",
            EventOut::SummaryTextDone { .. } => "response.reasoning_summary_text.done",
            EventOut::ArgumentsDelta { .. } => "response.function_call_arguments.delta",
            EventOut::ArgumentsDone { .. } => "response.function_call_arguments.done",
            EventOut::CustomInputDelta { .. } => "response.custom_tool_call_input.delta",
            EventOut::CustomInputDone { .. } => "response.custom_tool_call_input.done",
        }
    }
}

//! Serde types of the Anthropic Messages wire format. Request types are read
//! leniently (unknown fields ignored, `null` as absent) because clients such
//! as Claude Code send fields and beta features the gateway has no use for;
//! response types borrow so encoding copies no text.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---- requests, read by the frontend ----

/// `POST /v1/messages` (and `/v1/messages/count_tokens`) body.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub system: Option<SystemIn>,
    /// Required by Anthropic, optional here: `count_tokens` has none and a
    /// missing limit is better answered with the upstream's default.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Option<MetadataIn>,
    #[serde(default)]
    pub tools: Option<Vec<ToolIn>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceIn>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// `{"type": "enabled", "budget_tokens": N}` or `{"type": "disabled"}`.
    #[serde(default)]
    pub thinking: Option<ThinkingIn>,
}

/// `system`: a string or text blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of text blocks")]
pub enum SystemIn {
    Text(String),
    Blocks(Vec<BlockIn>),
}

/// Roles a message may have. `system` is not Anthropic's, but newer Claude
/// Code versions send it inside `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InRole {
    User,
    Assistant,
    System,
}

/// One entry of `messages`.
#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: InRole,
    /// Optional so a missing one is reported with the message's index.
    #[serde(default)]
    pub content: Option<ContentIn>,
}

/// Message or tool result content: a string or blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content blocks")]
pub enum ContentIn {
    Text(String),
    Blocks(Vec<BlockIn>),
}

/// A content block. Kept flat and checked after decoding, so an unsupported
/// `type` or a missing field is reported by name instead of as a failed
/// enum match.
#[derive(Debug, Deserialize)]
pub struct BlockIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    /// `image` and `document` sources.
    #[serde(default)]
    pub source: Option<SourceIn>,
    /// `tool_use`.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
    /// `tool_result`.
    #[serde(default)]
    pub tool_use_id: Option<String>,
    #[serde(default)]
    pub content: Option<ContentIn>,
    #[serde(default)]
    pub is_error: Option<bool>,
    /// `thinking`.
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    /// `redacted_thinking`.
    #[serde(default)]
    pub data: Option<String>,
    /// `document`.
    #[serde(default)]
    pub title: Option<String>,
}

/// Where an image or document comes from.
#[derive(Debug, Deserialize)]
pub struct SourceIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// A `content` document source: blocks of its own.
    #[serde(default)]
    pub content: Option<ContentIn>,
}

/// `metadata`: only `user_id` means anything to the gateway (affinity).
#[derive(Debug, Deserialize)]
pub struct MetadataIn {
    #[serde(default)]
    pub user_id: Option<String>,
}

/// An entry of `tools`. Server tools (`web_search_...`) carry a `type`.
#[derive(Debug, Deserialize)]
pub struct ToolIn {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
}

/// `tool_choice`.
#[derive(Debug, Deserialize)]
pub struct ToolChoiceIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

// ---- responses, written by the frontend ----

/// One streamed event's `data`, tagged by `type` like the event name.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEventOut<'a> {
    MessageStart {
        message: MessageOut<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: BlockOut<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: DeltaOut<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDeltaOut,
        usage: UsageOut,
    },
    MessageStop,
    Error {
        error: ErrorOut<'a>,
    },
}

impl StreamEventOut<'_> {
    /// The SSE `event:` name, which Anthropic keeps equal to `type`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEventOut::MessageStart { .. } => "message_start",
            StreamEventOut::ContentBlockStart { .. } => "content_block_start",
            StreamEventOut::ContentBlockDelta { .. } => "content_block_delta",
            StreamEventOut::ContentBlockStop { .. } => "content_block_stop",
            StreamEventOut::MessageDelta { .. } => "message_delta",
            StreamEventOut::MessageStop => "message_stop",
            StreamEventOut::Error { .. } => "error",
        }
    }
}

/// A whole message: the non-streamed body, and `message_start`'s message.
#[derive(Debug, Serialize)]
pub struct MessageOut<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<BlockOut<'a>>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<&'a str>,
    pub usage: UsageOut,
}

/// A content block of an answer.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockOut<'a> {
    Text {
        text: &'a str,
        /// Sources the text cites (a server tool's results).
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        citations: &'a [Value],
    },
    Thinking {
        thinking: &'a str,
        /// Absent in `content_block_start`, where it arrives as a delta.
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<&'a str>,
    },
    RedactedThinking {
        data: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    /// A block of a type troupe does not model, as the upstream sent it.
    #[serde(untagged)]
    Other(&'a Value),
}

/// A `content_block_delta`'s delta.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // the names are the wire's
pub enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
    ThinkingDelta { thinking: &'a str },
    SignatureDelta { signature: &'a str },
}

/// `message_delta`'s delta: how the message ended.
#[derive(Debug, Serialize)]
pub struct MessageDeltaOut {
    pub stop_reason: Option<&'static str>,
    /// Which stop sequence matched, when the upstream said.
    pub stop_sequence: Option<String>,
}

/// Anthropic usage: cached tokens apart from `input_tokens`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageOut {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_creation_input_tokens: u32,
    pub cache_read_input_tokens: u32,
}

/// The `error` object of an in-stream `error` event.
#[derive(Debug, Serialize)]
pub struct ErrorOut<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub message: &'a str,
}

/// `GET /v1/models` in Anthropic's shape.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub data: Vec<ModelOut<'a>>,
    pub has_more: bool,
    pub first_id: Option<&'a str>,
    pub last_id: Option<&'a str>,
}

/// One model in Anthropic's `/v1/models` shape.
#[derive(Debug, Serialize)]
pub struct ModelOut<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub display_name: &'a str,
    /// RFC 3339.
    pub created_at: Cow<'a, str>,
}

// ---- responses, read by the upstream ----

/// One streamed event from an Anthropic server, tagged by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEventIn {
    MessageStart {
        message: MessageIn,
    },
    ContentBlockStart {
        index: u32,
        content_block: ResponseBlockIn,
    },
    ContentBlockDelta {
        index: u32,
        delta: DeltaIn,
    },
    ContentBlockStop {
        #[serde(default)]
        index: Option<u32>,
    },
    MessageDelta {
        #[serde(default)]
        delta: Option<MessageDeltaIn>,
        #[serde(default)]
        usage: Option<UsageIn>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorBodyIn,
    },
    /// Event types added after this was written are skipped, as the
    /// Anthropic docs ask clients to do.
    #[serde(other)]
    Unknown,
}

/// A message as `message_start` carries it, or a whole non-streamed body.
#[derive(Debug, Default, Deserialize)]
pub struct MessageIn {
    #[serde(default)]
    pub content: Vec<ResponseBlockIn>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<UsageIn>,
}

/// A content block of an answer, as the upstream sends it. Server tool
/// blocks (`web_search_tool_result`...) have fields of their own; only the
/// ones the gateway translates are read.
#[derive(Debug, Deserialize)]
pub struct ResponseBlockIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
}

/// A `content_block_delta`'s delta, flat so unknown delta types are
/// skipped instead of failing the event.
#[derive(Debug, Deserialize)]
pub struct DeltaIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub partial_json: Option<String>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
}

/// `message_delta`'s delta as a server sends it.
#[derive(Debug, Deserialize)]
pub struct MessageDeltaIn {
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// Usage as a server reports it; any field may be missing or `null`.
#[derive(Debug, Default, Deserialize)]
pub struct UsageIn {
    #[serde(default)]
    pub input_tokens: Option<u32>,
    #[serde(default)]
    pub output_tokens: Option<u32>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u32>,
}

/// The `error` object of an upstream error event or error body.
#[derive(Debug, Deserialize)]
pub struct ErrorBodyIn {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// The request's `thinking` setting.
#[derive(Debug, Deserialize)]
pub struct ThinkingIn {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub budget_tokens: Option<u32>,
}

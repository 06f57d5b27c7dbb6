//! Serde types of the Chat Completions wire format. Request types are read
//! leniently (unknown fields ignored, `null` as absent) and written without
//! absent fields; response types borrow so encoding copies no text.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /chat/completions` body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoiceWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Not OpenAI's: a conversation id clients of thread-keeping gateways
    /// send. Read for affinity, never sent upstream.
    #[serde(default, skip_serializing)]
    pub thread_id: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// `stop`: one string or several.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// One message of `messages`. Read as a flat struct so type errors name
/// the exact field; which fields a role needs is checked after.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestMessage {
    pub role: WireRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallWire>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// Message content: a string or content parts.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPartWire>),
}

/// A content part. Kept flat and checked after decoding, so an unsupported
/// `type` is reported by name instead of as a failed enum match.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContentPartWire {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An assistant's tool call inside `messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ToolCallWire {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// An entry of `tools`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: a mode string or a named function.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "\"auto\", \"none\", \"required\" or a named function"
)]
pub enum ToolChoiceWire {
    Mode(String),
    Named {
        #[serde(rename = "type", default = "function_type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

// ---- responses, written by the frontend ----

/// A non-streamed answer.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [CompletionChoice<'a>; 1],
    pub usage: UsageWire,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice<'a> {
    pub index: u32,
    pub message: ResponseMessage<'a>,
    pub finish_reason: &'static str,
    pub logprobs: Option<()>,
}

#[derive(Debug, Serialize)]
pub struct ResponseMessage<'a> {
    pub role: &'static str,
    pub content: Option<&'a str>,
    pub refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: Vec<ToolCallOut<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ToolCallOut<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionOut<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

/// The fields every streamed chunk of one response shares, in wire order
/// (`choices` and `usage` follow).
#[derive(Debug, Serialize)]
pub struct ChunkHead<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
}

#[derive(Debug, Default, Serialize)]
pub struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDeltaOut<'a>; 1]>,
}

#[derive(Debug, Serialize)]
pub struct ToolCallDeltaOut<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDeltaOut<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageWire {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// `GET /models` list.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelOut<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ModelOut<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'a str,
}

/// The error envelope, both written to clients and read from upstreams.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    /// Servers send a string, a number or null here.
    #[serde(default)]
    pub code: Option<Value>,
}

// ---- responses, read by the upstream ----

/// A streamed chunk as an upstream sends it.
#[derive(Debug, Deserialize)]
pub struct ChunkIn {
    #[serde(default)]
    pub choices: Vec<ChoiceIn>,
    #[serde(default)]
    pub usage: Option<UsageIn>,
    #[serde(default)]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChoiceIn {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Option<DeltaIn>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeltaIn {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// Some servers name the reasoning field `reasoning`.
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDeltaIn>>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallDeltaIn {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDeltaIn>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDeltaIn {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UsageIn {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetailsIn>,
}

#[derive(Debug, Deserialize)]
pub struct PromptDetailsIn {
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}

/// A non-streamed completion, read from upstreams that ignore `stream`.
#[derive(Debug, Deserialize)]
pub struct CompletionIn {
    #[serde(default)]
    pub choices: Vec<CompletionChoiceIn>,
    #[serde(default)]
    pub usage: Option<UsageIn>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionChoiceIn {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub message: Option<DeltaIn>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

//! Local token counting, for upstreams that report no usage and for
//! `count_tokens`. The encoder is loaded once at start; if it cannot be
//! loaded, counts fall back to a characters-per-token estimate.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use super::{ChatRequest, ContentPart};

static ENCODER: OnceLock<Option<CoreBPE>> = OnceLock::new();

/// Loads the encoder; call once at start so the first request does not pay.
pub fn init() {
    // Encoding once also builds the encoder's lazily compiled parts.
    count_text("warm up");
}

fn encoder() -> Option<&'static CoreBPE> {
    ENCODER
        .get_or_init(|| match tiktoken_rs::o200k_base() {
            Ok(bpe) => Some(bpe),
            Err(e) => {
                tracing::warn!(error = %e, "tokenizer unavailable, estimating token counts");
                None
            }
        })
        .as_ref()
}

/// Tokens in `text`.
pub fn count_text(text: &str) -> u32 {
    if text.is_empty() {
        return 0;
    }
    let n = match encoder() {
        Some(bpe) => bpe.encode_ordinary(text).len(),
        None => text.chars().count().div_ceil(4),
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Per-message overhead of chat formatting, as OpenAI documents it.
const PER_MESSAGE: u32 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u32 = 3;

/// Prompt tokens of a whole request: system, messages and tool definitions.
pub fn count_request(req: &ChatRequest) -> u32 {
    let mut total = REPLY_PRIMING;
    if let Some(system) = &req.system {
        total += PER_MESSAGE + count_text(system);
    }
    for m in &req.messages {
        total += PER_MESSAGE;
        for part in &m.content {
            total = total.saturating_add(count_part(part));
        }
    }
    for tool in &req.tools {
        total = total.saturating_add(count_text(&tool.name));
        if let Some(d) = &tool.description {
            total = total.saturating_add(count_text(d));
        }
        total = total.saturating_add(count_text(&tool.parameters.to_string()));
    }
    total
}

/// A flat charge for images, roughly what vision models bill for a small one.
const IMAGE_TOKENS: u32 = 85;

fn count_part(part: &ContentPart) -> u32 {
    match part {
        ContentPart::Text(t) => count_text(t),
        ContentPart::Image(_) => IMAGE_TOKENS,
        ContentPart::ToolCall {
            name, arguments, ..
        } => count_text(name) + count_text(arguments),
        ContentPart::ToolResult { content, .. } => content.iter().map(count_part).sum(),
        ContentPart::Thinking { text, .. } => count_text(text),
        ContentPart::RedactedThinking { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};

    #[test]
    fn counts_are_real_token_counts() {
        init();
        // "hello world" is two tokens in every OpenAI encoding.
        assert_eq!(count_text("hello world"), 2);
        assert_eq!(count_text(""), 0);
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "hello world")],
            ..Default::default()
        };
        assert_eq!(count_request(&req), REPLY_PRIMING + PER_MESSAGE + 2);
    }
}

//! The one flattening of a conversation into a single prompt text, for the
//! kinds whose upstream takes one text per turn (`ondemand`, `cli`).

use crate::canonical::{ChatRequest, ContentPart, Message, Role};

/// The query text of one turn. A continued upstream session already holds
/// the earlier turns, so it gets only the newest turn (the user's message
/// and any tool results); a new one gets the conversation so far flattened
/// into one text, the system prompt first. (The tool layer has put any tool
/// instruction at the end of the newest turn.)
pub(crate) fn flatten(req: &ChatRequest, continuing: bool) -> String {
    // The newest turn is everything after the last assistant message.
    let start = req
        .messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .map_or(0, |i| i + 1);
    let (history, newest) = req.messages.split_at(start);
    let newest: Vec<String> = newest
        .iter()
        .map(render)
        .filter(|t| !t.is_empty())
        .collect();
    let newest = newest.join("\n\n");
    let mut sections: Vec<String> = Vec::new();
    if !continuing {
        if let Some(system) = req.system.as_deref().filter(|s| !s.trim().is_empty()) {
            sections.push(system.to_owned());
        }
    }
    if !continuing && !history.is_empty() {
        let mut lines = String::from("Conversation so far:");
        for m in history {
            let text = render(m);
            if text.is_empty() {
                continue;
            }
            let who = match m.role {
                Role::System => "System",
                Role::User => "User",
                Role::Assistant => "Assistant",
                Role::Tool => "Tool",
            };
            lines.push_str(&format!("\n{who}: {text}"));
        }
        sections.push(lines);
    }
    if sections.is_empty() {
        return newest;
    }
    sections.push(newest);
    sections.join("\n\n")
}

/// A message as text: images noted (the query is text only), thinking left
/// out. Tool calls and results never get here: the tool layer has made
/// them text ([`crate::upstream::text::tools`]).
pub(crate) fn render(m: &Message) -> String {
    let mut parts: Vec<String> = Vec::new();
    for p in &m.content {
        match p {
            ContentPart::Text(t) => parts.push(t.clone()),
            ContentPart::Image(_) => parts.push("[image omitted]".to_owned()),
            ContentPart::ToolCall { .. }
            | ContentPart::ToolResult { .. }
            | ContentPart::Thinking { .. }
            | ContentPart::RedactedThinking { .. }
            | ContentPart::EncryptedReasoning { .. } => {}
        }
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> ChatRequest {
        ChatRequest {
            system: Some("Be brief.".into()),
            messages: vec![
                Message::text(Role::User, "first"),
                Message::text(Role::Assistant, "answer one"),
                Message::text(Role::User, "second"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_new_session_gets_the_whole_conversation() {
        let q = flatten(&conversation(), false);
        assert!(q.starts_with("Be brief.\n\n"), "{q}");
        assert!(q.contains("User: first\nAssistant: answer one"), "{q}");
        assert!(q.ends_with("\n\nsecond"), "{q}");
        let single = ChatRequest {
            messages: vec![Message::text(Role::User, "hello")],
            ..Default::default()
        };
        assert_eq!(flatten(&single, false), "hello");
    }

    #[test]
    fn a_continued_session_gets_only_the_newest_turn() {
        assert_eq!(flatten(&conversation(), true), "second");
    }
}

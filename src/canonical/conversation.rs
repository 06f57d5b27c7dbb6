//! Conversation keys, for affinity: turns of one conversation go to the
//! session that served the earlier ones, and stateful upstreams (threads,
//! upstream sessions) continue the upstream conversation instead of
//! starting over.
//!
//! A key is explicit when the client names the conversation (`thread_id`,
//! `user`, Anthropic `metadata.user_id`, or the `x-troupe-conversation`
//! header), else a hash of the conversation so far: a turn's key is the hash
//! of every message before its newest user message, which is the hash the
//! previous turn stored after its answer. Keys are scoped by the client's
//! API key, so conversations are never shared across API keys.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use super::{ChatRequest, ContentPart, Message, Role};

/// The conversation a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversation {
    /// Hash of the client's API key: keys never cross it.
    pub scope: u64,
    /// The key the client named, if it did.
    pub explicit: Option<u64>,
    /// The key earlier turns stored (implicit keys only; `None` for a new
    /// conversation).
    pub lookup: Option<u64>,
}

impl Conversation {
    /// Keys for `req`, sent with the client's `api_key` and an optional
    /// explicit conversation id (header), which wins over body fields.
    pub fn of(req: &ChatRequest, api_key: Option<&str>, header: Option<&str>) -> Self {
        let scope = Self::scope_of(api_key);
        let named = header.or(req.affinity.as_deref()).filter(|s| !s.is_empty());
        let explicit = named.map(|id| {
            let mut h = DefaultHasher::new();
            scope.hash(&mut h);
            "explicit".hash(&mut h);
            id.hash(&mut h);
            h.finish()
        });
        let lookup = match explicit {
            Some(_) => None,
            None => prefix_key(scope, req),
        };
        Conversation {
            scope,
            explicit,
            lookup,
        }
    }

    /// The scope of a client's API key: what it stores is its own.
    pub fn scope_of(api_key: Option<&str>) -> u64 {
        let mut h = DefaultHasher::new();
        "troupe-scope".hash(&mut h);
        api_key.unwrap_or("").hash(&mut h);
        h.finish()
    }

    /// The key to route by: the explicit one, else the lookup.
    pub fn route_key(&self) -> Option<u64> {
        self.explicit.or(self.lookup)
    }

    /// The key the next turn will look up, once this turn's answer is known.
    pub fn next_key(&self, req: &ChatRequest, answer: &str) -> u64 {
        if let Some(k) = self.explicit {
            return k;
        }
        let mut h = ConversationHasher::new(self.scope, req.system.as_deref());
        for m in &req.messages {
            h.message(m);
        }
        h.text(Role::Assistant, answer);
        h.finish()
    }
}

/// Hash of the messages before the newest user message, if that prefix has
/// an assistant turn (otherwise this is a new conversation).
fn prefix_key(scope: u64, req: &ChatRequest) -> Option<u64> {
    let last_user = req.messages.iter().rposition(|m| m.role == Role::User)?;
    let prefix = &req.messages[..last_user];
    if !prefix.iter().any(|m| m.role == Role::Assistant) {
        return None;
    }
    let mut h = ConversationHasher::new(scope, req.system.as_deref());
    for m in prefix {
        h.message(m);
    }
    Some(h.finish())
}

/// Hashes roles and text, the parts every protocol keeps the same when a
/// client sends the conversation back.
struct ConversationHasher(DefaultHasher);

impl ConversationHasher {
    fn new(scope: u64, system: Option<&str>) -> Self {
        let mut h = DefaultHasher::new();
        scope.hash(&mut h);
        system.unwrap_or("").trim().hash(&mut h);
        ConversationHasher(h)
    }

    fn text(&mut self, role: Role, text: &str) {
        (role as u8).hash(&mut self.0);
        text.trim().hash(&mut self.0);
    }

    fn message(&mut self, m: &Message) {
        let mut text = String::new();
        for part in &m.content {
            match part {
                ContentPart::Text(t) => text.push_str(t),
                ContentPart::ToolCall {
                    name, arguments, ..
                } => {
                    text.push_str(name);
                    text.push_str(arguments);
                }
                ContentPart::ToolResult { content, .. } => {
                    for c in content {
                        if let ContentPart::Text(t) = c {
                            text.push_str(t);
                        }
                    }
                }
                _ => {}
            }
        }
        self.text(m.role, &text);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(msgs: &[(Role, &str)]) -> ChatRequest {
        ChatRequest {
            system: Some("sys".into()),
            messages: msgs.iter().map(|(r, t)| Message::text(*r, *t)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_next_turn_finds_the_key_the_last_one_stored() {
        let turn1 = req(&[(Role::User, "hi")]);
        let c1 = Conversation::of(&turn1, Some("k"), None);
        assert_eq!(c1.lookup, None, "a first turn is a new conversation");
        let stored = c1.next_key(&turn1, "hello!");
        let turn2 = req(&[
            (Role::User, "hi"),
            (Role::Assistant, "hello!"),
            (Role::User, "more"),
        ]);
        let c2 = Conversation::of(&turn2, Some("k"), None);
        assert_eq!(c2.lookup, Some(stored));
        // Another API key never shares it; another history neither.
        assert_ne!(
            Conversation::of(&turn2, Some("other"), None).lookup,
            Some(stored)
        );
        let edited = req(&[
            (Role::User, "hi"),
            (Role::Assistant, "bye"),
            (Role::User, "more"),
        ]);
        assert_ne!(
            Conversation::of(&edited, Some("k"), None).lookup,
            Some(stored)
        );
    }

    #[test]
    fn explicit_ids_are_stable_and_scoped() {
        let mut r = req(&[(Role::User, "hi")]);
        r.affinity = Some("thread-1".into());
        let a = Conversation::of(&r, Some("k"), None);
        assert!(a.explicit.is_some() && a.lookup.is_none());
        assert_eq!(a.next_key(&r, "whatever"), a.explicit.unwrap());
        assert_ne!(Conversation::of(&r, Some("k2"), None).explicit, a.explicit);
        let h = Conversation::of(&r, Some("k"), Some("from-header"));
        assert_ne!(h.explicit, a.explicit, "the header wins");
    }
}

use std::time::Duration;

/// One step of an answer, as an upstream produces it and a frontend encodes it.
///
/// A normal answer is `Start`, content events, `Stop`, optionally `Usage`,
/// then the end of the mailbox. An answer that fails ends with `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The upstream accepted the request and is about to answer.
    Start {
        model: String,
    },
    TextDelta(String),
    ThinkingDelta(String),
    /// The signature that closes a thinking block.
    ThinkingSignature(String),
    /// Encrypted thinking to hand back verbatim next turn.
    RedactedThinking(String),
    /// The `encrypted_content` of the reasoning just streamed, from an
    /// OpenAI Responses upstream, to hand back verbatim next turn.
    EncryptedReasoning(String),
    /// A tool call begins; `index` orders calls within one answer. Its id
    /// and name are boxed: every mailbox slot is the size of the largest
    /// variant (56 bytes with them inline, 32 now), and calls are few.
    ToolCallStart {
        index: u32,
        call: Box<ToolStart>,
    },
    /// More JSON text of a tool call's arguments.
    ToolCallArgsDelta {
        index: u32,
        json: String,
    },
    Usage(Usage),
    /// An event of an Anthropic upstream's stream that the canonical model
    /// does not carry: a content block of a type it does not know
    /// (`server_tool_use`, `web_search_tool_result`...), its deltas and its
    /// stop, as the upstream's JSON. An Anthropic client gets it as it
    /// came (renumbered); other clients do not.
    AnthropicBlock(Box<str>),
    /// The stop sequence that ended the answer, just before its
    /// `Stop(StopSequence)`, from upstreams that say which.
    StopSequence(String),
    Stop(StopReason),
    /// Boxed: errors are rare, and every mailbox slot is the size of the
    /// largest variant.
    Error(Box<UpstreamError>),
}

/// The id and name of a tool call that begins.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolStart {
    pub id: String,
    pub name: String,
}

impl ChatEvent {
    pub fn tool_call_start(index: u32, id: String, name: String) -> Self {
        ChatEvent::ToolCallStart {
            index,
            call: Box::new(ToolStart { id, name }),
        }
    }

    /// Events that may be held back before the first byte is committed to
    /// the client, so a failure right after them can still be retried.
    pub fn is_preamble(&self) -> bool {
        matches!(self, ChatEvent::Start { .. } | ChatEvent::Usage(_))
    }
}

/// Token counts. `input` excludes cached tokens, which are counted apart so
/// each token is counted once whatever the protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u32,
    pub output: u32,
    pub cache_read: u32,
    pub cache_write: u32,
}

impl Usage {
    /// All prompt tokens, cached or not (OpenAI's `prompt_tokens`).
    pub fn prompt_total(&self) -> u32 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// Merges a later report into this one: fields the later one sets win.
    pub fn merge(&mut self, other: &Usage) {
        if other.input != 0 {
            self.input = other.input;
        }
        if other.output != 0 {
            self.output = other.output;
        }
        if other.cache_read != 0 {
            self.cache_read = other.cache_read;
        }
        if other.cache_write != 0 {
            self.cache_write = other.cache_write;
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    End,
    Length,
    ToolUse,
    StopSequence,
    ContentFilter,
}

/// What went wrong upstream, classified once so every layer agrees on
/// whether to retry, cool down or pass the error through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429 or the upstream's own overload signal.
    RateLimited,
    /// 5xx or an upstream-side failure that may pass.
    Unavailable,
    /// Could not connect or the connection broke before an answer began.
    Connect,
    /// No first token or no end within the deadline.
    Timeout,
    /// The upstream refused the credentials.
    Auth,
    /// The upstream rejected the request itself (4xx): the client's fault.
    InvalidRequest,
    /// The upstream broke the protocol or dropped an answer midway.
    Protocol,
    /// The session serving the request went away.
    SessionLost,
    /// The client went away; nobody is waiting for the answer.
    Cancelled,
}

/// An upstream failure carried to the handler in the request's mailbox.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamError {
    pub kind: ErrorKind,
    /// The upstream's HTTP status, when it gave one.
    pub status: Option<u16>,
    pub message: String,
    /// Upstream error `type`, `param` and `code`, passed through on 4xx.
    pub error_type: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
    /// How long the upstream asked us to wait (429 `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ErrorKind {
    /// A stable snake_case name, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "auth",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Protocol => "protocol",
            ErrorKind::SessionLost => "session_lost",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl UpstreamError {
    /// An error of `kind` with a message and nothing else.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            status: None,
            message: message.into(),
            error_type: None,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Whether another session might succeed where this one failed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited
                | ErrorKind::Unavailable
                | ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Auth
                | ErrorKind::SessionLost
        )
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{:?} (status {s}): {}", self.kind, self.message),
            None => write!(f, "{:?}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for UpstreamError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of every open stream's mailbox is this size: a variant
    /// that grows it should be boxed, as `ToolCallStart`'s call is.
    #[test]
    fn an_event_fits_in_four_words() {
        assert!(
            std::mem::size_of::<ChatEvent>() <= 32,
            "{}",
            std::mem::size_of::<ChatEvent>()
        );
    }
}

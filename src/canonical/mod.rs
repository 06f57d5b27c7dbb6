//! The provider-neutral model: every frontend decodes into a [`ChatRequest`]
//! and encodes from a stream of [`ChatEvent`]s; every upstream consumes the
//! first and produces the second. Nothing here knows a wire format.

pub mod answer;
pub mod conversation;
mod event;
pub mod fault;
mod request;
pub mod tokens;

pub use answer::{Answer, UsageTally};
pub use conversation::Conversation;
pub use event::{ChatEvent, ErrorKind, StopReason, UpstreamError, Usage};
pub use request::{
    ChatRequest, ContentPart, ImageSource, Message, Native, Role, Sampling, Speaks, Tool,
    ToolChoice, Wire,
};

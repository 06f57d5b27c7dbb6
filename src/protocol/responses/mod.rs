//! OpenAI's Responses API (`/v1/responses`), the protocol of Codex CLI and
//! of the Vercel AI SDK's default OpenAI provider.

pub mod client;
mod events;
pub mod server;
pub mod wire;

pub use server::{
    completion_body, continue_from, decode_request, stored_input, stored_input_json, Echo, Head,
    OnEnd, StreamEncoder,
};

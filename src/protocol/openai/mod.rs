//! OpenAI Chat Completions: the wire types, the server side (what OpenAI
//! clients send and get) and the client side (what `openai` upstreams get
//! and stream back).

pub mod client;
mod fastchunk;
pub mod server;
pub mod wire;

pub use client::{encode_request, ChunkDecoder};
pub use server::{completion_body, decode_request, openai_type_and_code, StreamEncoder};

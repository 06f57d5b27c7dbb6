//! OpenAI Chat Completions: wire types, the decoder and encoder the frontend
//! uses, and the ones the `openai` upstream uses in the other direction.

pub mod decode;
pub mod encode;
mod fastchunk;
pub mod wire;

pub use decode::{decode_request, ChunkDecoder};
pub use encode::{completion_body, encode_request, openai_type_and_code, StreamEncoder};

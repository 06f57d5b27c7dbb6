//! Anthropic Messages: wire types, the decoder and encoder the frontend
//! uses (`/v1/messages`), and the ones the `anthropic` upstream uses in the
//! other direction.

pub mod decode;
pub mod encode;
pub mod wire;

pub use decode::{decode_request, EventDecoder};
pub use encode::{completion_body, encode_request, StreamEncoder};

#[cfg(test)]
mod fixtures;

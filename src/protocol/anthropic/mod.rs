//! Anthropic Messages: the wire types, the server side (what clients of
//! `/v1/messages` send and get) and the client side (what `anthropic`
//! upstreams get and stream back).

pub mod client;
pub mod server;
pub mod wire;

pub use client::{encode_request, EventDecoder};
pub use server::{completion_body, decode_request, StreamEncoder};

#[cfg(test)]
mod fixtures;

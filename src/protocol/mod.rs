//! Wire formats. Each protocol has its wire types, a decoder and an encoder;
//! the frontend (clients calling troupe) and the upstream of the same
//! protocol share them.

pub mod openai;
pub mod sse;

//! What text-only kinds share: flattening a conversation into one prompt
//! ([`flatten`]) and the tool-emulation layer ([`tools`]).

pub(crate) mod flatten;
pub(crate) mod tools;

//! What text-only kinds share: the tool-emulation layer ([`tools`]).

pub(crate) mod tools;

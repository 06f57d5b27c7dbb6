//! What every HTTP kind shares: the one client ([`client`]), reading a
//! streamed answer ([`stream`]), and the classification of transport
//! failures and non-2xx answers ([`error`]).

pub(crate) mod client;
pub(crate) mod config;
mod error;
pub(crate) mod stream;

pub(crate) use error::{extra_headers, reply_id, send_checked, status_error, transport_error};

//! Wire formats. Each protocol has its wire types, a decoder and an encoder;
//! the frontend (clients calling troupe) and the upstream of the same
//! protocol share them.

pub mod anthropic;
pub mod openai;
pub mod sse;

/// A request the gateway cannot accept, with the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Dotted path of the field (`messages[0].content`), empty for the body.
    pub param: String,
    pub message: String,
}

impl DecodeError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        DecodeError {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// Parses JSON bytes as `T`, naming the field that failed.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(DecodeError::new("", format!("invalid JSON body: {e}"))),
        },
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(DecodeError::new("", format!("invalid JSON body: {inner}")))
            } else if path == "." {
                Err(DecodeError::new(
                    "",
                    format!("invalid request body: {inner}"),
                ))
            } else {
                Err(DecodeError::new(
                    path.clone(),
                    format!("invalid value for `{path}`: {inner}"),
                ))
            }
        }
    }
}

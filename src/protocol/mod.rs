//! Wire formats. Each protocol is a folder: `wire.rs` (the typed structs,
//! read and written), `server.rs` (what clients of troupe send and get:
//! request decoding, streamed and whole answers, error envelopes) and
//! `client.rs` (what upstreams of that protocol get and stream back).
//! `http/` routes and writes bytes; what they mean is decided here.

pub mod anthropic;
mod encoder;
pub mod openai;
pub mod sse;

pub use encoder::EventEncoder;

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
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(DecodeError::new(
                "",
                "the request body is empty: expected a JSON object",
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(DecodeError::new(
                "",
                "the request body must be a JSON object",
            ))
        }
    }
    // The usual body parses at full speed; only a failed parse is read
    // again, tracking the path, to name the field.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => match de.end() {
            Ok(()) => Ok(v),
            Err(e) => Err(DecodeError::new("", format!("invalid JSON body: {e}"))),
        },
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // serde_json reports a wrong-typed enum field (`"role": 5`) as
            // a syntax error; in a well-formed body it is the field's error.
            let well_formed = || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
            if (inner.is_syntax() || inner.is_eof()) && (path == "." || !well_formed()) {
                Err(DecodeError::new("", format!("invalid JSON body: {inner}")))
            } else if inner.is_syntax() {
                Err(DecodeError::new(
                    path.clone(),
                    format!("invalid value for `{path}`: this field takes one of its named string values"),
                ))
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

/// Range checks every protocol shares, on the decoded request. `temperature_max`
/// differs: OpenAI allows up to 2, Anthropic up to 1.
pub fn check_ranges(
    req: &crate::canonical::ChatRequest,
    temperature_max: f64,
) -> Result<(), DecodeError> {
    let s = &req.sampling;
    let within = |v: Option<f64>, lo: f64, hi: f64| {
        v.is_none_or(|x| x.is_finite() && (lo..=hi).contains(&x))
    };
    if !within(s.temperature, 0.0, temperature_max) {
        return Err(DecodeError::new(
            "temperature",
            format!("`temperature` must be between 0 and {temperature_max}"),
        ));
    }
    if !within(s.top_p, 0.0, 1.0) {
        return Err(DecodeError::new("top_p", "`top_p` must be between 0 and 1"));
    }
    if !within(s.frequency_penalty, -2.0, 2.0) {
        return Err(DecodeError::new(
            "frequency_penalty",
            "`frequency_penalty` must be between -2 and 2",
        ));
    }
    if !within(s.presence_penalty, -2.0, 2.0) {
        return Err(DecodeError::new(
            "presence_penalty",
            "`presence_penalty` must be between -2 and 2",
        ));
    }
    if s.max_tokens == Some(0) {
        return Err(DecodeError::new(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    match &req.tool_choice {
        Some(crate::canonical::ToolChoice::Tool(name))
            if !req.tools.iter().any(|t| &t.name == name) =>
        {
            Err(DecodeError::new(
                "tool_choice",
                format!("`tool_choice` names `{name}`, which is not in `tools`"),
            ))
        }
        Some(crate::canonical::ToolChoice::Required) if req.tools.is_empty() => {
            Err(DecodeError::new(
                "tool_choice",
                "`tool_choice` requires a tool call but `tools` is empty",
            ))
        }
        _ => Ok(()),
    }
}

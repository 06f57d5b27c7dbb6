//! Wire formats. Each protocol is a folder: `wire.rs` (the typed structs,
//! read and written), `server.rs` (what clients of troupe send and get:
//! request decoding, streamed and whole answers, error envelopes) and
//! `client.rs` (what upstreams of that protocol get and stream back).
//! `http/` routes and writes bytes; what they mean is decided here.

use crate::canonical::{ChatRequest, Speaks, Wire};

pub mod anthropic;
mod encoder;
pub mod openai;
pub mod responses;
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

/// The top-level keys of a JSON object body whose values are not `null`
/// (read as absent), outside `always` and `also`; values are skipped, not
/// built, and only the keys kept are copied. Empty for anything that is not
/// an object.
fn keys_outside(body: &[u8], always: &[&str], also: &[&str]) -> Vec<String> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Keys<'k> {
        always: &'k [&'k str],
        also: &'k [&'k str],
    }
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                let set = map.next_value::<Option<IgnoredAny>>()?.is_some();
                let key = key.as_ref();
                if set && !self.always.contains(&key) && !self.also.contains(&key) {
                    out.push(key.to_owned());
                }
            }
            Ok(out)
        }
    }
    serde_json::Deserializer::from_slice(body)
        .deserialize_map(Keys { always, also })
        .unwrap_or_default()
}

/// A key as the body holds it: borrowed unless it has escapes (serde's own
/// `Cow` always copies, an allocation per key of every request).
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The request fields a client set that the upstream it was sent to could
/// not take, named as the client wrote them (the `x-troupe-dropped`
/// header). Nothing for an upstream of the client's own protocol, which
/// gets the body as it came (unless the decoder had to repair it). An
/// Anthropic client's `cache_control` marks are named when they could not
/// travel.
pub fn dropped(req: &ChatRequest, to: Speaks) -> Vec<String> {
    let Some(native) = &req.native else {
        return Vec::new();
    };
    let (always, to_self, to_other): (&[&str], &[&str], &[&str]) = match native.wire {
        Wire::OpenAiChat => (
            openai::server::ALWAYS_TAKEN,
            openai::server::TAKEN_BY_OPENAI,
            openai::server::TAKEN_BY_ANTHROPIC,
        ),
        Wire::AnthropicMessages => (
            anthropic::server::ALWAYS_TAKEN,
            anthropic::server::TAKEN_BY_ANTHROPIC,
            anthropic::server::TAKEN_BY_OPENAI,
        ),
        Wire::OpenAiResponses => {
            let also = match to {
                Speaks::Wire(Wire::OpenAiResponses) if !req.repaired => return Vec::new(),
                Speaks::Wire(Wire::AnthropicMessages) => responses::server::TAKEN_BY_ANTHROPIC,
                Speaks::Wire(_) => responses::server::TAKEN_BY_OPENAI,
                Speaks::Text { honours } => honours,
            };
            let mut out = names_outside(req, native, responses::server::ALWAYS_TAKEN, also);
            if to == Speaks::Wire(Wire::OpenAiResponses) {
                // A Responses upstream reads its own reasoning back.
                out.retain(|n| n != responses::server::ENCRYPTED_REASONING);
            }
            return out;
        }
    };
    let also: &[&str] = match to {
        Speaks::Wire(w) if w == native.wire && !req.repaired => return Vec::new(),
        // A repaired body goes through the canonical request.
        Speaks::Wire(w) if w == native.wire => to_self,
        Speaks::Wire(_) => to_other,
        Speaks::Text { honours } => honours,
    };
    let mut out = names_outside(req, native, always, also);
    if native.wire == Wire::AnthropicMessages
        && !out.iter().any(|k| k == "cache_control")
        && anthropic::server::has_cache_marks(&native.body)
    {
        out.push("cache_control".to_owned());
    }
    out
}

/// The top-level keys of the client's body outside `always` and `also`,
/// and what the decoder could not carry.
fn names_outside(
    req: &ChatRequest,
    native: &crate::canonical::Native,
    always: &[&str],
    also: &[&str],
) -> Vec<String> {
    // Read here, not with the request: only a request that crosses
    // protocols needs them.
    let mut out = keys_outside(&native.body, always, also);
    out.extend(req.untranslated.iter().cloned());
    out
}

/// A JSON object's members in their order, values kept as their text.
pub(crate) type Members<'a> = Vec<(String, &'a serde_json::value::RawValue)>;

/// Reads a JSON object body into its members without building the values.
pub(crate) fn members(body: &[u8]) -> Result<Members<'_>, serde_json::Error> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                out.push((key, map.next_value()?));
            }
            Ok(out)
        }
    }
    serde_json::Deserializer::from_slice(body).deserialize_map(Entries)
}

/// Sets member `key` to `value` (JSON text), in place or at the end.
pub(crate) fn set_member<'a>(
    members: &mut Members<'a>,
    key: &str,
    value: &'a serde_json::value::RawValue,
) {
    match members.iter_mut().find(|(k, _)| k == key) {
        Some(m) => m.1 = value,
        None => members.push((key.to_owned(), value)),
    }
}

/// Writes members back as one JSON object.
pub(crate) fn write_members(members: &Members<'_>) -> Vec<u8> {
    let len = members
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum::<usize>();
    let mut out = Vec::with_capacity(len + 2);
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A string always serializes.
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    #[test]
    fn keys_outside_reads_plain_and_escaped_keys_and_skips_nulls() {
        let body = br#"{"model":"m","a\u0062c":1,"seed":null,"x\"y":[{"k":2}],"top_p":0.5}"#;
        let keys = super::keys_outside(body, &["model"], &["top_p"]);
        assert_eq!(keys, ["abc", "x\"y"]);
        assert!(super::keys_outside(b"[1]", &[], &[]).is_empty());
    }
}

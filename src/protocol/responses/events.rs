//! The events of a message item, the commonest by far (a text answer is
//! nothing else), written straight into the body.
//!
//! The response object's own members (around its output and echo) are
//! written here too, from [`ResponseOut`].
//!
//! Through serde's `EventOut` each of these events cost about 5,000
//! instructions (callgrind, `dist` build): the internally tagged enums and
//! the `bytes` writer, per field. Written here they cost a small part of
//! that. The unit tests hold every one byte for byte to the serde form of
//! the same event, which stays the reference; other items (reasoning, tool
//! calls) still go through it.

use bytes::{BufMut, BytesMut};

use super::wire::{EchoOut, ResponseOut};

/// `s` as a JSON string, escaped exactly as serde_json escapes it: a
/// string with nothing to escape (nearly every one) is copied as it is.
pub(super) fn string<B: BufMut>(out: &mut B, s: &str) {
    // No early exit: the whole check runs as vector instructions.
    let plain = !s.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.put_u8(b'"');
        out.put_slice(s.as_bytes());
        out.put_u8(b'"');
    } else {
        // Writing to memory cannot fail.
        let _ = serde_json::to_writer(out.writer(), s);
    }
}

/// One of troupe's own ids (`resp_…`, `msg_…`: a prefix and hex, made by
/// `random_id`) as a JSON string: nothing in it to look for.
fn id<B: BufMut>(out: &mut B, id: &str) {
    debug_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.put_u8(b'"');
    out.put_slice(id.as_bytes());
    out.put_u8(b'"');
}

pub(super) fn uint<B: BufMut>(out: &mut B, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A response object's own members, from its `{` to just before its
/// closing brace (its `output` and the request's echo follow).
pub(super) fn response_head<B: BufMut>(out: &mut B, r: &ResponseOut<'_>) {
    out.put_slice(b"{\"id\":");
    id(out, r.id);
    out.put_slice(b",\"object\":\"response\",\"created_at\":");
    uint(out, r.created_at);
    out.put_slice(b",\"status\":");
    string(out, r.status);
    if let Some(t) = r.completed_at {
        out.put_slice(b",\"completed_at\":");
        uint(out, t);
    }
    match &r.error {
        None => out.put_slice(b",\"error\":null"),
        Some(e) => {
            out.put_slice(b",\"error\":{\"code\":");
            string(out, e.code);
            out.put_slice(b",\"message\":");
            string(out, e.message);
            out.put_u8(b'}');
        }
    }
    match &r.incomplete_details {
        None => out.put_slice(b",\"incomplete_details\":null"),
        Some(i) => {
            out.put_slice(b",\"incomplete_details\":{\"reason\":");
            string(out, i.reason);
            out.put_u8(b'}');
        }
    }
    if let Some(u) = &r.usage {
        out.put_slice(b",\"usage\":{\"input_tokens\":");
        uint(out, u.input_tokens.into());
        out.put_slice(b",\"input_tokens_details\":{\"cached_tokens\":");
        uint(out, u.input_tokens_details.cached_tokens.into());
        out.put_slice(b",\"cache_write_tokens\":");
        uint(out, u.input_tokens_details.cache_write_tokens.into());
        out.put_slice(b"},\"output_tokens\":");
        uint(out, u.output_tokens.into());
        out.put_slice(b",\"output_tokens_details\":{\"reasoning_tokens\":");
        uint(out, u.output_tokens_details.reasoning_tokens.into());
        out.put_slice(b"},\"total_tokens\":");
        uint(out, u.total_tokens.into());
        out.put_u8(b'}');
    }
}

/// A response object's echo of its request ([`EchoOut`]): its members,
/// without braces. The JSON values the client sent (tools, formats,
/// metadata) and floats go through serde_json.
pub(super) fn echo<B: BufMut>(out: &mut B, e: &EchoOut<'_>) {
    fn opt_str<B: BufMut>(out: &mut B, s: Option<&str>) {
        match s {
            Some(s) => string(out, s),
            None => out.put_slice(b"null"),
        }
    }
    fn value<B: BufMut, T: serde::Serialize + ?Sized>(out: &mut B, v: &T) {
        // Writing to memory cannot fail.
        let _ = serde_json::to_writer(out.writer(), v);
    }
    out.put_slice(b"\"instructions\":");
    opt_str(out, e.instructions);
    out.put_slice(b",\"max_output_tokens\":");
    match e.max_output_tokens {
        Some(n) => uint(out, n.into()),
        None => out.put_slice(b"null"),
    }
    out.put_slice(b",\"model\":");
    string(out, e.model);
    out.put_slice(if e.parallel_tool_calls {
        b",\"parallel_tool_calls\":true,\"previous_response_id\":"
    } else {
        b",\"parallel_tool_calls\":false,\"previous_response_id\":"
    });
    opt_str(out, e.previous_response_id);
    out.put_slice(b",\"reasoning\":");
    match &e.reasoning {
        Some(r) => {
            out.put_slice(b"{\"effort\":");
            opt_str(out, r.effort);
            out.put_slice(b",\"summary\":");
            opt_str(out, r.summary);
            out.put_u8(b'}');
        }
        None => out.put_slice(b"null"),
    }
    out.put_slice(if e.store {
        b",\"store\":true,\"temperature\":"
    } else {
        b",\"store\":false,\"temperature\":"
    });
    value(out, &e.temperature);
    out.put_slice(b",\"text\":{\"format\":");
    value(out, e.text.format);
    out.put_slice(b"},\"tool_choice\":");
    value(out, e.tool_choice);
    out.put_slice(b",\"tools\":");
    value(out, e.tools);
    out.put_slice(b",\"top_p\":");
    value(out, &e.top_p);
    out.put_slice(b",\"truncation\":");
    string(out, e.truncation);
    if let Some(user) = e.user {
        out.put_slice(b",\"user\":");
        string(out, user);
    }
    out.put_slice(b",\"metadata\":");
    value(out, e.metadata);
}

/// A stored input message of one text part.
pub(super) fn stored_message<B: BufMut>(
    out: &mut B,
    id: &str,
    role: Option<&str>,
    part: &str,
    text: &str,
    status: &str,
) {
    out.put_slice(b"{\"type\":\"message\",\"id\":");
    string(out, id);
    if let Some(role) = role {
        out.put_slice(b",\"role\":");
        string(out, role);
    }
    out.put_slice(b",\"content\":[{\"type\":");
    string(out, part);
    out.put_slice(b",\"text\":");
    string(out, text);
    out.put_slice(b"}],\"status\":");
    string(out, status);
    out.put_u8(b'}');
}

/// `event: <name>` and the data line up to the `type` member.
fn open(out: &mut BytesMut, name: &str, room: usize) {
    out.reserve(room + 2 * name.len() + 64);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: {\"type\":\"");
    out.put_slice(name.as_bytes());
    out.put_u8(b'"');
}

/// The `sequence_number` member, the end of the object and of the event.
pub(super) fn close(out: &mut BytesMut, seq: u64) {
    out.put_slice(b",\"sequence_number\":");
    uint(out, seq);
    out.put_slice(b"}\n\n");
}

/// `"item_id":…,"output_index":…` (with a leading comma).
fn place(out: &mut BytesMut, item_id: &str, output_index: usize) {
    out.put_slice(b",\"item_id\":");
    id(out, item_id);
    out.put_slice(b",\"output_index\":");
    uint(out, output_index as u64);
}

/// An `output_text` part.
fn part<B: BufMut>(out: &mut B, text: &str) {
    out.put_slice(b"{\"type\":\"output_text\",\"text\":");
    string(out, text);
    out.put_slice(b",\"annotations\":[],\"logprobs\":[]}");
}

/// The message item: open (no content yet) or done (`text` its one part).
pub(super) fn message<B: BufMut>(out: &mut B, item_id: &str, text: Option<&str>) {
    out.put_slice(b"{\"type\":\"message\",\"id\":");
    id(out, item_id);
    match text {
        None => {
            out.put_slice(b",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}")
        }
        Some(text) => {
            out.put_slice(b",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[");
            part(out, text);
            out.put_slice(b"]}");
        }
    }
}

/// `response.output_item.added` (`text: None`) or `.done` of a message.
pub(super) fn message_item(
    out: &mut BytesMut,
    output_index: usize,
    id: &str,
    text: Option<&str>,
    seq: u64,
) {
    let name = match text {
        None => "response.output_item.added",
        Some(_) => "response.output_item.done",
    };
    open(out, name, id.len() + text.map_or(0, str::len));
    out.put_slice(b",\"output_index\":");
    uint(out, output_index as u64);
    out.put_slice(b",\"item\":");
    message(out, id, text);
    close(out, seq);
}

/// `response.content_part.added` (empty text) or `.done` of a message.
pub(super) fn content_part(
    out: &mut BytesMut,
    done: bool,
    item_id: &str,
    output_index: usize,
    text: &str,
    seq: u64,
) {
    let name = if done {
        "response.content_part.done"
    } else {
        "response.content_part.added"
    };
    open(out, name, item_id.len() + text.len());
    place(out, item_id, output_index);
    out.put_slice(b",\"content_index\":0,\"part\":");
    part(out, text);
    close(out, seq);
}

/// `response.output_text.done`.
pub(super) fn output_text_done(
    out: &mut BytesMut,
    item_id: &str,
    output_index: usize,
    text: &str,
    seq: u64,
) {
    open(out, "response.output_text.done", item_id.len() + text.len());
    place(out, item_id, output_index);
    out.put_slice(b",\"content_index\":0,\"text\":");
    string(out, text);
    out.put_slice(b",\"logprobs\":[]");
    close(out, seq);
}

/// What every `response.output_text.delta` event of one message item
/// starts with, up to its `delta` member's value. Made once per item: a
/// delta then costs one copy of it, its text and its sequence number.
pub(super) fn delta_prefix(item_id: &str, output_index: usize) -> BytesMut {
    let mut out = BytesMut::new();
    open(&mut out, "response.output_text.delta", item_id.len());
    place(&mut out, item_id, output_index);
    out.put_slice(b",\"content_index\":0,\"delta\":");
    out
}

/// A `response.output_text.delta` event, its start made by [`delta_prefix`].
pub(super) fn text_delta(out: &mut BytesMut, prefix: &[u8], text: &str, seq: u64) {
    out.reserve(prefix.len() + text.len() + 64);
    out.put_slice(prefix);
    string(out, text);
    out.put_slice(b",\"logprobs\":[],\"sequence_number\":");
    uint(out, seq);
    out.put_slice(b"}\n\n");
}

#[cfg(test)]
mod tests {
    use super::super::wire::{EventOut, ItemOut, OutputTextOut};
    use super::*;

    /// The event as the serde types write it, with its sequence number.
    fn reference(ev: &EventOut<'_>, seq: u64) -> String {
        let json = serde_json::to_string(ev).unwrap();
        let json = json.strip_suffix('}').unwrap();
        format!(
            "event: {}\ndata: {json},\"sequence_number\":{seq}}}\n\n",
            ev.name()
        )
    }

    /// What `write` makes of `value`'s members, in braces, against serde's
    /// form of it.
    fn same_as_serde<T: serde::Serialize>(value: &T, open: bool, write: impl FnOnce(&mut Vec<u8>)) {
        let mut got = if open { vec![b'{'] } else { Vec::new() };
        write(&mut got);
        got.push(b'}');
        assert_eq!(
            String::from_utf8(got).unwrap(),
            serde_json::to_string(value).unwrap()
        );
    }

    fn written(f: impl FnOnce(&mut BytesMut)) -> String {
        let mut out = BytesMut::new();
        f(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    const TEXTS: &[&str] = &[
        "",
        "hello ",
        "quote \" and \\ backslash",
        "tab\there\nnewline\r\u{1}\u{1f}\u{7f}",
        "ünïcödé — 中文 🎉 </script>",
    ];

    #[test]
    fn message_events_match_the_serde_types() {
        for (i, text) in TEXTS.iter().enumerate() {
            // Item ids are troupe's own (`events::id`): plain.
            let id = "msg_0123abc";
            let seq = 7 + i as u64 * 1000;
            let added = ItemOut::Message {
                id,
                status: "in_progress",
                role: "assistant",
                content: Vec::new(),
            };
            let done = ItemOut::Message {
                id,
                status: "completed",
                role: "assistant",
                content: vec![OutputTextOut::new(text)],
            };
            let cases = [
                (
                    reference(
                        &EventOut::ItemAdded {
                            output_index: i,
                            item: &added,
                        },
                        seq,
                    ),
                    written(|o| message_item(o, i, id, None, seq)),
                ),
                (
                    reference(
                        &EventOut::ItemDone {
                            output_index: i,
                            item: &done,
                        },
                        seq,
                    ),
                    written(|o| message_item(o, i, id, Some(text), seq)),
                ),
                (
                    reference(
                        &EventOut::PartAdded {
                            item_id: id,
                            output_index: i,
                            content_index: 0,
                            part: OutputTextOut::new(""),
                        },
                        seq,
                    ),
                    written(|o| content_part(o, false, id, i, "", seq)),
                ),
                (
                    reference(
                        &EventOut::PartDone {
                            item_id: id,
                            output_index: i,
                            content_index: 0,
                            part: OutputTextOut::new(text),
                        },
                        seq,
                    ),
                    written(|o| content_part(o, true, id, i, text, seq)),
                ),
                (
                    reference(
                        &EventOut::TextDone {
                            item_id: id,
                            output_index: i,
                            content_index: 0,
                            text,
                            logprobs: [],
                        },
                        seq,
                    ),
                    written(|o| output_text_done(o, id, i, text, seq)),
                ),
            ];
            for (want, got) in cases {
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn response_heads_match_the_serde_type() {
        use super::super::wire::{
            IncompleteOut, InputDetailsOut, OutputDetailsOut, ResponseErrorOut, UsageOut,
        };
        let usage = UsageOut {
            input_tokens: 12,
            input_tokens_details: InputDetailsOut {
                cached_tokens: 3,
                cache_write_tokens: 4_000_000_000,
            },
            output_tokens: 0,
            output_tokens_details: OutputDetailsOut {
                reasoning_tokens: 7,
            },
            total_tokens: 12,
        };
        for (n, text) in TEXTS.iter().enumerate() {
            let cases = [
                (None, None, None, None),
                (Some(1_700_000_000 + n as u64), None, None, Some(usage)),
                (
                    None,
                    None,
                    Some(IncompleteOut {
                        reason: "max_output_tokens",
                    }),
                    Some(usage),
                ),
                (
                    None,
                    Some(ResponseErrorOut {
                        code: "server_error",
                        message: text,
                    }),
                    None,
                    None,
                ),
            ];
            for (completed_at, error, incomplete_details, usage) in cases {
                let r = ResponseOut {
                    id: "resp_abc",
                    object: "response",
                    created_at: 1_700_000_000,
                    status: "in_progress",
                    completed_at,
                    error,
                    incomplete_details,
                    usage,
                };
                same_as_serde(&r, false, |o| response_head(o, &r));
            }
        }
    }

    #[test]
    fn echoes_match_the_serde_type() {
        use super::super::wire::{ReasoningOut, TextOut};
        use serde_json::json;
        let format = json!({"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true});
        let text_format = json!({"type": "text"});
        let auto = json!("auto");
        let forced = json!({"type": "function", "name": "f"});
        let tools = [json!({"type": "function", "name": "f", "parameters": {}})];
        let metadata = json!({"k": "v \" \n"});
        let empty = json!({});
        for n in 0..4 {
            let full = n % 2 == 1;
            let e = EchoOut {
                instructions: full.then_some(TEXTS[n]),
                max_output_tokens: full.then_some(1000),
                model: TEXTS[n + 1],
                parallel_tool_calls: full,
                previous_response_id: full.then_some("resp_1"),
                reasoning: (n > 1).then_some(ReasoningOut {
                    effort: full.then_some("high"),
                    summary: Some("auto"),
                }),
                store: !full,
                temperature: full.then_some(0.7),
                text: TextOut {
                    format: if full { &format } else { &text_format },
                },
                tool_choice: if full { &forced } else { &auto },
                tools: if full { &tools } else { &[] },
                top_p: (n == 3).then_some(1e-7),
                truncation: "disabled",
                user: full.then_some("user-1"),
                metadata: if full { &metadata } else { &empty },
            };
            same_as_serde(&e, true, |o| echo(o, &e));
        }
    }

    #[test]
    fn text_deltas_are_the_documented_shape() {
        for text in TEXTS {
            let prefix = delta_prefix("msg_1", 2);
            let got = written(|o| text_delta(o, &prefix, text, 9));
            let data = got
                .strip_prefix("event: response.output_text.delta\ndata: ")
                .and_then(|d| d.strip_suffix("\n\n"))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(
                v,
                serde_json::json!({
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": 2,
                    "content_index": 0,
                    "delta": text,
                    "logprobs": [],
                    "sequence_number": 9,
                })
            );
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        for text in TEXTS {
            let got = written(|o| string(o, text));
            assert_eq!(got, serde_json::to_string(text).unwrap());
        }
    }
}

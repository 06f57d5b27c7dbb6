//! Property tests of translation, for every pair of upstream protocol and
//! client protocol: a generated upstream stream (text, thinking, several
//! tool calls, sequential or with their argument fragments interleaved,
//! empty deltas, repeated role chunks, usage first, last or absent, the
//! bytes cut anywhere, inside UTF-8 sequences too) goes through the SSE
//! reader, the upstream decoder, the canonical events and a client encoder,
//! as on the gateway's path. The client stream must follow its protocol's
//! grammar (OpenAI chunks: the published schema too), carry every text and argument byte exactly once and in order
//! within its block, keep call ids and names, map the stop reason, and end
//! exactly once. Responses streams are checked for their own grammar here
//! and against the published schemas in the black-box tests.

use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::sse::SseParser;
use super::{anthropic, openai, responses, EventEncoder};
use crate::canonical::{ChatEvent, ChatRequest, Message, Role, StopReason};

const CASES: u32 = 1000;

/// OpenAI's published `CreateChatCompletionStreamResponse`, extracted from
/// its OpenAPI description by `scripts/extract_chunk_schema.py`.
fn chunk_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/spec/chat-completion-chunk.schema.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    })
}

fn assert_valid_chunk(chunk: &Value) {
    let errors: Vec<String> = chunk_schema()
        .iter_errors(chunk)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "chunk {chunk} breaks the schema: {errors:?}"
    );
}

#[test]
fn the_chunk_schema_refuses_what_it_should() {
    let good = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]});
    assert_valid_chunk(&good);
    for bad in [
        json!({"id": "c", "created": 1, "model": "m", "choices": []}),
        json!({"id": "c", "object": "chat.completion.chunk", "created": "1", "model": "m", "choices": []}),
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "done"}]}),
    ] {
        assert!(!chunk_schema().is_valid(&bad), "{bad}");
    }
}

/// One tool call of a generated answer.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    name: String,
    /// The argument text, cut into the fragments the upstream sends.
    fragments: Vec<String>,
}

impl Call {
    fn arguments(&self) -> String {
        self.fragments.concat()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum UsageAt {
    First,
    Last,
    Absent,
}

/// A generated answer, and how the upstream frames it.
#[derive(Debug, Clone)]
struct Generated {
    thinking: Vec<String>,
    signature: Option<String>,
    text: Vec<String>,
    calls: Vec<Call>,
    interleave: bool,
    usage: UsageAt,
    stop: StopReason,
    /// Empty deltas and repeated role chunks sprinkled in (OpenAI).
    noise: Vec<u8>,
    /// The last argument fragment rides on the finish chunk (OpenAI).
    args_with_finish: bool,
    /// Where the upstream's bytes are cut (fractions of the length).
    cuts: Vec<u16>,
}

impl Generated {
    fn text(&self) -> String {
        self.text.concat()
    }
    fn thinking(&self) -> String {
        self.thinking.concat()
    }
}

/// Text with what breaks naive encoders: quotes, backslashes, newlines,
/// control characters and characters of two to four bytes.
fn piece() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => "[a-z ]{1,6}",
            1 => Just("\"".to_owned()),
            1 => Just("\\".to_owned()),
            1 => Just("\n".to_owned()),
            1 => Just("\u{1}".to_owned()),
            1 => Just("é".to_owned()),
            1 => Just("€".to_owned()),
            1 => Just("😀".to_owned()),
            1 => Just("</".to_owned()),
        ],
        0..5,
    )
    .prop_map(|v| v.concat())
}

fn pieces(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(piece(), 0..max)
}

/// Argument JSON cut into fragments anywhere (on character boundaries, as
/// JSON strings carry them).
fn call(i: usize) -> impl Strategy<Value = Call> {
    (
        "[a-z_]{1,10}",
        prop::collection::vec(piece(), 0..4),
        prop::collection::vec(any::<u16>(), 0..4),
    )
        .prop_map(move |(name, values, cuts)| {
            let obj: serde_json::Map<String, Value> = values
                .into_iter()
                .enumerate()
                .map(|(k, v)| (format!("k{k}"), Value::String(v)))
                .collect();
            let args = Value::Object(obj).to_string();
            let chars: Vec<char> = args.chars().collect();
            let mut at: Vec<usize> = cuts
                .iter()
                .map(|c| *c as usize * chars.len() / 65536)
                .collect();
            at.push(0);
            at.push(chars.len());
            at.sort_unstable();
            at.dedup();
            let fragments = at
                .windows(2)
                .map(|w| chars[w[0]..w[1]].iter().collect())
                .collect();
            Call {
                id: format!("call_{i}_{name}"),
                name,
                fragments,
            }
        })
}

fn generated(anthropic_upstream: bool) -> impl Strategy<Value = Generated> {
    (
        pieces(4),
        prop::option::of("[A-Za-z0-9+/]{4,16}"),
        pieces(6),
        (0usize..4).prop_flat_map(|n| {
            (0..n)
                .map(call)
                .collect::<Vec<_>>()
                .prop_map(|v| v.into_iter().collect::<Vec<_>>())
        }),
        any::<bool>(),
        prop_oneof![
            Just(UsageAt::First),
            Just(UsageAt::Last),
            Just(UsageAt::Absent)
        ],
        prop_oneof![Just(StopReason::End), Just(StopReason::Length)],
        prop::collection::vec(any::<u8>(), 0..4),
        any::<bool>(),
        prop::collection::vec(any::<u16>(), 0..12),
    )
        .prop_map(
            move |(
                thinking,
                signature,
                text,
                calls,
                interleave,
                usage,
                stop,
                noise,
                with,
                cuts,
            )| {
                let stop = if calls.is_empty() {
                    stop
                } else {
                    StopReason::ToolUse
                };
                Generated {
                    // Anthropic signs thinking; an OpenAI upstream has no
                    // signature to give.
                    signature: if anthropic_upstream && !thinking.is_empty() {
                        signature
                    } else {
                        None
                    },
                    thinking,
                    text,
                    calls,
                    // Anthropic blocks never interleave.
                    interleave: interleave && !anthropic_upstream,
                    usage,
                    stop,
                    noise,
                    args_with_finish: with,
                    cuts,
                }
            },
        )
}

// ---- upstream streams ----

fn openai_stream(g: &Generated) -> Vec<u8> {
    let head = |choices: Value| {
        json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
               "model": "up", "choices": choices})
    };
    let delta = |d: Value| head(json!([{"index": 0, "delta": d, "finish_reason": null}]));
    let usage = || {
        let mut c = head(json!([]));
        c["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
        c
    };
    let mut chunks = Vec::new();
    if g.usage == UsageAt::First {
        chunks.push(usage());
    }
    chunks.push(delta(json!({"role": "assistant", "content": ""})));
    let mut noise = g.noise.iter().copied();
    let mut sprinkle = |chunks: &mut Vec<Value>| match noise.next() {
        Some(n) if n % 3 == 0 => chunks.push(delta(json!({}))),
        Some(n) if n % 3 == 1 => chunks.push(delta(json!({"role": "assistant"}))),
        Some(_) => chunks.push(delta(json!({"content": ""}))),
        None => {}
    };
    for t in &g.thinking {
        chunks.push(delta(json!({"reasoning_content": t})));
    }
    sprinkle(&mut chunks);
    for t in &g.text {
        chunks.push(delta(json!({"content": t})));
        sprinkle(&mut chunks);
    }
    // Every fragment of every call, in the order the upstream sends them.
    let mut order: Vec<(usize, usize)> = Vec::new();
    if g.interleave {
        let most = g.calls.iter().map(|c| c.fragments.len()).max().unwrap_or(0);
        for f in 0..most {
            for (i, c) in g.calls.iter().enumerate() {
                if f < c.fragments.len() {
                    order.push((i, f));
                }
            }
        }
    } else {
        for (i, c) in g.calls.iter().enumerate() {
            order.extend((0..c.fragments.len()).map(|f| (i, f)));
        }
    }
    let fragment = |i: usize, f: usize| {
        let c = &g.calls[i];
        if f == 0 {
            json!({"index": i, "id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.fragments[0]}})
        } else {
            json!({"index": i, "function": {"arguments": c.fragments[f]}})
        }
    };
    let last = if g.args_with_finish {
        order.pop()
    } else {
        None
    };
    for (i, f) in order {
        chunks.push(delta(json!({"tool_calls": [fragment(i, f)]})));
    }
    let reason = match g.stop {
        StopReason::ToolUse => "tool_calls",
        StopReason::Length => "length",
        _ => "stop",
    };
    let mut finish = head(json!([{"index": 0, "delta": {}, "finish_reason": reason}]));
    if let Some((i, f)) = last {
        finish["choices"][0]["delta"] = json!({"tool_calls": [fragment(i, f)]});
    }
    chunks.push(finish);
    if g.usage == UsageAt::Last {
        chunks.push(usage());
    }
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn anthropic_stream(g: &Generated) -> Vec<u8> {
    let mut events: Vec<Value> = Vec::new();
    let input = if g.usage == UsageAt::Absent { 0 } else { 11 };
    events.push(
        json!({"type": "message_start", "message": {"id": "msg_up", "type": "message",
        "role": "assistant", "model": "up", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
    );
    let mut index = 0;
    if !g.thinking.is_empty() {
        events.push(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}));
        for t in &g.thinking {
            events.push(json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "thinking_delta", "thinking": t}}));
        }
        if let Some(s) = &g.signature {
            events.push(json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "signature_delta", "signature": s}}));
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
        index += 1;
    }
    if !g.text.is_empty() {
        events.push(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}}));
        for t in &g.text {
            events.push(json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": t}}));
        }
        events.push(json!({"type": "ping"}));
        events.push(json!({"type": "content_block_stop", "index": index}));
        index += 1;
    }
    for c in &g.calls {
        events.push(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}));
        for f in &c.fragments {
            events.push(json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": f}}));
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
        index += 1;
    }
    let reason = match g.stop {
        StopReason::ToolUse => "tool_use",
        StopReason::Length => "max_tokens",
        _ => "end_turn",
    };
    events.push(json!({"type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": null},
        "usage": {"output_tokens": 7}}));
    events.push(json!({"type": "message_stop"}));
    let mut out = Vec::new();
    for e in events {
        let name = e["type"].as_str().unwrap_or_default().to_owned();
        out.extend_from_slice(format!("event: {name}\ndata: {e}\n\n").as_bytes());
    }
    out
}

/// A Responses upstream's stream: items one after another (reasoning with
/// its summary and encrypted content, the message, each call), then
/// `response.completed` or `response.incomplete` with the usage.
fn responses_stream(g: &Generated) -> Vec<u8> {
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": {"id": "resp_up", "status": "in_progress", "output": []}}),
        json!({"type": "response.in_progress", "response": {"id": "resp_up", "status": "in_progress", "output": []}}),
    ];
    let mut index = 0;
    if !g.thinking.is_empty() {
        events.push(
            json!({"type": "response.output_item.added", "output_index": index,
            "item": {"type": "reasoning", "id": "rs_up", "summary": []}}),
        );
        events.push(
            json!({"type": "response.reasoning_summary_part.added", "output_index": index,
            "item_id": "rs_up", "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
        );
        for t in &g.thinking {
            events.push(
                json!({"type": "response.reasoning_summary_text.delta", "output_index": index,
                "item_id": "rs_up", "summary_index": 0, "delta": t}),
            );
        }
        events.push(
            json!({"type": "response.output_item.done", "output_index": index,
            "item": {"type": "reasoning", "id": "rs_up", "encrypted_content": "enc-up",
                "summary": [{"type": "summary_text", "text": g.thinking()}]}}),
        );
        index += 1;
    }
    if !g.text.is_empty() {
        events.push(
            json!({"type": "response.output_item.added", "output_index": index,
            "item": {"type": "message", "id": "msg_up", "role": "assistant", "content": []}}),
        );
        for t in &g.text {
            events.push(
                json!({"type": "response.output_text.delta", "output_index": index,
                "item_id": "msg_up", "content_index": 0, "delta": t}),
            );
        }
        events.push(
            json!({"type": "response.output_item.done", "output_index": index,
            "item": {"type": "message", "id": "msg_up", "role": "assistant",
                "content": [{"type": "output_text", "text": g.text(), "annotations": []}]}}),
        );
        index += 1;
    }
    for c in &g.calls {
        events.push(json!({"type": "response.output_item.added", "output_index": index,
            "item": {"type": "function_call", "id": "fc_up", "call_id": c.id, "name": c.name, "arguments": ""}}));
        for f in &c.fragments {
            events.push(
                json!({"type": "response.function_call_arguments.delta", "output_index": index,
                "item_id": "fc_up", "delta": f}),
            );
        }
        events.push(
            json!({"type": "response.output_item.done", "output_index": index,
            "item": {"type": "function_call", "id": "fc_up", "call_id": c.id, "name": c.name,
                "arguments": c.arguments()}}),
        );
        index += 1;
    }
    let usage = match g.usage {
        UsageAt::Absent => Value::Null,
        _ => json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 7, "total_tokens": 18}),
    };
    events.push(match g.stop {
        StopReason::Length => json!({"type": "response.incomplete", "response": {"id": "resp_up",
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "usage": usage}}),
        _ => json!({"type": "response.completed", "response": {"id": "resp_up",
            "status": "completed", "usage": usage}}),
    });
    let mut out = Vec::new();
    for e in events {
        let name = e["type"].as_str().unwrap_or_default().to_owned();
        out.extend_from_slice(format!("event: {name}\ndata: {e}\n\n").as_bytes());
    }
    out
}

/// Which protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Up {
    OpenAi,
    Anthropic,
    Responses,
}

/// The generated answers a Responses upstream can give: sequential items,
/// no Anthropic signature (its reasoning carries encrypted content).
fn generated_for_responses() -> impl Strategy<Value = Generated> {
    generated(true).prop_map(|mut g| {
        g.signature = None;
        g
    })
}

/// The canonical events of an upstream stream, read as the gateway reads
/// it: bytes cut at `cuts`, the SSE reader, the decoder, and the pump's
/// `Start` first and `Stop` when the stream ended without one.
fn decode(bytes: &[u8], cuts: &[u16], up: Up) -> Vec<ChatEvent> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| *c as usize * bytes.len() / 65536)
        .collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let mut events = vec![ChatEvent::Start { model: "up".into() }];
    let mut parser = SseParser::default();
    let mut oa = openai::ChunkDecoder::default();
    let mut an = anthropic::EventDecoder::default();
    let mut re = responses::client::EventDecoder::default();
    for w in at.windows(2) {
        parser.push(&bytes[w[0]..w[1]]);
        while let Some(ev) = parser.next_event().unwrap() {
            match up {
                Up::Anthropic => an.decode(&ev.data, &mut events).unwrap(),
                Up::Responses => re.decode(&ev.data, &mut events).unwrap(),
                Up::OpenAi if ev.data.trim() == "[DONE]" => oa.finish(),
                Up::OpenAi => oa.decode(&ev.data, &mut events).unwrap(),
            }
        }
    }
    let stopped = match up {
        Up::Anthropic => an.stopped(),
        Up::Responses => re.stopped(),
        Up::OpenAi => oa.stopped(),
    };
    assert!(stopped, "the upstream stream ended without its stop");
    events
}

fn request() -> Arc<ChatRequest> {
    Arc::new(ChatRequest {
        model: "public".into(),
        messages: vec![Message::text(Role::User, "hello")],
        include_usage: true,
        stream: true,
        ..Default::default()
    })
}

/// Runs events through a client encoder as the SSE writer does.
fn encode<E: EventEncoder>(mut enc: E, events: &[ChatEvent], req: &ChatRequest) -> String {
    let mut out = BytesMut::new();
    for ev in events {
        enc.event(ev, &mut out);
    }
    assert!(enc.stopped());
    enc.finish(req, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

// ---- client streams, checked ----

/// Checks an OpenAI client stream; returns nothing, panics with the fault.
fn check_openai(body: &str, g: &Generated) {
    let mut frames: Vec<&str> = body.split("\n\n").filter(|s| !s.is_empty()).collect();
    assert_eq!(
        frames.pop(),
        Some("data: [DONE]"),
        "exactly one [DONE], last"
    );
    let chunks: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    let (mut text, mut thinking) = (String::new(), String::new());
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finishes = Vec::new();
    let mut usage_chunks = 0;
    for (n, c) in chunks.iter().enumerate() {
        assert_valid_chunk(c);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"], "one id");
        assert_eq!(c["created"], chunks[0]["created"], "one created");
        assert_eq!(c["model"], "public", "the public model");
        if !c["usage"].is_null() {
            usage_chunks += 1;
            assert_eq!(c["choices"], json!([]));
            assert_eq!(n, chunks.len() - 1, "usage is the last chunk");
            continue;
        }
        let choice = &c["choices"][0];
        assert!(
            finishes.is_empty(),
            "nothing after the finish chunk but usage"
        );
        if let Some(r) = choice["finish_reason"].as_str() {
            finishes.push(r.to_owned());
        }
        let d = &choice["delta"];
        text.push_str(d["content"].as_str().unwrap_or_default());
        thinking.push_str(d["reasoning_content"].as_str().unwrap_or_default());
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if let Some(id) = tc["id"].as_str() {
                assert_eq!(i, calls.len(), "calls start in index order");
                calls.push((
                    id.to_owned(),
                    tc["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            }
            let args = tc["function"]["arguments"].as_str().unwrap_or_default();
            calls[i].2.push_str(args);
        }
    }
    assert_eq!(usage_chunks, 1, "one usage chunk when asked for");
    let want = match g.stop {
        StopReason::ToolUse => "tool_calls",
        StopReason::Length => "length",
        _ => "stop",
    };
    assert_eq!(finishes, [want], "exactly one finish_reason, mapped");
    assert_eq!(text, g.text());
    assert_eq!(thinking, g.thinking());
    let want_calls: Vec<(String, String, String)> = g
        .calls
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.arguments()))
        .collect();
    assert_eq!(calls, want_calls);
}

/// Checks an Anthropic client stream against the event grammar:
/// `message_start`, then blocks one after another (start, its deltas, its
/// stop; indexes counting up), `message_delta`, `message_stop`; `ping`
/// anywhere in between.
fn check_anthropic(body: &str, g: &Generated) {
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (ev, data) = s.split_once('\n').unwrap();
            let name = ev.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "the event name is its type");
            (name, data)
        })
        .collect();
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "public");
    assert!(start["usage"]["input_tokens"].is_u64());
    let mut open: Option<(u64, String)> = None;
    let mut next = 0;
    let mut blocks: Vec<(String, Value, String, String)> = Vec::new();
    let mut deltas_seen = 0;
    for (name, data) in &events[1..events.len() - 1] {
        match name.as_str() {
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "blocks do not overlap");
                assert_eq!(deltas_seen, 0, "message_delta comes after every block");
                assert_eq!(data["index"], next, "indexes count up");
                let b = &data["content_block"];
                let kind = b["type"].as_str().unwrap().to_owned();
                match kind.as_str() {
                    "text" => assert_eq!(b["text"], ""),
                    "thinking" => {
                        assert_eq!(b["thinking"], "");
                        assert_eq!(b["signature"], "", "thinking starts with a signature");
                    }
                    "tool_use" => assert_eq!(b["input"], json!({})),
                    other => panic!("unexpected block {other}"),
                }
                open = Some((next, kind.clone()));
                blocks.push((kind, b.clone(), String::new(), String::new()));
                next += 1;
            }
            "content_block_delta" => {
                let (index, kind) = open.clone().expect("a delta inside a block");
                assert_eq!(data["index"], index);
                let d = &data["delta"];
                let block = blocks.last_mut().unwrap();
                match (kind.as_str(), d["type"].as_str().unwrap()) {
                    ("text", "text_delta") => block.2.push_str(d["text"].as_str().unwrap()),
                    ("thinking", "thinking_delta") => {
                        assert!(block.3.is_empty(), "no thinking after the signature");
                        block.2.push_str(d["thinking"].as_str().unwrap())
                    }
                    ("thinking", "signature_delta") => {
                        block.3.push_str(d["signature"].as_str().unwrap())
                    }
                    ("tool_use", "input_json_delta") => {
                        block.2.push_str(d["partial_json"].as_str().unwrap())
                    }
                    (k, t) => panic!("a {t} in a {k} block"),
                }
            }
            "content_block_stop" => {
                let (index, _) = open.take().expect("a stop closes an open block");
                assert_eq!(data["index"], index);
            }
            "message_delta" => {
                assert!(open.is_none(), "message_delta after the last block closed");
                deltas_seen += 1;
                let want = match g.stop {
                    StopReason::ToolUse => "tool_use",
                    StopReason::Length => "max_tokens",
                    _ => "end_turn",
                };
                assert_eq!(data["delta"]["stop_reason"], want);
                assert!(data["usage"]["output_tokens"].is_u64());
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(deltas_seen, 1, "exactly one message_delta");
    let text: String = blocks
        .iter()
        .filter(|b| b.0 == "text")
        .map(|b| b.2.as_str())
        .collect();
    assert_eq!(text, g.text());
    let thinking: String = blocks
        .iter()
        .filter(|b| b.0 == "thinking")
        .map(|b| b.2.as_str())
        .collect();
    assert_eq!(thinking, g.thinking());
    let signatures: String = blocks
        .iter()
        .filter(|b| b.0 == "thinking")
        .map(|b| b.3.as_str())
        .collect();
    assert_eq!(signatures, g.signature.clone().unwrap_or_default());
    let calls: Vec<(String, String, String)> = blocks
        .iter()
        .filter(|b| b.0 == "tool_use")
        .map(|b| {
            (
                b.1["id"].as_str().unwrap().to_owned(),
                b.1["name"].as_str().unwrap().to_owned(),
                b.2.clone(),
            )
        })
        .collect();
    let want_calls: Vec<(String, String, String)> = g
        .calls
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.arguments()))
        .collect();
    assert_eq!(calls, want_calls);
}

/// Checks a Responses client stream against its grammar: numbered events,
/// `response.created` and `response.in_progress`, then items one after
/// another (added, their deltas, their `.done`s, done with the whole item,
/// output indexes counting up), then one terminal event whose output is the
/// items done.
fn check_responses(body: &str, g: &Generated) {
    let events: Vec<Value> = body
        .split("\n\n")
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (ev, data) = s.split_once('\n').unwrap();
            let name = ev.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "the event name is its type");
            data
        })
        .collect();
    for (n, ev) in events.iter().enumerate() {
        assert_eq!(ev["sequence_number"], n, "events numbered from 0");
    }
    let kind = |n: usize| events[n]["type"].as_str().unwrap();
    assert_eq!(kind(0), "response.created");
    assert_eq!(kind(1), "response.in_progress");
    let last = events.len() - 1;
    let want_terminal = match g.stop {
        StopReason::Length => "response.incomplete",
        _ => "response.completed",
    };
    assert_eq!(kind(last), want_terminal, "one terminal event, mapped");
    let id = &events[0]["response"]["id"];
    assert_eq!(&events[last]["response"]["id"], id);
    let mut open: Option<Value> = None;
    let mut done: Vec<Value> = Vec::new();
    let mut streamed = String::new();
    for ev in &events[2..last] {
        let t = ev["type"].as_str().unwrap();
        match t {
            "response.output_item.added" => {
                assert!(open.is_none(), "items do not overlap");
                assert_eq!(ev["output_index"], done.len(), "output indexes count up");
                open = Some(ev["item"].clone());
                streamed.clear();
            }
            "response.output_item.done" => {
                let item = open.take().expect("done closes an open item");
                assert_eq!(ev["item"]["id"], item["id"]);
                let whole = &ev["item"];
                let text = match whole["type"].as_str().unwrap() {
                    "message" => whole["content"][0]["text"].as_str().unwrap().to_owned(),
                    "reasoning" => whole["summary"][0]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    "function_call" => whole["arguments"].as_str().unwrap().to_owned(),
                    other => panic!("unexpected item {other}"),
                };
                assert_eq!(text, streamed, "the whole item is its deltas");
                done.push(whole.clone());
            }
            "response.content_part.added"
            | "response.content_part.done"
            | "response.reasoning_summary_part.added"
            | "response.reasoning_summary_part.done"
            | "response.output_text.done"
            | "response.reasoning_summary_text.done"
            | "response.function_call_arguments.done" => {
                let item = open.as_ref().expect("inside an item");
                assert_eq!(ev["item_id"], item["id"]);
            }
            "response.output_text.delta"
            | "response.reasoning_summary_text.delta"
            | "response.function_call_arguments.delta" => {
                let item = open.as_ref().expect("a delta inside an item");
                assert_eq!(ev["item_id"], item["id"]);
                assert_eq!(ev["output_index"], done.len());
                streamed.push_str(ev["delta"].as_str().unwrap());
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(open.is_none(), "every item is done before the end");
    let output = events[last]["response"]["output"].as_array().unwrap();
    assert_eq!(output, &done, "the terminal output is the items done");
    let of = |kind: &str, f: &dyn Fn(&Value) -> String| -> String {
        done.iter().filter(|i| i["type"] == kind).map(f).collect()
    };
    assert_eq!(
        of("message", &|i| i["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned()),
        g.text()
    );
    assert_eq!(
        of("reasoning", &|i| i["summary"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()),
        g.thinking()
    );
    let calls: Vec<(String, String, String)> = done
        .iter()
        .filter(|i| i["type"] == "function_call")
        .map(|i| {
            (
                i["call_id"].as_str().unwrap().to_owned(),
                i["name"].as_str().unwrap().to_owned(),
                i["arguments"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want_calls: Vec<(String, String, String)> = g
        .calls
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.arguments()))
        .collect();
    assert_eq!(calls, want_calls);
    let usage = &events[last]["response"]["usage"];
    assert!(usage["output_tokens"].is_u64() && usage["input_tokens"].is_u64());
}

fn to_responses_client(events: &[ChatEvent]) -> String {
    let req = request();
    let head = responses::Head::new("resp_1".into(), 7, "public", Arc::default());
    let enc = responses::StreamEncoder::new(head, req.clone(), None);
    encode(enc, events, &req)
}

fn to_openai_client(events: &[ChatEvent]) -> String {
    let req = request();
    let enc = openai::StreamEncoder::new("chatcmpl-1".into(), 7, "public".into(), true);
    encode(enc, events, &req)
}

fn to_anthropic_client(events: &[ChatEvent]) -> String {
    let req = request();
    let enc = anthropic::StreamEncoder::new("msg_1".into(), req.clone());
    encode(enc, events, &req)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn openai_upstream_to_openai_client(g in generated(false)) {
        let events = decode(&openai_stream(&g), &g.cuts, Up::OpenAi);
        check_openai(&to_openai_client(&events), &g);
    }

    #[test]
    fn openai_upstream_to_anthropic_client(g in generated(false)) {
        let events = decode(&openai_stream(&g), &g.cuts, Up::OpenAi);
        check_anthropic(&to_anthropic_client(&events), &g);
    }

    #[test]
    fn anthropic_upstream_to_openai_client(g in generated(true)) {
        let events = decode(&anthropic_stream(&g), &g.cuts, Up::Anthropic);
        check_openai(&to_openai_client(&events), &g);
    }

    #[test]
    fn anthropic_upstream_to_anthropic_client(g in generated(true)) {
        let events = decode(&anthropic_stream(&g), &g.cuts, Up::Anthropic);
        check_anthropic(&to_anthropic_client(&events), &g);
    }

    #[test]
    fn openai_upstream_to_responses_client(g in generated(false)) {
        let events = decode(&openai_stream(&g), &g.cuts, Up::OpenAi);
        check_responses(&to_responses_client(&events), &g);
    }

    #[test]
    fn anthropic_upstream_to_responses_client(g in generated(true)) {
        let events = decode(&anthropic_stream(&g), &g.cuts, Up::Anthropic);
        check_responses(&to_responses_client(&events), &g);
    }

    #[test]
    fn responses_upstream_to_openai_client(g in generated_for_responses()) {
        let events = decode(&responses_stream(&g), &g.cuts, Up::Responses);
        check_openai(&to_openai_client(&events), &g);
    }

    #[test]
    fn responses_upstream_to_anthropic_client(g in generated_for_responses()) {
        let events = decode(&responses_stream(&g), &g.cuts, Up::Responses);
        check_anthropic(&to_anthropic_client(&events), &g);
    }

    #[test]
    fn responses_upstream_to_responses_client(g in generated_for_responses()) {
        let events = decode(&responses_stream(&g), &g.cuts, Up::Responses);
        check_responses(&to_responses_client(&events), &g);
    }
}

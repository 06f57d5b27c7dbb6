//! Entry points for fuzzing: one function per decoder of what troupe reads
//! from outside (client requests, upstream streams and bodies, agent and
//! CLI output, socket packets, the configuration). The fuzz targets in
//! `fuzz/` and the corpus replay of the test suite (`tests/fuzz_corpus.rs`)
//! call these; nothing else does, and the module is hidden from the docs.
//!
//! Each function takes the raw input, drives one decoder to its end the way
//! the gateway does and drops what it decoded. None of them panics on any
//! input: a panic is a bug in the decoder. The functions that also check a
//! property (two readings that must agree) return `Err` describing the
//! disagreement, and the fuzz target turns that into a crash.
//!
//! Streamed inputs arrive in pieces, and a decoder must not care where the
//! pieces end. Those functions read the pieces from the input itself
//! ([`split`]): the first byte's low two bits are how many of the next
//! bytes (0 to 3) are piece lengths; the rest is the payload, cut into
//! pieces of those lengths in turn. A length of 0 is an empty piece; with
//! no lengths, or only zeros, the payload arrives whole. A recorded stream
//! with a `0x00` byte in front is therefore that stream in one piece.

use std::sync::Mutex;

use futures_util::FutureExt as _;
use serde_json::{json, Value};

use crate::canonical::{ChatEvent, ErrorKind, UpstreamError};
use crate::protocol::openai::wire::ChunkIn;
use crate::protocol::openai::ChunkDecoder;
use crate::protocol::sse::{SseError, SseEvent, SseParser};
use crate::upstream::cli::{Out, Parser};
use crate::upstream::http::stream::StreamDecoder;

/// Cuts fuzz input into the pieces it arrives in (see the module docs).
fn split(data: &[u8]) -> Vec<&[u8]> {
    let Some((&head, rest)) = data.split_first() else {
        return Vec::new();
    };
    let (lens, payload) = rest.split_at(usize::from(head & 3).min(rest.len()));
    if lens.iter().all(|&n| n == 0) {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    // At least one length is not zero, so every cycle consumes input.
    for &n in lens.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(usize::from(n).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

// ---- what clients send ----

/// An OpenAI Chat Completions request body.
pub fn openai_request(data: &[u8]) {
    let _ = crate::protocol::openai::decode_request(data);
}

/// A Responses API request body; a decoded one is also continued from
/// itself (its input as the stored conversation), as
/// `previous_response_id` does.
pub fn responses_request(data: &[u8]) {
    if let Ok((mut chat, echo)) = crate::protocol::responses::decode_request(data) {
        let earlier = crate::protocol::responses::stored_input(&echo.input_items);
        let _ = crate::protocol::responses::continue_from(&mut chat, &earlier, &echo);
    }
}

/// An Anthropic Messages request body.
pub fn anthropic_request(data: &[u8]) {
    let _ = crate::protocol::anthropic::decode_request(data);
}

/// A request body under a `Content-Encoding`. The first byte picks the
/// coding (low two bits: gzip, deflate, br, zstd) and the decoded-size
/// limit (bit 2: 64 bytes, else 1 MiB); the rest is the encoded body.
/// Checks that nothing longer than the limit comes out.
pub fn request_body(data: &[u8]) -> Result<(), String> {
    use crate::http::body::{decode, Coding};
    let Some((&head, raw)) = data.split_first() else {
        return Ok(());
    };
    let coding = match head & 3 {
        0 => Coding::Gzip,
        1 => Coding::Deflate,
        2 => Coding::Br,
        _ => Coding::Zstd,
    };
    let limit = if head & 4 != 0 { 64 } else { 1 << 20 };
    match decode(coding, raw, limit) {
        Ok(body) if body.len() > limit => Err(format!(
            "{coding:?} body decoded to {} bytes, over the limit of {limit}",
            body.len()
        )),
        _ => Ok(()),
    }
}

// ---- SSE framing ----

/// Every event of a stream fed in `pieces`, as the upstream readers take
/// them, then the one a stream without a final blank line ends with.
fn sse_events(pieces: &[&[u8]], max_line: usize) -> Result<Vec<SseEvent>, SseError> {
    let mut parser = SseParser::new(max_line);
    let mut out = Vec::new();
    for piece in pieces {
        parser.push(piece);
        while let Some(ev) = parser.next_event()? {
            out.push(ev.clone());
        }
    }
    out.extend(parser.finish());
    Ok(out)
}

/// An SSE stream, in the pieces the input picks ([`split`]). Checks that
/// the pieces give the same events as the whole stream read at once.
pub fn sse(data: &[u8]) -> Result<(), String> {
    let pieces = split(data);
    let whole = pieces.concat();
    let at_once = sse_events(&[&whole], SseParser::DEFAULT_MAX_LINE);
    let in_pieces = sse_events(&pieces, SseParser::DEFAULT_MAX_LINE);
    if at_once != in_pieces {
        return Err(format!(
            "SSE events depend on where the stream is cut: whole {at_once:?}, \
             in pieces {:?} {in_pieces:?}",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        ));
    }
    // A short line limit, for the refusal path: it only must not panic.
    let _ = sse_events(&pieces, 16);
    Ok(())
}

// ---- what upstreams stream back ----

/// Runs a stream through `decoder` the way the HTTP kinds' reader does
/// (`upstream::http::stream::pump`): pieces into the SSE parser, events
/// into the decoder until its end marker or the first error.
fn pump<D: StreamDecoder>(decoder: &mut D, pieces: &[&[u8]]) {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    for piece in pieces {
        if decoder.done() {
            return;
        }
        parser.push(piece);
        while !decoder.done() {
            match parser.next_event() {
                Ok(Some(ev)) => {
                    if decoder.event(ev, &mut events).is_err() {
                        return;
                    }
                    events.clear();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    if !decoder.done() {
        if let Some(ev) = parser.finish() {
            let _ = decoder.event(&ev, &mut events);
        }
    }
}

/// A stream (in pieces, [`split`]) and a whole body (the same payload) of
/// an HTTP upstream kind whose decoder `new` makes.
fn stream_and_body<D: StreamDecoder>(data: &[u8], new: fn() -> D) {
    let pieces = split(data);
    pump(&mut new(), &pieces);
    let _ = new().body(&pieces.concat(), &mut Vec::new());
}

/// What serde alone makes of one event of an OpenAI stream: the reference
/// the fast chunk reader must agree with.
fn openai_reference(
    decoder: &mut ChunkDecoder,
    data: &str,
    out: &mut Vec<ChatEvent>,
) -> Result<(), UpstreamError> {
    if data.trim() == "[DONE]" {
        decoder.finish();
        return Ok(());
    }
    let chunk: ChunkIn = serde_json::from_str(data).map_err(|e| {
        UpstreamError::new(
            ErrorKind::Protocol,
            format!("upstream sent an unreadable chunk: {e}"),
        )
    })?;
    decoder.push_chunk(chunk, out)
}

/// An OpenAI-compatible upstream's SSE stream, read whole, every event
/// decoded twice: by [`ChunkDecoder`] as the gateway reads it (its fast
/// chunk reader first, serde for what that reader leaves) and by serde
/// alone. Checks that both give the same events, errors and state, event
/// by event, all the way (past errors and `[DONE]` too). The payload is
/// also read as a whole non-streamed completion body.
pub fn openai_stream(data: &[u8]) -> Result<(), String> {
    let mut parser = SseParser::default();
    parser.push(data);
    let mut events: Vec<SseEvent> = Vec::new();
    while let Ok(Some(ev)) = parser.next_event() {
        events.push(ev.clone());
    }
    events.extend(parser.finish());
    let mut fast = ChunkDecoder::default();
    let mut reference = ChunkDecoder::default();
    for (i, ev) in events.iter().enumerate() {
        let mut got = Vec::new();
        let got_result = StreamDecoder::event(&mut fast, ev, &mut got);
        let mut want = Vec::new();
        let want_result = openai_reference(&mut reference, &ev.data, &mut want);
        if got_result != want_result || got != want {
            return Err(format!(
                "event {i} {:?}: the gateway's reading {got_result:?} {got:?} differs from \
                 serde's {want_result:?} {want:?}",
                ev.data
            ));
        }
        if (fast.done(), fast.stopped()) != (reference.done(), reference.stopped()) {
            return Err(format!(
                "event {i} {:?}: done/stopped {:?} differ from serde's {:?}",
                ev.data,
                (fast.done(), fast.stopped()),
                (reference.done(), reference.stopped())
            ));
        }
    }
    let _ = ChunkDecoder::default().body(data, &mut Vec::new());
    Ok(())
}

/// An Anthropic upstream's stream (in pieces, [`split`]), and the payload
/// as a whole non-streamed message body.
pub fn anthropic_stream(data: &[u8]) {
    stream_and_body(data, crate::protocol::anthropic::EventDecoder::default);
}

/// An OpenAI Responses upstream's stream (in pieces, [`split`]), and the
/// payload as a whole response object.
pub fn responses_stream(data: &[u8]) {
    stream_and_body(
        data,
        crate::protocol::responses::client::EventDecoder::default,
    );
}

/// An OnDemand upstream's stream (in pieces, [`split`]), and the payload as
/// a whole `responseMode: "sync"` body.
pub fn ondemand_stream(data: &[u8]) {
    stream_and_body(data, crate::upstream::ondemand::Decoder::new);
}

/// A LangGraph run's event stream (in pieces, [`split`]), read as the
/// `langgraph` kind relays it: until the `end` event or the first error.
pub fn langgraph_stream(data: &[u8]) {
    let mut decoder = crate::upstream::langgraph::Decoder::default();
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    for piece in split(data) {
        parser.push(piece);
        loop {
            let ev = match parser.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => return,
            };
            let end = ev.event.as_deref() == Some("end");
            if decoder.event(ev, &mut out).is_err() || end {
                return;
            }
            out.clear();
        }
    }
    if let Some(ev) = parser.finish() {
        let _ = decoder.event(&ev, &mut out);
    }
}

// ---- CLI output ----

/// A CLI's stdout read as the `cli` kind reads it: lines under a length
/// cap, each parsed as JSON (other lines skipped) and given to `parser`,
/// until the end or the first error. The first byte sets how the output
/// arrives: its low seven bits + 1 are the read buffer's size; its high bit
/// sets a line cap of 64 bytes (else the default). The rest is the output.
fn cli_lines(data: &[u8], parser: &mut dyn Parser) {
    use crate::upstream::cli::{next_line, DEFAULT_MAX_LINE};
    let Some((&head, output)) = data.split_first() else {
        return;
    };
    let capacity = usize::from(head & 0x7f) + 1;
    let max_line = if head & 0x80 != 0 {
        64
    } else {
        DEFAULT_MAX_LINE
    };
    let mut reader = tokio::io::BufReader::with_capacity(capacity, output);
    let mut out = Out::new();
    let mut line = Vec::new();
    // Reading a byte slice never waits: the future is ready at once. The
    // end, a read error (a line over the cap) and a parser error end it.
    while let Some(Ok(true)) = next_line(&mut reader, max_line, &mut line).now_or_never() {
        let text = String::from_utf8_lossy(&line);
        let step = match serde_json::from_str::<Value>(text.trim()) {
            Ok(v) => parser.line(&v, &mut out),
            Err(_) => Ok(()),
        };
        out.events.clear();
        if step.is_err() {
            break;
        }
    }
}

/// Claude Code's `stream-json` output (see [`cli_lines`] for the first byte).
pub fn cli_claude(data: &[u8]) {
    cli_lines(data, &mut crate::upstream::cli::claude::Claude::default());
}

/// Codex's `exec --json` output (see [`cli_lines`] for the first byte).
pub fn cli_codex(data: &[u8]) {
    cli_lines(data, &mut crate::upstream::cli::codex::Codex);
}

/// Gemini CLI's `stream-json` output (see [`cli_lines`] for the first byte).
pub fn cli_gemini(data: &[u8]) {
    cli_lines(data, &mut crate::upstream::cli::gemini::Gemini);
}

// ---- sockets and agents ----

/// Engine.IO / socket.io packets, as the `socketio` kind's connection reads
/// them after the handshake: one packet per WebSocket text message, here
/// separated by `\x1e` (as Engine.IO's polling transport separates them),
/// routed with langfast's event names into one connection's routes.
pub fn socketio_packets(data: &[u8]) {
    use crate::upstream::socketio::client::{handle_packet, EventNames, Routes};
    let text = String::from_utf8_lossy(data);
    let names = EventNames {
        chunk: "execution:chunk".to_owned(),
        finish: Some("completion_finished".to_owned()),
    };
    let routes = Mutex::new(Routes::default());
    for packet in text.split('\u{1e}') {
        let _ = handle_packet(packet, &names, &routes);
    }
}

/// A Lingma agent's WebSocket byte stream (in pieces, [`split`]): LSP
/// frames reassembled, then each JSON-RPC message (or batch) read as the
/// `lingma` kind reads it (routing keys, a reply to requests, answer text,
/// tool events, finishes), until the framing breaks. The payload is also
/// read as the agent's info file.
pub fn lingma_rpc(data: &[u8]) {
    use crate::upstream::lingma::rpc::Decoder;
    let pieces = split(data);
    let mut decoder = Decoder::default();
    for piece in &pieces {
        let Ok(messages) = decoder.feed(piece) else {
            break;
        };
        for m in messages {
            match m {
                Value::Array(batch) => batch.iter().for_each(lingma_message),
                one => lingma_message(&one),
            }
        }
    }
    let _ = crate::upstream::lingma::parse_info(&String::from_utf8_lossy(&pieces.concat()));
}

/// One JSON-RPC message from a Lingma agent.
fn lingma_message(m: &Value) {
    use crate::upstream::lingma::{answer_text, finish_outcome, tool_event};
    let Some(method) = m.get("method").and_then(Value::as_str) else {
        return;
    };
    if let Some(id) = m.get("id").filter(|v| !v.is_null()) {
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": Value::Null});
        let _ = crate::upstream::lingma::rpc::frame(&reply);
    }
    let params = m.get("params").cloned().unwrap_or(Value::Null);
    let _ = crate::upstream::lingma::rpc::route_keys(&params);
    match method {
        "chat/answer" => {
            let _ = answer_text(&params);
        }
        "tool/call/sync" | "tool/invoke" | "tool/invokeResult" => {
            let _ = tool_event(&params);
        }
        "chat/finish" => {
            let _ = finish_outcome(&params);
            let _ = params.get("fullAnswer").and_then(Value::as_str);
        }
        _ => {}
    }
}

// ---- configuration ----

/// A configuration file: TOML read as `troupe::config::load` reads it (the
/// `config` crate, without the environment overrides), then checked by
/// `config::from_value` with every kind's own checks (the registry's
/// `check_pool`). Input that is not UTF-8 is refused as the file would be.
///
/// Secret keys (`*_file`) name files, which are read as the gateway reads
/// them: a fuzzer that writes a path to an endless file would wait on it.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let built = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .build();
    let Ok(raw) = built.and_then(|c| c.try_deserialize::<Value>()) else {
        return;
    };
    let _ = crate::config::from_value(raw, crate::upstream::registry::check_pool);
}

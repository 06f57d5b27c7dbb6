//! Golden translation fixtures: each file under `tests/fixtures/translation/`
//! holds a client request or an upstream stream and what it must become in
//! the other protocol. Kept as data so a translation bug shows up as a diff
//! of wire JSON, and a new case needs no code.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use serde_json::{json, Value};

use crate::canonical::{ChatEvent, ChatRequest, Message, Role};
use crate::protocol::EventEncoder;
use crate::protocol::{anthropic, openai};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translation")
}

/// The request a stream answers; its token count shows in `message_start`
/// when the upstream reports usage only at the end.
fn stream_request(model: &str) -> Arc<ChatRequest> {
    Arc::new(ChatRequest {
        model: model.to_owned(),
        messages: vec![Message::text(Role::User, "hi")],
        ..Default::default()
    })
}

fn openai_stream_events(input: &[Value], model: &str) -> Vec<ChatEvent> {
    let mut d = openai::ChunkDecoder::default();
    let mut events = vec![ChatEvent::Start {
        model: model.to_owned(),
    }];
    for chunk in input {
        if chunk == "[DONE]" {
            break;
        }
        d.decode(&chunk.to_string(), &mut events).unwrap();
    }
    events
}

fn anthropic_stream_events(input: &[Value], model: &str) -> Vec<ChatEvent> {
    let mut d = anthropic::EventDecoder::default();
    let mut events = vec![ChatEvent::Start {
        model: model.to_owned(),
    }];
    for ev in input {
        assert_eq!(
            ev["event"], ev["data"]["type"],
            "event name must match type: {ev}"
        );
        d.decode(&ev["data"].to_string(), &mut events).unwrap();
    }
    assert!(d.done(), "the Anthropic stream must end with message_stop");
    events
}

fn to_anthropic(events: &[ChatEvent], model: &str) -> Value {
    let req = stream_request(model);
    let mut enc = anthropic::StreamEncoder::new("msg_fixture".into(), req.clone());
    let mut out = BytesMut::new();
    for ev in events {
        enc.event(ev, &mut out);
    }
    assert!(enc.stopped());
    enc.finish(&req, &mut out);
    let text = String::from_utf8(out.to_vec()).unwrap();
    Value::Array(
        text.split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (ev, data) = s.split_once('\n').unwrap();
                json!({
                    "event": ev.strip_prefix("event: ").unwrap(),
                    "data": serde_json::from_str::<Value>(data.strip_prefix("data: ").unwrap()).unwrap(),
                })
            })
            .collect(),
    )
}

fn to_openai(events: &[ChatEvent], model: &str) -> Value {
    let req = stream_request(model);
    let mut enc = openai::StreamEncoder::new("chatcmpl-fixture".into(), 0, model.to_owned(), true);
    let mut out = BytesMut::new();
    for ev in events {
        enc.event(ev, &mut out);
    }
    assert!(enc.stopped());
    enc.finish(&req, &mut out);
    let text = String::from_utf8(out.to_vec()).unwrap();
    Value::Array(
        text.split("\n\n")
            .filter(|s| !s.is_empty())
            .map(|s| {
                let data = s.strip_prefix("data: ").unwrap();
                serde_json::from_str(data).unwrap_or_else(|_| json!(data))
            })
            .collect(),
    )
}

fn translate(fixture: &Value) -> Value {
    let input = &fixture["input"];
    let str_field = |k: &str| fixture[k].as_str().unwrap_or("model").to_owned();
    let body = || input.to_string().into_bytes();
    let stream = || input.as_array().cloned().unwrap_or_default();
    match fixture["kind"].as_str().unwrap_or("") {
        "anthropic_request_to_openai_upstream" => {
            let req = anthropic::decode_request(&body()).unwrap();
            serde_json::to_value(openai::encode_request(&req, &str_field("upstream_model")))
                .unwrap()
        }
        "anthropic_request_to_anthropic_upstream" => {
            let req = anthropic::decode_request(&body()).unwrap();
            serde_json::to_value(anthropic::encode_request(
                &req,
                &str_field("upstream_model"),
            ))
            .unwrap()
        }
        "openai_request_to_anthropic_upstream" => {
            let req = openai::decode_request(&body()).unwrap();
            serde_json::to_value(anthropic::encode_request(
                &req,
                &str_field("upstream_model"),
            ))
            .unwrap()
        }
        "openai_stream_to_anthropic" => {
            let model = str_field("model");
            to_anthropic(&openai_stream_events(&stream(), &model), &model)
        }
        "anthropic_stream_to_openai" => {
            let model = str_field("model");
            to_openai(&anthropic_stream_events(&stream(), &model), &model)
        }
        "anthropic_stream_to_anthropic" => {
            let model = str_field("model");
            to_anthropic(&anthropic_stream_events(&stream(), &model), &model)
        }
        other => panic!("unknown fixture kind `{other}`"),
    }
}

#[test]
fn translation_fixtures_hold() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "fixtures missing from {}",
        dir().display()
    );
    let mut failed = Vec::new();
    for path in &files {
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let got = translate(&fixture);
        if got != fixture["expected"] && std::env::var_os("TROUPE_BLESS_FIXTURES").is_some() {
            // After a deliberate change of the translation: rewrite the
            // expectation, then review the diff.
            let mut fixture = fixture.clone();
            fixture["expected"] = got;
            let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
            std::fs::write(path, text).unwrap();
            continue;
        }
        if got != fixture["expected"] {
            failed.push(format!(
                "{}:\n{}",
                path.display(),
                serde_json::to_string_pretty(&got).unwrap()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "fixtures differ; got:\n{}",
        failed.join("\n\n")
    );
}

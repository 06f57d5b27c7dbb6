//! Reading an HTTP upstream's streamed answer, shared by the HTTP kinds:
//! the SSE framing, a server that ignored `stream: true`, and a stream that
//! breaks off are handled once here; each protocol only decodes its events.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use reqwest::header::CONTENT_TYPE;

use crate::canonical::{ChatEvent, ErrorKind, StopReason, UpstreamError};
use crate::protocol::sse::{SseEvent, SseParser};
use crate::upstream::EventSink;

/// A protocol's reader of an upstream's stream.
pub trait StreamDecoder {
    /// Decodes one SSE event into `out`.
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError>;
    /// Decodes a whole non-streamed JSON body into `out`.
    fn body(&mut self, body: &[u8], out: &mut Vec<ChatEvent>) -> Result<(), UpstreamError>;
    /// Whether the stream's own end marker has been read.
    fn done(&self) -> bool;
    /// Whether a stop reason has been read.
    fn stopped(&self) -> bool;
}

/// How long the end of a body may trail its `[DONE]`: see [`pump`].
const BODY_END_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends the events of a successful (2xx) upstream response to `sink`.
/// The answer ends with its end marker or its stop reason; anything else is
/// an error, so text is never cut silently.
pub async fn pump<B, D>(
    resp: http::Response<B>,
    model: &str,
    mut decoder: D,
    sink: &EventSink,
) -> Result<(), UpstreamError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    D: StreamDecoder,
{
    sink.send(ChatEvent::Start {
        model: model.to_owned(),
    })
    .await?;
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut events = Vec::new();
    let mut body = resp.into_body();
    if !is_sse {
        let body = body
            .collect()
            .await
            .map_err(|e| broken(format!("upstream body broke: {e}")))?
            .to_bytes();
        decoder.body(&body, &mut events)?;
        return finish(&decoder, events, sink).await;
    }
    let mut parser = SseParser::default();
    while !decoder.done() {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(bytes) = frame.into_data() else {
                    continue; // trailers
                };
                parser.push(&bytes);
                while !decoder.done() {
                    let next = parser
                        .next_event()
                        .map_err(|e| UpstreamError::new(ErrorKind::Protocol, e.to_string()))?;
                    let Some(ev) = next else { break };
                    decoder.event(ev, &mut events)?;
                    for e in events.drain(..) {
                        sink.send(e).await?;
                    }
                }
            }
            Some(Err(e)) => return Err(broken(format!("upstream stream broke: {e}"))),
            None => {
                if let Some(ev) = parser.finish() {
                    decoder.event(&ev, &mut events)?;
                }
                break;
            }
        }
    }
    // The answer is over at its end marker, but its connection can carry
    // the next request only once the body's own end has been read too:
    // hyper closes a connection whose body is dropped unread, unless the
    // rest is already there. Servers end the body right after the marker,
    // often in a separate write; a short wait keeps their connection
    // without holding the answer up long for one that does not.
    if decoder.done() && !body.is_end_stream() {
        let rest = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(BODY_END_GRACE, rest).await;
    }
    finish(&decoder, events, sink).await
}

async fn finish<D: StreamDecoder>(
    decoder: &D,
    events: Vec<ChatEvent>,
    sink: &EventSink,
) -> Result<(), UpstreamError> {
    for e in events {
        sink.send(e).await?;
    }
    if !decoder.done() && !decoder.stopped() {
        return Err(broken(
            "upstream closed the stream before the answer ended".to_owned(),
        ));
    }
    if !decoder.stopped() {
        // An end marker without a stop reason: the turn ended all the same.
        sink.send(ChatEvent::Stop(StopReason::End)).await?;
    }
    Ok(())
}

/// A stream that broke off is a connection failure. Whether retrying is
/// safe is not the upstream's call: the dispatcher retries only while
/// nothing has reached the client, so text is never repeated.
fn broken(message: String) -> UpstreamError {
    UpstreamError::new(ErrorKind::Connect, message)
}

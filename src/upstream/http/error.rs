//! Error classification and small helpers every HTTP kind shares.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::canonical::{ErrorKind, UpstreamError};
use crate::protocol::openai::wire::ErrorEnvelope;

/// Parses configured extra headers once, at session start.
pub(crate) fn extra_headers(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header `{k}`: {e}"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// Classifies a transport error from reqwest.
pub(crate) fn transport_error(e: &reqwest::Error) -> UpstreamError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    UpstreamError::new(kind, format!("upstream connection failed: {e}"))
}

/// Sends a request; a transport failure or a non-2xx answer becomes the
/// classified error every HTTP kind shares.
pub(crate) async fn send_checked(
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, UpstreamError> {
    let resp = req.send().await.map_err(|e| transport_error(&e))?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(status_error(http::Response::from(resp)).await)
    }
}

/// The non-empty string at `pointer` in a JSON reply: the id of an upstream
/// object just created (`what` names it in errors).
pub(crate) async fn reply_id(
    resp: reqwest::Response,
    pointer: &str,
    what: &str,
) -> Result<String, UpstreamError> {
    let v: serde_json::Value = resp.json().await.map_err(|e| {
        UpstreamError::new(
            ErrorKind::Protocol,
            format!("{what} reply is not JSON: {e}"),
        )
    })?;
    match v.pointer(pointer) {
        Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(UpstreamError::new(
            ErrorKind::Protocol,
            format!(
                "{what} reply has no {}",
                pointer.trim_start_matches('/').replace('/', ".")
            ),
        )),
    }
}

/// The most of an error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Classifies a non-2xx upstream response, keeping its error details.
/// Anthropic's envelope (`{"type":"error","error":{"type","message"}}`) is
/// OpenAI's with one more field, so both read through `ErrorEnvelope`.
pub(crate) async fn status_error<B>(resp: http::Response<B>) -> UpstreamError
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    if resp.status().is_redirection() {
        // Redirects are not followed (they would carry the key elsewhere):
        // the configured URL is wrong, which says nothing about the client.
        let to = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        let mut err = UpstreamError::new(
            ErrorKind::Unavailable,
            format!("upstream answered {status}, a redirect to {to}; check the pool's base_url"),
        );
        err.status = Some(status);
        return err;
    }
    let body = match Limited::new(resp.into_body(), ERROR_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let kind = match status {
        401 | 403 => ErrorKind::Auth,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::InvalidRequest,
    };
    let mut err = match serde_json::from_slice::<ErrorEnvelope>(&body) {
        Ok(env) => {
            let mut e = UpstreamError::new(kind, env.error.message);
            e.error_type = env.error.kind;
            e.param = env.error.param;
            e.code = env.error.code.map(|c| match c {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            e
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let shown: String = text.chars().take(300).collect();
            UpstreamError::new(
                kind,
                if shown.is_empty() {
                    format!("upstream answered {status}")
                } else {
                    format!("upstream answered {status}: {shown}")
                },
            )
        }
    };
    err.status = Some(status);
    err.retry_after = retry_after;
    err
}

//! Reading request bodies with a size limit, so an oversized body is
//! refused in the caller's protocol rather than by the framework.

use actix_web::{web, HttpRequest};
use bytes::BytesMut;
use futures_util::StreamExt as _;

use super::error::ApiError;

/// Memory set aside for a body before it arrives: a declared length is a
/// claim, not bytes, so the buffer grows only as bytes come in.
const FIRST_CAPACITY: usize = 16 * 1024;

/// Refuses a body that does not say it is JSON (415). Besides catching
/// mistakes early, it keeps web pages out: a JSON content type is not one a
/// page may send cross-origin without the browser asking first.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let essence = given
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if essence == "application/json" || (essence.contains('/') && essence.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType(match given {
        Some(v) => format!("`{}`", super::guard::echo(v)),
        None => "no Content-Type".into(),
    }))
}

/// Reads the whole body within `timeout`, failing with 413 past `limit`
/// bytes (before reading anything when the declared length says so).
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<BytesMut, ApiError> {
    match tokio::time::timeout(timeout, read_all(req, payload, limit)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::BodyTimeout(timeout.as_secs())),
    }
}

async fn read_all(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(FIRST_CAPACITY).min(FIRST_CAPACITY));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest {
            param: None,
            message: format!("cannot read the request body: {e}"),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Answers `Expect: 100-continue` for the HTTP server: a request whose
/// declared length is already over `limit` gets its 413 instead of
/// `100 Continue`, so the client never sends the body (and the connection
/// closes, as its body is unread).
pub(crate) fn expect_continue(
    req: actix_http::Request,
    limit: usize,
) -> Result<actix_http::Request, actix_http::Response<actix_http::body::BoxBody>> {
    use actix_http::HttpMessage as _;
    if declared_length(req.headers()).is_some_and(|n| n > limit) {
        let protocol = super::protocol_for(req.path(), req.headers());
        return Err(ApiError::PayloadTooLarge { limit }.render(protocol).into());
    }
    Ok(req)
}

/// The body length a request declares, if it declares a readable one.
fn declared_length(headers: &actix_web::http::header::HeaderMap) -> Option<usize> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

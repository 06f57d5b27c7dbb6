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
    Err(ApiError::UnsupportedMediaType(format!(
        "the request body must be JSON: send `Content-Type: application/json` (got {})",
        match given {
            Some(v) => format!("`{}`", super::guard::echo(v)),
            None => "no Content-Type".into(),
        }
    )))
}

/// A `Content-Encoding` the gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    /// zlib-wrapped, as HTTP defines it; raw deflate is accepted too.
    Deflate,
    Br,
    Zstd,
}

/// The codings applied to the body, in the order they were applied
/// (decoded in reverse); 415 for one the gateway does not know.
fn codings(req: &HttpRequest) -> Result<Vec<Coding>, ApiError> {
    let mut out = Vec::new();
    for value in req.headers().get_all("content-encoding") {
        let value = value.to_str().unwrap_or("(not text)");
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(match name.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Br,
                "zstd" => Coding::Zstd,
                _ => {
                    return Err(ApiError::UnsupportedMediaType(format!(
                        "Content-Encoding `{}` is not supported (gzip, deflate, br, zstd are)",
                        super::guard::echo(name)
                    )))
                }
            });
        }
    }
    // Two layers are plausible; more is an attack, not a client.
    if out.len() > 2 {
        return Err(ApiError::UnsupportedMediaType(
            "more than two Content-Encodings".into(),
        ));
    }
    Ok(out)
}

/// Decodes `raw` through one coding, reading at most `limit + 1` bytes of
/// output, so a compression bomb costs at most the limit.
pub(crate) fn decode(coding: Coding, raw: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    let cap = limit as u64 + 1;
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    let read = match coding {
        Coding::Gzip => flate2::read::MultiGzDecoder::new(raw)
            .take(cap)
            .read_to_end(&mut out),
        Coding::Deflate => {
            let zlib = flate2::read::ZlibDecoder::new(raw)
                .take(cap)
                .read_to_end(&mut out);
            if zlib.is_err() {
                // Some clients send raw deflate under this name.
                out.clear();
                flate2::read::DeflateDecoder::new(raw)
                    .take(cap)
                    .read_to_end(&mut out)
            } else {
                zlib
            }
        }
        Coding::Br => brotli_decompressor::Decompressor::new(raw, 16 * 1024)
            .take(cap)
            .read_to_end(&mut out),
        Coding::Zstd => match ruzstd::decoding::StreamingDecoder::new(raw) {
            Ok(d) => d.take(cap).read_to_end(&mut out),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
    };
    if out.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    read.map_err(|e| ApiError::BadRequest {
        param: None,
        message: format!("cannot decode the {coding:?} request body: {e}"),
    })?;
    Ok(out)
}

/// The body with its `Content-Encoding`s undone, off the HTTP worker
/// (decompressing megabytes takes milliseconds), and `limit` applied to the
/// decoded size.
async fn decode_all(
    codings: Vec<Coding>,
    raw: BytesMut,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let work = move || {
        let mut layers = codings.iter().rev();
        let mut body = match layers.next() {
            Some(coding) => decode(*coding, &raw, limit)?,
            None => return Ok(raw),
        };
        for coding in layers {
            body = decode(*coding, &body, limit)?;
        }
        Ok::<_, ApiError>(BytesMut::from(bytes::Bytes::from(body)))
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(decoded) => decoded,
        Err(e) => Err(ApiError::Internal(format!(
            "decoding the request body: {e}"
        ))),
    }
}

/// Drops a UTF-8 byte order mark: JSON has none, but some clients (and
/// files saved by editors) send one.
fn strip_bom(body: &mut BytesMut) {
    if body.starts_with(b"\xEF\xBB\xBF") {
        let _ = body.split_to(3);
    }
}

/// Reads the whole body within `timeout`, failing with 413 past `limit`
/// bytes (before reading anything when the declared length says so), and
/// decodes its `Content-Encoding` with the same limit on the decoded size.
/// A leading byte order mark is dropped.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<BytesMut, ApiError> {
    let codings = codings(req)?;
    let raw = match tokio::time::timeout(timeout, read_all(req, payload, limit)).await {
        Ok(read) => read?,
        Err(_) => return Err(ApiError::BodyTimeout(timeout.as_secs())),
    };
    let mut body = if codings.is_empty() {
        raw
    } else {
        decode_all(codings, raw, limit).await?
    };
    strip_bom(&mut body);
    Ok(body)
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

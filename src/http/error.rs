//! The one error type handlers return, rendered in the caller's protocol.
//! `status_code` is an exhaustive match: every failure has a deliberate
//! status, and a 500 would be a bug.

use crate::actors::AcquireError;
use crate::canonical::{ErrorKind, UpstreamError};
use crate::protocol::{anthropic, openai, DecodeError};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

/// Which protocol's error envelope to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid API key: pass it as `Authorization: Bearer <key>` or `x-api-key`")]
    Unauthorized,
    #[error("{message}")]
    BadRequest {
        param: Option<String>,
        message: String,
    },
    #[error("the model `{}` does not exist or is not served here", crate::http::guard::echo(.0))]
    ModelNotFound(String),
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// Something the client named by id is not there (a stored response).
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<&'static str>,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no session became free within {waited_secs}s; retry later")]
    QueueTimeout { waited_secs: u64 },
    #[error("too many requests are waiting for a session; retry later")]
    QueueFull,
    #[error("{0}")]
    Unavailable(String),
    #[error("the request took longer than {0}s")]
    RequestTimeout(u64),
    #[error("{0}")]
    Upstream(UpstreamError),
    /// Work the gateway refuses rather than queues (token counting).
    #[error("{0}")]
    Overloaded(String),
    /// A body the gateway cannot read: not JSON, or in an unknown
    /// `Content-Encoding`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body did not arrive within {0}s (server.body_timeout)")]
    BodyTimeout(u64),
    /// A client key over one of its limits (`server.api_keys`).
    #[error(
        "the API key `{}` is over its limit of {}; retry in {} s",
        .0.client, .0.limit, retry_secs(.0.retry_after)
    )]
    KeyLimited(crate::limits::Refusal),
    #[error("the gateway has too many open connections (server.max_connections); retry later")]
    TooManyConnections,
    /// A bug: a task failed where no error was expected (it is logged and
    /// counted in `troupe_task_failures_total`).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Whole seconds to wait, at least one (what `Retry-After` carries).
fn retry_secs(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

impl From<crate::limits::Refusal> for ApiError {
    fn from(r: crate::limits::Refusal) -> Self {
        if let Some(m) = crate::metrics::get() {
            m.client_refused
                .with_label_values(&[&r.client, r.limit.label()])
                .inc();
        }
        ApiError::KeyLimited(r)
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        ApiError::BadRequest {
            param: (!e.param.is_empty()).then_some(e.param),
            message: e.message,
        }
    }
}

impl From<AcquireError> for ApiError {
    fn from(e: AcquireError) -> Self {
        match e {
            AcquireError::UnknownModel(m) => ApiError::ModelNotFound(m),
            AcquireError::QueueFull => ApiError::QueueFull,
            AcquireError::NoSessions(_) | AcquireError::NoOtherSession(_) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

impl ApiError {
    /// The HTTP status. Upstream client errors keep the upstream's status.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound(_) | ApiError::NotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueTimeout { .. } | ApiError::QueueFull | ApiError::KeyLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream(e) => upstream_status(e),
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The HTTP status in `protocol`. A queue that gave up is Anthropic's
    /// 529 `overloaded_error`, which its SDKs and Claude Code retry; OpenAI
    /// clients know the same thing as 429.
    pub fn status_for(&self, protocol: Protocol) -> StatusCode {
        match (self, protocol) {
            (
                ApiError::QueueTimeout { .. } | ApiError::QueueFull | ApiError::Overloaded(_),
                Protocol::Anthropic,
            ) => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            _ => self.status_code(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::QueueTimeout { .. }
            | ApiError::QueueFull
            | ApiError::Overloaded(_)
            | ApiError::TooManyConnections => Some(1),
            ApiError::Upstream(e) => e.retry_after.map(|d| d.as_secs().max(1)),
            ApiError::KeyLimited(r) => Some(retry_secs(r.retry_after)),
            _ => None,
        }
    }

    /// The response in `protocol`'s error envelope.
    pub fn render(&self, protocol: Protocol) -> HttpResponse {
        let status = self.status_for(protocol);
        let mut resp = HttpResponse::build(status);
        if matches!(
            self,
            ApiError::BodyTimeout(_)
                | ApiError::PayloadTooLarge { .. }
                | ApiError::TooManyConnections
        ) {
            // The rest of the body is not worth reading, and a connection
            // over the cap is the point.
            resp.force_close();
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            resp.insert_header(("Allow", *allow));
        }
        if let Some(secs) = self.retry_after() {
            resp.insert_header(("Retry-After", secs.to_string()));
        }
        let message = self.to_string();
        let body = match protocol {
            Protocol::OpenAi => {
                let (kind, code, param) = self.openai_parts();
                openai::server::error_body(&message, &kind, param.as_deref(), code.as_deref())
            }
            Protocol::Anthropic => {
                // Anthropic's envelope has no `param`: the message must name
                // the field, as Anthropic's own (`messages.0.content: ...`) do.
                let message = match self {
                    ApiError::BadRequest {
                        param: Some(p),
                        message,
                    } if !message.contains(p.as_str()) => format!("{p}: {message}"),
                    _ => message,
                };
                anthropic::server::error_body(
                    anthropic::server::error_type(status.as_u16()),
                    &message,
                )
            }
        };
        resp.content_type("application/json").body(body)
    }

    fn openai_parts(&self) -> (String, Option<String>, Option<String>) {
        let s = |v: &str| Some(v.to_owned());
        match self {
            ApiError::Unauthorized => ("invalid_request_error".into(), s("invalid_api_key"), None),
            ApiError::BadRequest { param, .. } => {
                ("invalid_request_error".into(), None, param.clone())
            }
            ApiError::ModelNotFound(_) => (
                "invalid_request_error".into(),
                s("model_not_found"),
                s("model"),
            ),
            ApiError::RouteNotFound(_) => ("invalid_request_error".into(), s("not_found"), None),
            ApiError::NotFound { param, .. } => (
                "invalid_request_error".into(),
                s("not_found"),
                param.map(str::to_owned),
            ),
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error".into(), s("request_too_large"), None)
            }
            ApiError::QueueTimeout { .. } | ApiError::QueueFull => {
                ("rate_limit_error".into(), s("rate_limit_exceeded"), None)
            }
            ApiError::Unavailable(_) => ("server_error".into(), s("service_unavailable"), None),
            ApiError::RequestTimeout(_) => ("server_error".into(), s("timeout"), None),
            ApiError::Overloaded(_) => ("rate_limit_error".into(), s("rate_limit_exceeded"), None),
            ApiError::KeyLimited(_) => ("rate_limit_error".into(), s("rate_limit_exceeded"), None),
            ApiError::UnsupportedMediaType(_) => (
                "invalid_request_error".into(),
                s("unsupported_media_type"),
                None,
            ),
            ApiError::Forbidden(_) => ("invalid_request_error".into(), s("forbidden"), None),
            ApiError::MethodNotAllowed { .. } => (
                "invalid_request_error".into(),
                s("method_not_allowed"),
                None,
            ),
            ApiError::BodyTimeout(_) => {
                ("invalid_request_error".into(), s("request_timeout"), None)
            }
            ApiError::TooManyConnections => ("server_error".into(), s("service_unavailable"), None),
            ApiError::Internal(_) => ("server_error".into(), s("internal_error"), None),
            ApiError::Upstream(e) => {
                let (kind, code) = crate::protocol::openai::openai_type_and_code(e);
                let param = if e.kind == ErrorKind::InvalidRequest {
                    e.param.clone()
                } else {
                    None
                };
                (kind, code, param)
            }
        }
    }
}

fn upstream_status(e: &UpstreamError) -> StatusCode {
    match e.kind {
        ErrorKind::InvalidRequest => e
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(StatusCode::is_client_error)
            .unwrap_or(StatusCode::BAD_REQUEST),
        ErrorKind::RateLimited | ErrorKind::SessionLost => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unavailable
        | ErrorKind::Connect
        | ErrorKind::Auth
        | ErrorKind::Protocol
        | ErrorKind::Cancelled => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_client_errors_keep_status_and_details() {
        let mut e = UpstreamError::new(ErrorKind::InvalidRequest, "bad");
        e.status = Some(422);
        e.param = Some("messages".into());
        e.code = Some("x".into());
        let api = ApiError::Upstream(e);
        assert_eq!(api.status_code().as_u16(), 422);
        let (kind, code, param) = api.openai_parts();
        assert_eq!(
            (kind.as_str(), code.as_deref(), param.as_deref()),
            ("invalid_request_error", Some("x"), Some("messages"))
        );
        let e = UpstreamError::new(ErrorKind::Timeout, "slow");
        assert_eq!(ApiError::Upstream(e).status_code().as_u16(), 504);
    }
}

//! Client authentication: `Authorization: Bearer <key>` or `x-api-key`,
//! compared in constant time against every configured key.

use actix_web::HttpRequest;
use subtle::ConstantTimeEq as _;

use super::error::ApiError;
use crate::config::Secret;

/// The keys clients may present; empty means no auth.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    keys: Vec<Secret>,
}

impl Auth {
    pub fn new(keys: Vec<Secret>) -> Self {
        Auth { keys }
    }

    /// The key a request presents, if any.
    pub fn presented(req: &HttpRequest) -> Option<&str> {
        let h = req.headers();
        if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if v.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
            {
                return v.get(7..).map(str::trim);
            }
        }
        h.get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// Accepts the request or answers 401.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        match Self::presented(req) {
            Some(given) if self.accepts(given) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// Whether `given` is one of the keys, compared in constant time with
    /// every key (no early exit that would tell which one came close).
    pub fn accepts(&self, given: &str) -> bool {
        let mut ok = subtle::Choice::from(0);
        for key in &self.keys {
            ok |= key.expose().as_bytes().ct_eq(given.as_bytes());
        }
        bool::from(ok)
    }
}

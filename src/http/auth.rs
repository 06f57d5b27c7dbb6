//! Client authentication: `Authorization: Bearer <key>` or `x-api-key`,
//! compared in constant time against every configured key.

use actix_web::HttpRequest;
use subtle::ConstantTimeEq as _;

use std::sync::Arc;

use super::error::ApiError;
use crate::config::{ApiKey, Secret};
use crate::limits::Client;

/// The keys clients may present, each with who it is; empty means no auth.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    keys: Vec<(Secret, Arc<Client>)>,
}

impl Auth {
    /// Keys without names or limits (`/metrics`).
    pub fn new(keys: Vec<Secret>) -> Self {
        Auth::of_clients(
            &keys
                .into_iter()
                .map(|k| ApiKey::plain(k.expose()))
                .collect::<Vec<_>>(),
        )
    }

    /// `server.api_keys`.
    pub fn of_clients(keys: &[ApiKey]) -> Self {
        Auth {
            keys: keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.key.clone(), Arc::new(Client::of(i, k))))
                .collect(),
        }
    }

    /// Accepts the request and says whose key it presents (`None` when no
    /// key is needed), or answers 401.
    pub(crate) fn client(&self, req: &HttpRequest) -> Result<Option<Arc<Client>>, ApiError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        Self::presented(req)
            .and_then(|given| self.find(given))
            .map(|i| Some(self.keys[i].1.clone()))
            .ok_or(ApiError::Unauthorized)
    }

    /// The index of `given` among the keys, compared in constant time
    /// with every key (no early exit that would tell which one came close).
    fn find(&self, given: &str) -> Option<usize> {
        use subtle::ConditionallySelectable as _;
        let mut found = subtle::Choice::from(0);
        let mut at = 0u64;
        for (i, (key, _)) in self.keys.iter().enumerate() {
            let eq = key.expose().as_bytes().ct_eq(given.as_bytes());
            at.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        bool::from(found).then_some(at as usize)
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
        self.client(req).map(drop)
    }

    /// Whether `given` is one of the keys.
    pub fn accepts(&self, given: &str) -> bool {
        self.find(given).is_some()
    }

    /// Every configured client, in configuration order.
    pub(crate) fn clients(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.keys.iter().map(|(_, c)| c)
    }
}

//! What every request passes before any route sees it: the cap on open
//! connections, and, when the gateway has no API keys, the checks that keep
//! web pages out (a foreign `Origin`, a `Host` that is not this machine).
//!
//! Without keys, anyone who can send a request can spend the upstream
//! accounts. On loopback that is the operator alone, except for two ways a
//! web page they visit can reach it: a cross-origin request (a CORS "simple"
//! request runs even when the browser hides the answer), and DNS rebinding
//! (a page's own host name re-pointed at 127.0.0.1, which makes the request
//! same-origin for the browser but carries that name in `Host`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::HttpRequest;

use super::error::ApiError;
use crate::config::ServerConfig;

/// The longest client string echoed back in an error message.
pub const ECHO_MAX: usize = 200;

/// `s` cut to [`ECHO_MAX`] bytes (on a character boundary), for messages
/// and logs: a client's megabyte-long name is not sent back to it.
pub fn echo(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= ECHO_MAX {
        return s.into();
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len()).into()
}

/// Counts open client connections. A connection holds a [`ConnSlot`] in its
/// extensions, which actix drops when the connection closes.
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<AtomicUsize>,
}

/// One open connection; `over` when it was opened beyond the cap.
struct ConnSlot {
    open: Arc<AtomicUsize>,
    over: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    /// Called by actix for each new connection.
    pub fn opened(&self, ext: &mut Extensions, max: usize) {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        ext.insert(ConnSlot {
            open: self.open.clone(),
            over: n > max,
        });
    }
}

/// The request checks, made once from the configuration.
pub struct Guard {
    keyless: bool,
    cors_origins: Vec<String>,
    allowed_hosts: Vec<String>,
}

impl Guard {
    pub fn new(server: &ServerConfig) -> Self {
        Guard {
            keyless: server.api_keys.is_empty(),
            cors_origins: server.cors_origins.clone(),
            allowed_hosts: server
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether browsers get CORS headers from any origin: keys are set and
    /// no list narrows it, or the list says `"*"`.
    pub fn cors_any(&self) -> bool {
        (!self.keyless && self.cors_origins.is_empty())
            || self.cors_origins.iter().any(|o| o == "*")
    }

    /// Whether `server.cors_origins` lists `origin` (`"*"` lists any).
    fn listed(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == "*" || o == origin)
    }

    /// Whether `origin` gets CORS headers when not [`Guard::cors_any`]:
    /// listed in `server.cors_origins`, or the gateway's own pages.
    pub fn origin_allowed(
        &self,
        origin: &actix_web::http::header::HeaderValue,
        head: &actix_web::dev::RequestHead,
    ) -> bool {
        let origin = origin.to_str().unwrap_or("");
        self.listed(origin)
            || head
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| same_origin(origin, h))
    }

    /// The refusal for `req`, if any.
    fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if req.conn_data::<ConnSlot>().is_some_and(|c| c.over) {
            return Err(ApiError::TooManyConnections);
        }
        // Probes of liveness come from orchestrators that name the pod's
        // address or a service name: they reveal nothing and spend nothing.
        if !self.keyless || matches!(req.path(), "/healthz" | "/readyz") {
            return Ok(());
        }
        let host = req
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap_or("\u{fffd}"));
        if let Some(host) = host {
            if !self.host_allowed(host_name(host)) {
                return Err(ApiError::Forbidden(format!(
                    "the host `{}` is not accepted without API keys (DNS rebinding): list it in \
                     server.allowed_hosts, or set server.api_keys",
                    echo(host)
                )));
            }
        }
        if let Some(origin) = req.headers().get("origin") {
            let origin = origin.to_str().unwrap_or("\u{fffd}");
            let same = host.is_some_and(|h| same_origin(origin, h));
            if !same && !self.listed(origin) {
                return Err(ApiError::Forbidden(format!(
                    "cross-origin requests from `{}` are refused without API keys: list the \
                     origin in server.cors_origins, or set server.api_keys",
                    echo(origin)
                )));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        // A rebinding page comes with a name its attacker registered, so a
        // name with a dot in it: never an address, `localhost`, or a
        // single-label name such as a compose service's (`troupe:8317`).
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
            || !name.contains('.')
            || name.ends_with(".localhost")
            || self.allowed_hosts.contains(&name)
    }
}

/// The name part of a `Host` header (`[::1]:80` → `[::1]`, `a:80` → `a`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request was
/// sent to: a page served by the gateway itself (the dashboard).
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

/// The middleware: refuses in the caller's protocol, or passes on.
pub async fn check<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: actix_web::middleware::Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let refused = req
        .app_data::<actix_web::web::Data<Guard>>()
        .and_then(|g| g.check(req.request()).err());
    match refused {
        Some(e) => {
            let protocol = super::protocol_of(req.request());
            Ok(req.into_response(e.render(protocol)).map_into_right_body())
        }
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_origins() {
        assert_eq!(host_name("localhost:8317"), "localhost");
        assert_eq!(host_name("[::1]:8317"), "[::1]");
        assert_eq!(host_name("evil.example"), "evil.example");
        let g = Guard::new(&ServerConfig {
            allowed_hosts: vec!["Troupe.Internal".into()],
            ..Default::default()
        });
        for ok in [
            "127.0.0.1",
            "[::1]",
            "localhost",
            "a.localhost",
            "troupe.internal",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "127.0.0.1.nip.io", "localhost.evil.example"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        assert!(same_origin("http://127.0.0.1:8317", "127.0.0.1:8317"));
        assert!(!same_origin("http://evil.example:8317", "127.0.0.1:8317"));
    }

    #[test]
    fn echoes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = echo(&long);
        assert!(cut.len() < ECHO_MAX + 32, "{}", cut.len());
        assert!(cut.ends_with("(2000 bytes)"));
        assert_eq!(echo("short"), "short");
    }
}

//! The HTTP client of the streaming API kinds (`openai`, `anthropic`): hyper's
//! pooled client and nothing more. reqwest, which the other kinds use for
//! their REST calls, re-parses the URL twice per request and runs redirect
//! and retry layers around every call; on the hot path that showed in
//! profiles. Redirects are not followed here either: an API endpoint that
//! redirects is misconfigured, and following it would resend the key.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::canonical::{ErrorKind, UpstreamError};

/// An upstream's answer, its body read as it arrives.
pub type Response = http::Response<hyper::body::Incoming>;

/// A pooled HTTP/1.1 and HTTP/2 client (plain or TLS); cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// A client whose connection attempts give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS setup: {e}"))?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(HttpClient { inner })
    }

    /// Sends `req`; a transport failure or a non-2xx answer becomes the
    /// classified error every HTTP kind shares.
    pub async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Response, UpstreamError> {
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| transport_error(&e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(super::openai::status_error(resp).await)
        }
    }
}

/// Classifies a transport error: a connect or read timeout, or a failed
/// connection. The message carries the causes, which hyper keeps apart.
fn transport_error(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut message = format!("upstream connection failed: {e}");
    let mut timed_out = false;
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            timed_out = true;
        }
        source = s.source();
    }
    let kind = if timed_out {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    UpstreamError::new(kind, message)
}

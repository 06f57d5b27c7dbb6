//! The HTTP client of the streaming API kinds (`openai`, `anthropic`): hyper's
//! pooled client and nothing more. reqwest, which the other kinds use for
//! their REST calls, re-parses the URL twice per request and runs redirect
//! and retry layers around every call; on the hot path that showed in
//! profiles. Redirects are not followed here either: an API endpoint that
//! redirects is misconfigured, and following it would resend the key.
//! An upstream that the environment's proxy settings (`HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) send through a proxy is called
//! through reqwest, which speaks to proxies.

use std::error::Error as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::canonical::{ErrorKind, UpstreamError};

/// An upstream's answer, its body read as it arrives.
pub type Response = http::Response<Body>;

/// The body of an upstream's answer, from either client.
pub enum Body {
    Direct(hyper::body::Incoming),
    Proxied(reqwest::Body),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            Body::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Proxied(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
}

/// A pooled HTTP/1.1 and HTTP/2 client (plain or TLS); cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// For upstreams behind a proxy.
    rest: reqwest::Client,
}

/// Whether the environment's proxy settings route `uri` through a proxy.
pub fn proxied(uri: &http::Uri) -> bool {
    hyper_util::client::proxy::matcher::Matcher::from_env()
        .intercept(uri)
        .is_some()
}

impl HttpClient {
    /// A client whose connection attempts give up after `connect_timeout`;
    /// `rest` (reqwest) carries the requests that go through a proxy.
    pub fn new(connect_timeout: Duration, rest: reqwest::Client) -> Result<Self, String> {
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
        Ok(HttpClient { inner, rest })
    }

    /// Sends `req` (through reqwest and the environment's proxy when
    /// `proxied`); a transport failure or a non-2xx answer becomes the
    /// classified error every HTTP kind shares.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
        proxied: bool,
    ) -> Result<Response, UpstreamError> {
        let resp = if proxied {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::from))
                .map_err(|e| super::openai::transport_error(&e))?;
            let resp = self
                .rest
                .execute(req)
                .await
                .map_err(|e| super::openai::transport_error(&e))?;
            http::Response::from(resp).map(Body::Proxied)
        } else {
            self.inner
                .request(req.map(Full::new))
                .await
                .map_err(|e| transport_error(&e))?
                .map(Body::Direct)
        };
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

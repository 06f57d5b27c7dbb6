//! The HTTP clients of the upstream kinds. The streaming API calls of the
//! `openai` and `anthropic` kinds go through hyper and nothing more:
//! reqwest, which the other kinds use for their REST calls, re-parses the
//! URL twice per request and runs redirect and retry layers around every
//! call, which showed in profiles on the hot path. hyper's pooled client
//! does TLS and HTTP/2 for `https` endpoints and HTTP/1.1 for plain ones.
//! An upstream
//! that the environment's proxy settings (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`) send through a proxy is called through reqwest,
//! which speaks to proxies. Neither follows redirects: an API endpoint that
//! redirects is misconfigured, and following it would resend the key.

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
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};

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

/// The HTTP clients of one thread: hyper's, for the streaming API calls, and
/// reqwest, for the REST calls of the other kinds and for upstreams behind a
/// proxy. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    rest: reqwest::Client,
}

impl HttpClient {
    /// Clients whose connection attempts give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Result<Self, String> {
        let rest = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
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
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(HttpClient { inner, rest })
    }

    /// The reqwest client, for REST calls.
    pub fn rest(&self) -> &reqwest::Client {
        &self.rest
    }
}

/// How long an idle upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One streaming API endpoint of a session: its URI parsed once, the pool's
/// extra headers, and whether the environment's proxy settings apply.
#[derive(Debug)]
pub struct ApiEndpoint {
    http: HttpClient,
    uri: http::Uri,
    proxied: bool,
    headers: HeaderMap,
}

impl ApiEndpoint {
    /// `path` under a pool's `base_url`.
    pub fn new(
        http: HttpClient,
        base: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Self, String> {
        let uri = api_uri(base, path)?;
        let proxied = hyper_util::client::proxy::matcher::Matcher::from_env()
            .intercept(&uri)
            .is_some();
        Ok(ApiEndpoint {
            http,
            uri,
            proxied,
            headers,
        })
    }

    /// POSTs a JSON `body` asking for an event stream, with the account's
    /// `credential` header. A transport failure or a non-2xx answer becomes
    /// the classified error every HTTP kind shares.
    pub async fn post(
        &self,
        credential: (HeaderName, HeaderValue),
        body: Vec<u8>,
    ) -> Result<Response, UpstreamError> {
        let mut req = http::Request::post(self.uri.clone())
            .body(Bytes::from(body))
            .map_err(|e| UpstreamError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let h = req.headers_mut();
        h.reserve(self.headers.len() + 3);
        for (k, v) in &self.headers {
            h.insert(k, v.clone());
        }
        h.insert(credential.0, credential.1);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let resp = if self.proxied {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::from))
                .map_err(|e| super::transport_error(&e))?;
            let resp = self
                .http
                .rest
                .execute(req)
                .await
                .map_err(|e| super::transport_error(&e))?;
            http::Response::from(resp).map(Body::Proxied)
        } else {
            self.http
                .inner
                .request(req.map(Full::new))
                .await
                .map_err(|e| transport_error(&e))?
                .map(Body::Direct)
        };
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(super::status_error(resp).await)
        }
    }
}

/// The URI of `path` under a pool's `base_url`.
pub fn api_uri(base: &str, path: &str) -> Result<http::Uri, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|e| format!("base_url: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("base_url: `{base}` is not an http(s) URL")),
    }
}

/// A credential as a header value kept out of debug output and HTTP/2
/// header compression tables.
pub fn secret_header(value: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        UpstreamError::new(ErrorKind::Auth, "the api_key is not a valid header value")
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Classifies a transport error of either hyper client: a connect or read
/// timeout, or a failed connection. The message carries the causes, which
/// hyper keeps apart.
fn transport_error(e: &(dyn std::error::Error + 'static)) -> UpstreamError {
    let mut message = String::from("upstream connection failed");
    let mut timed_out = false;
    let mut source = Some(e);
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

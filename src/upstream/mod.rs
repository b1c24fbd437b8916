//! The way to Contabo: a pool of keep-alive HTTP/1.1 connections per worker runtime, the token
//! manager, and the forwarding of one call (with the single retry after an upstream 401).
//!
//! A request goes out in origin form (the caller's already-parsed path and query, behind the
//! configured base path) with the Host of `upstream.api_url`: no URL is parsed per call (a general
//! client such as reqwest parses every URL it is given, host and IDNA included).

pub mod headers;
mod pool;
pub mod token;

use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use pool::{ConnectionPool, PoolError};

use crate::config::{ContaboUrls, Credentials, UpstreamConfig};
use crate::error::GatewayError;
use token::TokenManager;
use url::Url;

/// A call to send upstream. Its headers are made for every attempt from the caller's
/// ([`headers::for_upstream`]), tagged with the request id and the gateway's token.
pub struct OutgoingCall<'a> {
    pub method: &'a Method,
    pub path_and_query: PathAndQuery,
    pub caller_headers: &'a HeaderMap,
    pub request_id: HeaderValue,
    /// The gateway reads the answer (to redact or cache it): ask for it whole and uncompressed,
    /// without the caller's Accept-Encoding, Range or conditional headers.
    pub read_whole: bool,
    pub body: Bytes,
}

/// Upstream's answer: status and headers read, the body read whole or still to come.
pub type UpstreamResponse = http::Response<UpstreamBody>;

/// An answer whose length is declared and at most this size is read whole within the same deadline
/// as its head, like a buffering proxy does: one timer per call instead of two, and the caller's
/// answer goes out with its body in one piece. Longer or chunked answers are streamed.
const READ_WHOLE_UP_TO: u64 = 64 * 1024;

/// The body of upstream's answer.
pub enum UpstreamBody {
    /// Read whole already (declared length up to `READ_WHOLE_UP_TO`).
    Whole(Bytes),
    /// Still arriving.
    Streaming(Incoming),
}

std::thread_local! {
    /// Which worker runtime this thread serves (0 outside the multi-worker server).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving worker `index`, so it uses that worker's connection pool.
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Upstream {
    /// One connection pool per worker runtime: a connection is driven by the runtime that opened
    /// it, so each worker keeps to its own and never wakes another.
    pools: Vec<ConnectionPool>,
    base: ApiBase,
    /// How long upstream may take to answer (status and headers), to deliver a body read whole,
    /// and between two pieces of a streamed body.
    timeout: Duration,
    pub tokens: TokenManager,
}

/// Why the upstream client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream.api_url {url:?} is not usable: {why}")]
    ApiUrl { url: String, why: String },
    #[error("cannot set up TLS for upstream: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot build the token endpoint's HTTP client: {0}")]
    TokenClient(#[source] reqwest::Error),
}

/// `upstream.api_url` taken apart once: every call's URI is built from these pieces.
struct ApiBase {
    scheme: Scheme,
    authority: Authority,
    /// The Host header of every call: the authority (port included when it is not the scheme's).
    host: HeaderValue,
    /// A path the API lives under (`https://host/prefix`), without its trailing slash; usually "".
    prefix: String,
}

impl ApiBase {
    /// The pieces of the API's URL (validation made sure it is http(s), has a host and carries
    /// no credentials).
    fn new(api_url: &Url) -> Result<Self, UpstreamError> {
        let invalid = |why: String| UpstreamError::ApiUrl {
            url: api_url.to_string(),
            why,
        };
        let scheme = Scheme::try_from(api_url.scheme()).map_err(|e| invalid(e.to_string()))?;
        let authority =
            Authority::try_from(api_url.authority()).map_err(|e| invalid(e.to_string()))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            scheme,
            authority,
            host,
            prefix: api_url.path().trim_end_matches('/').to_string(),
        })
    }

    /// Where connections go: scheme and authority only.
    fn origin(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority were parsed from a URI")
    }

    /// The request target of a call, in origin form: the base path, then the caller's path and
    /// query.
    fn target(&self, path_and_query: &PathAndQuery) -> Result<Uri, GatewayError> {
        let path_and_query = if self.prefix.is_empty() {
            path_and_query.clone()
        } else {
            PathAndQuery::try_from(format!("{}{path_and_query}", self.prefix))
                .map_err(|e| GatewayError::Internal(format!("upstream path: {e}")))?
        };
        Ok(Uri::from(path_and_query))
    }

    /// Where upstream is, for error messages: scheme, host and port, never credentials or query.
    fn describe(&self) -> String {
        let port = self
            .authority
            .port_u16()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!("{}://{}{port}", self.scheme, self.authority.host())
    }
}

impl Upstream {
    /// The client of Contabo at `contabo`, with `settings`' timeouts and one connection pool per
    /// worker runtime.
    pub fn new(
        settings: &UpstreamConfig,
        contabo: &ContaboUrls,
        credentials: Credentials,
        workers: usize,
    ) -> Result<Self, UpstreamError> {
        let timeout = settings.timeout;
        let connect_timeout = settings.connect_timeout;
        let base = ApiBase::new(contabo.api())?;
        let connector = https_connector(connect_timeout)?;
        let pools = (0..workers.max(1))
            .map(|_| ConnectionPool::new(connector.clone(), base.origin(), IDLE_TIMEOUT))
            .collect();
        let token_client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(UpstreamError::TokenClient)?;
        Ok(Self {
            tokens: TokenManager::new(token_client, contabo.auth().clone(), credentials),
            pools,
            base,
            timeout,
        })
    }

    /// This worker's connection pool.
    fn pool(&self) -> &ConnectionPool {
        &self.pools[WORKER.with(|w| w.get()) % self.pools.len()]
    }

    /// Sends the call with the gateway's bearer token. On an upstream 401 the token is dropped, a new
    /// one obtained, and the call retried once with the same request id.
    pub async fn send(&self, call: &OutgoingCall<'_>) -> Result<UpstreamResponse, GatewayError> {
        use tracing::Instrument;
        let span = crate::telemetry::span(|| {
            // The path only: a query may carry what must not leave the gateway.
            let path = call.path_and_query.path();
            tracing::info_span!("contabo exchange", method = %call.method, path)
        });
        self.send_with_retry(call).instrument(span).await
    }

    async fn send_with_retry(
        &self,
        call: &OutgoingCall<'_>,
    ) -> Result<UpstreamResponse, GatewayError> {
        let bearer = self.tokens.bearer().await?;
        let response = self.send_once(call, &bearer).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        tracing::info!("upstream answered 401; renewing the token and retrying once");
        self.tokens.reject(&bearer);
        drop(response);
        let bearer = self.tokens.bearer().await?;
        self.send_once(call, &bearer).await
    }

    async fn send_once(
        &self,
        call: &OutgoingCall<'_>,
        bearer: &HeaderValue,
    ) -> Result<UpstreamResponse, GatewayError> {
        let mut request = http::Request::new(Full::new(call.body.clone()));
        *request.method_mut() = call.method.clone();
        *request.uri_mut() = self.base.target(&call.path_and_query)?;
        let headers = request.headers_mut();
        *headers = headers::for_upstream(call.caller_headers);
        headers.insert(crate::request_id::HEADER, call.request_id.clone());
        if call.read_whole {
            headers::ask_whole(headers);
        }
        headers.insert(http::header::HOST, self.base.host.clone());
        headers.insert(http::header::AUTHORIZATION, bearer.clone());
        crate::telemetry::pass_on(headers);
        let exchange = async {
            let response = match self.pool().send(request).await {
                Ok(response) => response,
                Err(error) => return Err(self.transport_error(&error)),
            };
            let (head, body) = response.into_parts();
            let small = body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= READ_WHOLE_UP_TO);
            let body = if small {
                match body.collect().await {
                    Ok(collected) => UpstreamBody::Whole(collected.to_bytes()),
                    Err(error) => return Err(self.broken_off(&error)),
                }
            } else {
                UpstreamBody::Streaming(body)
            };
            Ok(http::Response::from_parts(head, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(GatewayError::UpstreamTimeout(self.timeout.as_secs())),
        }
    }

    /// Reads an answer's body whole, within the upstream timeout.
    pub async fn read_body(&self, body: UpstreamBody) -> Result<Bytes, GatewayError> {
        let body = match body {
            UpstreamBody::Whole(bytes) => return Ok(bytes),
            UpstreamBody::Streaming(body) => body,
        };
        match tokio::time::timeout(self.timeout, body.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) => Err(self.broken_off(&error)),
            Err(_) => Err(GatewayError::UpstreamTimeout(self.timeout.as_secs())),
        }
    }

    /// An answer's body for the caller: as read, or passed on as it arrives and cut off when
    /// upstream stalls longer than the upstream timeout between two pieces.
    pub fn stream_body(&self, body: UpstreamBody) -> axum::body::Body {
        match body {
            UpstreamBody::Whole(bytes) => axum::body::Body::from(bytes),
            UpstreamBody::Streaming(body) => {
                axum::body::Body::new(tower_http::timeout::TimeoutBody::new(self.timeout, body))
            }
        }
    }

    /// An answer whose body failed before its end (502).
    fn broken_off(&self, error: &hyper::Error) -> GatewayError {
        GatewayError::UpstreamUnreachable(format!(
            "the answer broke off ({}): {error}",
            self.base.describe()
        ))
    }

    /// Maps a failed exchange with upstream to 502 (unreachable), in words that carry neither the
    /// query nor anything the request carried.
    fn transport_error(&self, error: &PoolError) -> GatewayError {
        let what = match error {
            PoolError::Connect => "connection failed",
            PoolError::Request(cause) => {
                tracing::debug!(%cause, "upstream request failed");
                "request failed"
            }
        };
        GatewayError::UpstreamUnreachable(format!("{what} ({})", self.base.describe()))
    }
}

/// Opens connections for http:// and https:// (rustls with the platform's verifier, HTTP/1.1),
/// Nagle off.
fn https_connector(
    connect_timeout: Duration,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, UpstreamError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(UpstreamError::Tls)?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_gives_host_origin_and_origin_form_targets() {
        let url = Url::parse("https://api.example.com:8443/prefix/").unwrap();
        let base = ApiBase::new(&url).unwrap();
        assert_eq!(base.host, "api.example.com:8443");
        assert_eq!(base.origin().to_string(), "https://api.example.com:8443/");
        let target = base
            .target(&PathAndQuery::from_static("/v1/users?page=2"))
            .unwrap();
        assert_eq!(target.to_string(), "/prefix/v1/users?page=2");
        let plain = ApiBase::new(&Url::parse("https://api.example.com").unwrap()).unwrap();
        assert_eq!(plain.host, "api.example.com");
        assert_eq!(plain.prefix, "");
    }
}

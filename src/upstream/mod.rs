//! The way to Contabo: one pooled keep-alive HTTP client, the token manager, and the forwarding
//! of one call (with the single retry after an upstream 401).

pub mod headers;
pub mod token;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::{Credentials, UpstreamConfig};
use crate::error::GatewayError;
use token::{TokenManager, describe_transport_error};

/// A call ready to go upstream: headers already cleaned and tagged with the request id.
pub struct OutgoingCall<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: HeaderMap,
    pub body: Bytes,
}

std::thread_local! {
    /// Which worker runtime this thread serves (0 outside the multi-worker server).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving worker `index`, so it uses that worker's connection pool.
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

pub struct Upstream {
    /// One pooled keep-alive client per worker runtime: a connection is driven by the runtime
    /// that opened it, so each worker keeps to its own and never wakes another.
    clients: Vec<reqwest::Client>,
    api_base: String,
    timeout: Duration,
    pub tokens: TokenManager,
}

impl Upstream {
    pub fn new(
        config: &UpstreamConfig,
        credentials: Credentials,
        workers: usize,
    ) -> Result<Self, String> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let build = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))
        };
        let clients = (0..workers.max(1))
            .map(|_| build())
            .collect::<Result<_, _>>()?;
        let auth_url = reqwest::Url::parse(&config.auth_url)
            .map_err(|e| format!("upstream.auth_url is not a URL: {e}"))?;
        Ok(Self {
            tokens: TokenManager::new(build()?, auth_url, credentials),
            clients,
            api_base: config.api_url.trim_end_matches('/').to_string(),
            timeout,
        })
    }

    /// This worker's client.
    fn http(&self) -> &reqwest::Client {
        &self.clients[WORKER.with(|w| w.get()) % self.clients.len()]
    }

    /// Sends the call with the gateway's bearer token. On an upstream 401 the token is dropped, a new
    /// one obtained, and the call retried once with the same request id.
    pub async fn send(&self, call: &OutgoingCall<'_>) -> Result<reqwest::Response, GatewayError> {
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
    ) -> Result<reqwest::Response, GatewayError> {
        let mut headers = call.headers.clone();
        headers.insert(http::header::AUTHORIZATION, bearer.clone());
        let url = format!("{}{}", self.api_base, call.path_and_query);
        self.http()
            .request(call.method.clone(), url)
            .headers(headers)
            .body(call.body.clone())
            .send()
            .await
            .map_err(|e| self.transport_error(&e))
    }

    /// Maps a failed exchange with upstream to 504 (too slow) or 502 (unreachable).
    pub fn transport_error(&self, e: &reqwest::Error) -> GatewayError {
        if e.is_timeout() {
            GatewayError::UpstreamTimeout(self.timeout.as_secs())
        } else {
            GatewayError::UpstreamUnreachable(describe_transport_error(e))
        }
    }
}

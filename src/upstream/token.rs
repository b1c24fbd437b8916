//! The token manager: one Contabo OAuth token for every team, kept fresh centrally.
//!
//! - Password grant at first need; refresh_token grant once the access token has lived 80% of its
//!   life; password grant again, within the same call, when the refresh token expired or is refused.
//! - Single-flight: one grant in flight however many calls wait; a call that finds the token due but
//!   still valid does not wait for the renewal another call is already making.
//! - A failing token endpoint or a refused credential answers 502 and backs off exponentially, so a
//!   broken credential does not hammer the auth server: at most one grant attempt per backoff step,
//!   whichever call asks (also the renewal of a token that is still valid, which keeps serving
//!   meanwhile). Steps are short while the endpoint is merely unavailable (at most
//!   `MAX_UNAVAILABLE_BACKOFF`, and a quarter of a valid token's remaining life), so calls work
//!   again within seconds of its recovery; a refused credential backs off up to a minute.
//! - Tokens and secrets live in `secrecy` types (the bearer header is marked sensitive) and are never
//!   logged.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::config::Credentials;
use crate::error::GatewayError;

/// Share of the access token's life after which it is renewed.
const REFRESH_AT_FRACTION: f64 = 0.8;
/// Share of the life kept as a margin against clock skew and time in flight.
const EXPIRY_MARGIN_FRACTION: f64 = 0.1;
/// Longest wait between grant attempts after the credential was refused (a 4xx: retrying soon
/// would not help, and an auth server may lock an account that fails too often).
const MAX_REFUSED_BACKOFF: Duration = Duration::from_secs(60);
/// Longest wait between grant attempts while the token endpoint fails or cannot be reached: it
/// bounds how long calls keep failing after it recovers.
const MAX_UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(4);
/// Shortest step between renewal attempts of a token that is still valid.
const MIN_RENEWAL_STEP: Duration = Duration::from_millis(500);

struct Access {
    header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

struct Refresh {
    token: SecretString,
    expires_at: Instant,
}

struct Failure {
    consecutive: u32,
    until: Instant,
    reason: String,
}

#[derive(Default)]
struct State {
    access: Option<Access>,
    refresh: Option<Refresh>,
    failure: Option<Failure>,
}

/// Grant counters, for tests, status and metrics.
#[derive(Debug, Default)]
pub struct TokenStats {
    pub password_grants: AtomicU64,
    pub refresh_grants: AtomicU64,
    pub failures: AtomicU64,
}

/// What the token manager can say about itself without revealing the token.
#[derive(Debug, serde::Serialize)]
pub struct TokenStatus {
    pub has_token: bool,
    pub expires_in_secs: Option<f64>,
    pub last_failure: Option<String>,
    pub password_grants: u64,
    pub refresh_grants: u64,
    pub failures: u64,
}

enum Grant {
    Password,
    Refresh(SecretString),
}

enum GrantError {
    /// The auth server answered and refused (4xx): the credential or refresh token is bad.
    Refused(String),
    /// The auth server could not be reached or failed (5xx, timeout, unreadable answer).
    Unavailable(String),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    expires_in: f64,
    #[serde(default)]
    refresh_token: Option<SecretString>,
    #[serde(default)]
    refresh_expires_in: Option<f64>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

pub struct TokenManager {
    http: reqwest::Client,
    auth_url: reqwest::Url,
    client_id: String,
    username: String,
    client_secret: RwLock<SecretString>,
    password: SecretString,
    state: RwLock<State>,
    grant_lock: tokio::sync::Mutex<()>,
    /// The `sub` claim of the last access token: the user id of the company's credential.
    subject: RwLock<Option<String>>,
    pub stats: TokenStats,
}

impl TokenManager {
    pub fn new(http: reqwest::Client, auth_url: reqwest::Url, credentials: Credentials) -> Self {
        Self {
            http,
            auth_url,
            client_id: credentials.client_id,
            username: credentials.username,
            client_secret: RwLock::new(credentials.client_secret),
            password: credentials.password,
            state: RwLock::default(),
            grant_lock: tokio::sync::Mutex::new(()),
            subject: RwLock::default(),
            stats: TokenStats::default(),
        }
    }

    /// The user id of the company's Contabo credential, from the `sub` claim of the access token
    /// (Contabo's tokens are JWTs); None until a token with one was granted. It outlives the
    /// token: the credential's user does not change.
    pub fn subject(&self) -> Option<String> {
        self.subject.read().expect("token subject lock").clone()
    }

    /// The `Authorization` header value for upstream: a valid bearer token, granted if needed.
    pub async fn bearer(&self) -> Result<HeaderValue, GatewayError> {
        match self.current(Instant::now()) {
            Some((header, false)) => return Ok(header),
            Some((header, true)) => {
                // Due for renewal but still valid: one call renews, the others go on meanwhile.
                let Ok(_guard) = self.grant_lock.try_lock() else {
                    return Ok(header);
                };
                if let Some((fresh, false)) = self.current(Instant::now()) {
                    return Ok(fresh);
                }
                if self.refuse_during_backoff().is_err() {
                    // The last attempt failed and its step is not over: keep the valid token.
                    return Ok(header);
                }
                return Ok(Box::pin(self.renew()).await.unwrap_or(header));
            }
            None => {}
        }
        let _guard = self.grant_lock.lock().await;
        if let Some((header, _)) = self.current(Instant::now()) {
            return Ok(header);
        }
        self.refuse_during_backoff()?;
        Box::pin(self.renew()).await
    }

    /// Upstream refused `rejected` (401): forget it so the next `bearer()` obtains a new one.
    pub fn reject(&self, rejected: &HeaderValue) {
        let mut state = self.state.write().expect("token state lock");
        if state.access.as_ref().is_some_and(|a| a.header == *rejected) {
            state.access = None;
        }
    }

    /// Adopts a client secret rotated through the gateway, so later grants keep working.
    pub fn adopt_client_secret(&self, secret: SecretString) {
        *self.client_secret.write().expect("client secret lock") = secret;
    }

    pub fn status(&self) -> TokenStatus {
        let now = Instant::now();
        let state = self.state.read().expect("token state lock");
        let access = state.access.as_ref().filter(|a| now < a.expires_at);
        TokenStatus {
            has_token: access.is_some(),
            expires_in_secs: access.map(|a| (a.expires_at - now).as_secs_f64()),
            last_failure: state.failure.as_ref().map(|f| f.reason.clone()),
            password_grants: self.stats.password_grants.load(Ordering::Relaxed),
            refresh_grants: self.stats.refresh_grants.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
        }
    }

    /// The current token if still valid, and whether it is due for renewal.
    fn current(&self, now: Instant) -> Option<(HeaderValue, bool)> {
        let state = self.state.read().expect("token state lock");
        let access = state.access.as_ref().filter(|a| now < a.expires_at)?;
        Some((access.header.clone(), now >= access.refresh_at))
    }

    fn refuse_during_backoff(&self) -> Result<(), GatewayError> {
        let state = self.state.read().expect("token state lock");
        match &state.failure {
            Some(f) if Instant::now() < f.until => Err(GatewayError::CredentialUnusable {
                reason: format!("{} (next attempt in {} s)", f.reason, secs_until(f.until)),
                retry_after_secs: secs_until(f.until),
            }),
            _ => Ok(()),
        }
    }

    /// Obtains a new token: refresh grant while the refresh token lives, password grant otherwise
    /// or when the refresh is refused. Called with the grant lock held.
    async fn renew(&self) -> Result<HeaderValue, GatewayError> {
        let refresh = {
            let state = self.state.read().expect("token state lock");
            state
                .refresh
                .as_ref()
                .filter(|r| Instant::now() < r.expires_at)
                .map(|r| r.token.clone())
        };
        if let Some(refresh_token) = refresh {
            match self.grant(Grant::Refresh(refresh_token)).await {
                Ok(header) => return Ok(header),
                Err(GrantError::Refused(reason)) => {
                    tracing::info!(%reason, "refresh token refused; using the password grant");
                }
                Err(GrantError::Unavailable(reason)) => {
                    return Err(self.record_failure(reason, MAX_UNAVAILABLE_BACKOFF));
                }
            }
        }
        match self.grant(Grant::Password).await {
            Ok(header) => Ok(header),
            Err(GrantError::Refused(reason)) => {
                Err(self.record_failure(reason, MAX_REFUSED_BACKOFF))
            }
            Err(GrantError::Unavailable(reason)) => {
                Err(self.record_failure(reason, MAX_UNAVAILABLE_BACKOFF))
            }
        }
    }

    async fn grant(&self, grant: Grant) -> Result<HeaderValue, GrantError> {
        use tracing::Instrument;
        let kind = match grant {
            Grant::Password => "password",
            Grant::Refresh(_) => "refresh_token",
        };
        let span = crate::telemetry::span(|| tracing::info_span!("token grant", grant = kind));
        self.grant_once(grant).instrument(span).await
    }

    async fn grant_once(&self, grant: Grant) -> Result<HeaderValue, GrantError> {
        let client_secret = self.client_secret.read().expect("secret lock").clone();
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("client_secret", client_secret.expose_secret()),
        ];
        let kind = match &grant {
            Grant::Password => {
                form.extend([
                    ("grant_type", "password"),
                    ("username", &self.username),
                    ("password", self.password.expose_secret()),
                ]);
                "password"
            }
            Grant::Refresh(token) => {
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.expose_secret()),
                ]);
                "refresh_token"
            }
        };
        let started = Instant::now();
        let response = self
            .http
            .post(self.auth_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| GrantError::Unavailable(describe_transport_error(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| GrantError::Unavailable(describe_transport_error(&e)))?;
        if status.is_client_error() {
            let detail = serde_json::from_slice::<TokenErrorResponse>(&body)
                .ok()
                .map(|e| {
                    [e.error, e.error_description]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "no reason given".into());
            return Err(GrantError::Refused(format!(
                "the token endpoint refused the {kind} grant with {status} ({})",
                truncate(&detail, 200)
            )));
        }
        if !status.is_success() {
            return Err(GrantError::Unavailable(format!(
                "the token endpoint answered {status} to the {kind} grant"
            )));
        }
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            GrantError::Unavailable(format!(
                "the token endpoint's answer to the {kind} grant is not a token response"
            ))
        })?;
        let header = self
            .install(token, started)
            .map_err(GrantError::Unavailable)?;
        let counter = match grant {
            Grant::Password => &self.stats.password_grants,
            Grant::Refresh(_) => &self.stats.refresh_grants,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(grant = kind, "obtained a Contabo access token");
        Ok(header)
    }

    /// Stores a granted token. Lifetimes count from when the grant was sent, to stay on the safe side.
    fn install(&self, token: TokenResponse, sent_at: Instant) -> Result<HeaderValue, String> {
        let life = Duration::from_secs_f64(token.expires_in.max(0.0));
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", token.access_token.expose_secret()))
                .map_err(|_| {
                    "the token endpoint returned an access token that is not a valid header value"
                        .to_string()
                })?;
        header.set_sensitive(true);
        if let Some(subject) = subject_of(token.access_token.expose_secret()) {
            *self.subject.write().expect("token subject lock") = Some(subject);
        }
        let access = Access {
            header: header.clone(),
            refresh_at: sent_at + life.mul_f64(REFRESH_AT_FRACTION),
            expires_at: sent_at + life.mul_f64(1.0 - EXPIRY_MARGIN_FRACTION),
        };
        let mut state = self.state.write().expect("token state lock");
        state.access = Some(access);
        state.failure = None;
        state.refresh = token.refresh_token.map(|refresh| Refresh {
            token: refresh,
            expires_at: sent_at
                + Duration::from_secs_f64(token.refresh_expires_in.unwrap_or(0.0).max(0.0))
                    .mul_f64(1.0 - EXPIRY_MARGIN_FRACTION),
        });
        Ok(header)
    }

    /// Notes a failed attempt: the next one is due after a step that doubles with every failure
    /// in a row (1 s, 2 s, 4 s ...) up to `cap`, and, while a token is still valid, within a
    /// quarter of its remaining life (so renewal gets several more tries before it expires).
    fn record_failure(&self, reason: String, cap: Duration) -> GatewayError {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.write().expect("token state lock");
        let now = Instant::now();
        let consecutive = state.failure.as_ref().map_or(0, |f| f.consecutive) + 1;
        let mut backoff = Backoff::up_to(cap).after(consecutive);
        if let Some(access) = state.access.as_ref().filter(|a| now < a.expires_at) {
            backoff = backoff.min(((access.expires_at - now) / 4).max(MIN_RENEWAL_STEP));
        }
        tracing::warn!(%reason, consecutive, backoff_secs = backoff.as_secs_f64(), "Contabo token grant failed");
        let until = now + backoff;
        state.failure = Some(Failure {
            consecutive,
            until,
            reason: reason.clone(),
        });
        GatewayError::CredentialUnusable {
            reason,
            retry_after_secs: secs_until(until),
        }
    }
}

/// The `sub` claim of a JWT, read without verifying it: the gateway only passes it on, and the
/// token came straight from the auth server.
fn subject_of(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Subject {
        sub: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Subject>(token)
        .ok()?
        .sub
        .filter(|sub| !sub.is_empty())
}

fn secs_until(t: Instant) -> u64 {
    t.saturating_duration_since(Instant::now())
        .as_secs_f64()
        .ceil() as u64
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A transport error in words, without the URL's query or anything the request carried.
pub fn describe_transport_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match e.url() {
        Some(url) => format!(
            "{what} ({}://{}{})",
            url.scheme(),
            url.host_str().unwrap_or("?"),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        None => what.to_string(),
    }
}

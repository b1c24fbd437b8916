//! The sandbox's memory: its credential, issued tokens, the Users API data, compute instances,
//! what it was sent (for tests) and the faults a test can switch on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;

pub const TENANT_ID: &str = "DE";
pub const CUSTOMER_ID: &str = "54321";
/// How many received calls are kept for inspection.
const RECORDED_CALLS: usize = 2000;

/// Lifetimes of the tokens the sandbox issues.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub access_token_secs: f64,
    pub refresh_token_secs: f64,
}

impl SandboxOptions {
    /// Tokens that live `access_secs` (access) and `refresh_secs` (refresh).
    pub fn lifetimes(access_secs: f64, refresh_secs: f64) -> Self {
        Self {
            access_token_secs: access_secs,
            refresh_token_secs: refresh_secs,
        }
    }
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            access_token_secs: 300.0,
            refresh_token_secs: 1800.0,
        }
    }
}

/// The sandbox's Keycloak credential.
#[derive(Debug, Clone)]
pub struct SandboxCredential {
    pub client_id: String,
    pub client_secret: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub tenant_id: String,
    pub customer_id: String,
    pub user_id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub email_verified: bool,
    pub enabled: bool,
    pub totp: bool,
    pub locale: String,
    pub roles: Vec<Value>,
    pub owner: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAudit {
    pub id: i64,
    pub action: &'static str,
    pub timestamp: String,
    pub tenant_id: String,
    pub customer_id: String,
    pub changed_by: String,
    pub username: String,
    pub request_id: String,
    pub trace_id: String,
    pub user_id: String,
    pub changes: Value,
}

/// The stateful API data.
#[derive(Debug, Default)]
pub struct Data {
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<i64, Value>,
    pub instances: BTreeMap<i64, Value>,
    pub user_audits: Vec<UserAudit>,
    /// (userId, credentialId) -> secretKey
    pub s3_secrets: BTreeMap<(String, i64), String>,
    /// DNS zone name -> its records.
    pub dns_zones: BTreeMap<String, Vec<Value>>,
    pub next_id: i64,
}

impl Data {
    pub fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }
}

/// A call as the sandbox received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub password_grants: AtomicU64,
    pub refresh_grants: AtomicU64,
    pub refused_grants: AtomicU64,
    /// Grant attempts answered 503 while `faults.auth_down` was on.
    pub unavailable_grants: AtomicU64,
    /// /v1 calls that passed the token and request-id checks.
    pub api_calls: AtomicU64,
    /// /v1 calls answered 401.
    pub unauthorized: AtomicU64,
}

/// Faults a test can switch on.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer this many of the next /v1 calls 401, whatever token they carry.
    pub reject_next_calls: AtomicU32,
    /// Answer this many of the next /v1 calls 500.
    pub fail_next_calls: AtomicU32,
    /// Delay every /v1 call by this many milliseconds.
    pub delay_ms: AtomicU64,
    /// Answer the token endpoint 503.
    pub auth_down: AtomicBool,
    /// Answer this many of the next /v1 calls 429, as Contabo's own rate limit does.
    pub throttle_next_calls: AtomicU32,
    /// The retry-after (seconds) of those 429s; 0 sends none.
    pub throttle_retry_after_secs: AtomicU64,
}

pub struct SandboxState {
    pub options: SandboxOptions,
    pub credential: Mutex<SandboxCredential>,
    /// The user id of the account owner, whose credential the sandbox's tokens stand for.
    owner: String,
    pub access_tokens: Mutex<HashMap<String, Instant>>,
    pub refresh_tokens: Mutex<HashMap<String, Instant>>,
    /// Every access and refresh token ever issued, for tests that look for leaks.
    pub issued: Mutex<Vec<String>>,
    pub data: Mutex<Data>,
    pub recorded: Mutex<Vec<Recorded>>,
    pub counters: Counters,
    pub faults: Faults,
}

impl SandboxState {
    pub fn new(options: SandboxOptions) -> Self {
        let credential = SandboxCredential {
            client_id: "sandbox-client".into(),
            client_secret: random_token(),
            username: "sandbox@example.com".into(),
            password: random_token(),
        };
        let mut data = Data::default();
        let owner = User {
            tenant_id: TENANT_ID.into(),
            customer_id: CUSTOMER_ID.into(),
            user_id: uuid::Uuid::new_v4().to_string(),
            first_name: "Sandbox".into(),
            last_name: "Owner".into(),
            email: credential.username.clone(),
            email_verified: true,
            enabled: true,
            totp: false,
            locale: "en".into(),
            roles: vec![],
            owner: true,
        };
        let owner_id = owner.user_id.clone();
        data.users.insert(owner.user_id.clone(), owner);
        Self {
            options,
            owner: owner_id,
            credential: Mutex::new(credential),
            access_tokens: Mutex::default(),
            refresh_tokens: Mutex::default(),
            issued: Mutex::default(),
            data: Mutex::new(data),
            recorded: Mutex::default(),
            counters: Counters::default(),
            faults: Faults::default(),
        }
    }

    /// The id of the account owner the sandbox starts with (the first user).
    pub fn owner_id(&self) -> String {
        self.owner.clone()
    }

    pub fn credential(&self) -> SandboxCredential {
        self.credential.lock().unwrap().clone()
    }

    /// Issues an access and a refresh token with the configured lifetimes.
    pub fn issue_tokens(&self) -> (String, String) {
        let now = Instant::now();
        let access = self.access_jwt();
        let refresh = random_token();
        self.access_tokens.lock().unwrap().insert(
            access.clone(),
            now + Duration::from_secs_f64(self.options.access_token_secs),
        );
        self.refresh_tokens.lock().unwrap().insert(
            refresh.clone(),
            now + Duration::from_secs_f64(self.options.refresh_token_secs),
        );
        self.issued
            .lock()
            .unwrap()
            .extend([access.clone(), refresh.clone()]);
        (access, refresh)
    }

    /// An access token shaped like Keycloak's: a JWT naming the account's user (`sub`, the owner)
    /// and `preferred_username`, which Contabo's tools read. Signed with a per-sandbox key nobody
    /// verifies but the sandbox itself (by looking the token up).
    fn access_jwt(&self) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let credential = self.credential();
        let claims = serde_json::json!({
            "exp": now + self.options.access_token_secs.ceil() as u64,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iss": "sandbox/auth/realms/contabo",
            "typ": "Bearer",
            "azp": credential.client_id,
            "sub": self.owner_id(),
            "preferred_username": credential.username,
            "scope": "profile email",
        });
        let key = jsonwebtoken::EncodingKey::from_secret(random_token().as_bytes())
            .expect("a random key signs");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
            .expect("claims serialise")
    }

    pub fn access_token_valid(&self, token: &str) -> bool {
        self.access_tokens
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|expiry| Instant::now() < *expiry)
    }

    /// Consumes a refresh token (Keycloak rotates them); true when it was valid.
    pub fn take_refresh_token(&self, token: &str) -> bool {
        self.refresh_tokens
            .lock()
            .unwrap()
            .remove(token)
            .is_some_and(|expiry| Instant::now() < expiry)
    }

    pub fn record(&self, call: Recorded) {
        let mut recorded = self.recorded.lock().unwrap();
        if recorded.len() >= RECORDED_CALLS {
            recorded.remove(0);
        }
        recorded.push(call);
    }

    /// Every call received so far (oldest first).
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn last_recorded(&self) -> Option<Recorded> {
        self.recorded.lock().unwrap().last().cloned()
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

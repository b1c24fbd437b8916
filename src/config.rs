//! Typed gateway configuration: a TOML file, then environment overrides, then validation.
//!
//! Every key has a default (see `config/default.toml`, which documents them all); unknown keys are
//! refused with the key's name so a typo never silently falls back to a default. Validation collects
//! every problem at once so `check-config` can explain them together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::role::Role;

/// A `*_secs` key: whole seconds, read once into a Duration.
fn seconds<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Duration, D::Error> {
    u64::deserialize(value).map(Duration::from_secs)
}

/// A `*_ms` key: whole milliseconds, read once into a Duration.
fn milliseconds<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Duration, D::Error> {
    u64::deserialize(value).map(Duration::from_millis)
}

/// Why a configuration could not be read, or what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {error}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// Not TOML, or keys the gateway does not know (one problem per line).
    #[error("{0}")]
    Toml(String),
    /// A problem of the file at `path`: on the same line, or several indented below it.
    #[error("{}", in_file(path, problem))]
    InFile {
        path: PathBuf,
        problem: Box<ConfigError>,
    },
    #[error(
        "clients_file = {setting:?}: cannot read the teams file {}: {error}{env_note}",
        path.display()
    )]
    TeamsFileUnreadable {
        setting: String,
        path: PathBuf,
        #[source]
        error: std::io::Error,
        /// Where the setting came from when an environment variable set it.
        env_note: String,
    },
    #[error(
        "the Contabo credential is incomplete: set {} in the environment (or run `serve \
         --sandbox`, which needs no credential)",
        missing.join(", ")
    )]
    CredentialIncomplete { missing: Vec<&'static str> },
    #[error(
        "auth.token_signing_key_file = {path:?} cannot be read ({error}); point it at the key file \
         every replica shares"
    )]
    TokenKeyUnreadable {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("audit.database_url = {0:?} is neither sqlite://PATH nor postgres://USER@HOST/DB")]
    UnknownDatabase(String),
    /// Validation's findings, every one (so one run of `check-config` names them all).
    #[error(
        "{origin} has {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    )]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

/// A file's problem with the file named: on one line, or indented below it when it has several.
fn in_file(path: &Path, problem: &ConfigError) -> String {
    let problem = problem.to_string();
    match problem.contains('\n') {
        true => format!("{}:\n  {}", path.display(), problem.replace('\n', "\n  ")),
        false => format!("{}: {problem}", path.display()),
    }
}

/// The file read when neither `--config` nor `GATEWAY_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    pub cache: CacheConfig,
    pub audit: AuditConfig,
    pub rate_limit: RateLimitConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    /// A TOML file of further `[[clients]]` blocks (relative to this file's directory), so the
    /// teams can be kept apart from the settings: a Kubernetes Secret, a file mounted from the
    /// host. Read again on SIGHUP with the rest.
    pub clients_file: String,
    pub clients: Vec<ClientConfig>,
    /// Settings an environment variable set: (setting, variable), so a problem names the variable.
    #[serde(skip)]
    pub from_env: Vec<(&'static str, &'static str)>,
}

/// The socket address of a `host:port` or `ip:port` (a host name's first address); `setting`
/// names it in the problem.
fn resolve_listen(setting: &str, listen: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let explain = |why: String| {
        format!(
            "{setting} = {listen:?} is not an address with a port ({why}); write it as \
             \"127.0.0.1:8080\", \"[::1]:8080\" or \"localhost:8080\""
        )
    };
    listen
        .to_socket_addrs()
        .map_err(|e| explain(e.to_string()))?
        .next()
        .ok_or_else(|| explain("the host name has no address".into()))
}

/// `setting`'s URL parsed: an http(s) URL with a host, no credentials in it (they would go to
/// Contabo as part of the Host header; the problem shows the URL with them masked).
fn contabo_url(setting: &str, text: &str) -> Result<Url, String> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            if url.username().is_empty() && url.password().is_none() {
                return Ok(url);
            }
            let mut masked = url;
            let _ = masked.set_username("***");
            let _ = masked.set_password(None);
            Err(format!(
                "{setting} = {:?} carries credentials (user@host), which would be sent upstream; \
                 give the host alone, the gateway sends its own token",
                masked.as_str()
            ))
        }
        _ => Err(format!(
            "{setting} = {text:?} is not an http(s) URL, e.g. \"https://api.contabo.com\""
        )),
    }
}

/// Where the gateway serves and where Contabo is, as [`Config::validated`] resolved them.
#[derive(Debug, Clone)]
struct Addresses {
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    contabo: ContaboUrls,
}

/// Contabo's API and token endpoint (`upstream.api_url`, `upstream.auth_url`), parsed by
/// validation: http(s), with a host, without credentials.
#[derive(Debug, Clone)]
pub struct ContaboUrls {
    api: Url,
    auth: Url,
}

impl ContaboUrls {
    /// Contabo's API, under which every /v1 call's path is appended.
    pub fn api(&self) -> &Url {
        &self.api
    }

    /// The OAuth token endpoint the gateway gets its bearer token from.
    pub fn auth(&self) -> &Url {
        &self.auth
    }
}

/// A configuration in which [`Config::validated`] found no problem, with the addresses its text
/// names resolved there, once: the server binds and the upstream client connects with these, so
/// nothing after start-up parses an address or trusts one unchecked. Reads as the [`Config`] it
/// holds.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    settings: Config,
    addresses: Addresses,
}

impl ValidConfig {
    /// `server.listen` (a host name resolved to its first address: `localhost:8080`).
    pub fn listen(&self) -> SocketAddr {
        self.addresses.listen
    }

    /// `server.admin_listen`, when it is set.
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.addresses.admin_listen
    }

    pub fn contabo(&self) -> &ContaboUrls {
        &self.addresses.contabo
    }

    /// The settings, to change and validate again (`serve --sandbox` points them at the sandbox).
    pub fn into_settings(self) -> Config {
        self.settings
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.settings
    }
}

/// Parses a TOML text into `T`. Every key the gateway does not know is reported, each on a line
/// of its own with where it stands, so one run of `check-config` names all the typos.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let clean = |e: toml::de::Error| ConfigError::Toml(e.to_string().trim_end().to_string());
    let deserializer = toml::Deserializer::parse(text).map_err(clean)?;
    let mut unknown = Vec::new();
    let config: T = serde_ignored::deserialize(deserializer, |path| {
        unknown.push(path.to_string());
    })
    .map_err(clean)?;
    if unknown.is_empty() {
        return Ok(config);
    }
    let mut problems: Vec<(usize, String)> = unknown
        .iter()
        .map(|path| {
            let key = path.rsplit('.').next().unwrap_or(path);
            let found = text.lines().position(|l| {
                let l = l.trim_start();
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
                    || l.trim_start_matches('[').trim_end_matches(']') == path
            });
            let at = found.map_or(String::new(), |n| format!(" (line {})", n + 1));
            (
                found.unwrap_or(usize::MAX),
                format!("unknown key `{path}`{at}: no such setting; see config/default.toml"),
            )
        })
        .collect();
    problems.sort();
    let problems: Vec<String> = problems.into_iter().map(|(_, p)| p).collect();
    Err(ConfigError::Toml(problems.join("\n")))
}

/// A certificate subject's attributes as `(TYPE, value)` pairs in a fixed order, so
/// `CN=a,O=b` and `O=b, CN=a` name the same subject.
pub fn subject_key(subject: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = subject
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(kind, value)| (kind.trim().to_ascii_uppercase(), value.trim().to_string()))
        .collect();
    pairs.sort();
    pairs
}

/// The database kind `audit.database_url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    Sqlite,
    Postgres,
}

/// Which database a URL names, or what to write instead.
pub fn database_backend(url: &str) -> Result<DatabaseBackend, ConfigError> {
    if url.starts_with("sqlite:") {
        Ok(DatabaseBackend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseBackend::Postgres)
    } else {
        Err(ConfigError::UnknownDatabase(url.to_string()))
    }
}

/// The gateway's own token endpoint, for tools that insist on an OAuth token URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// A file holding the key that signs team tokens (at least 32 bytes; every replica needs the
    /// same). "" = no token endpoint. Env GATEWAY_TOKEN_SIGNING_KEY holds the key itself instead.
    pub token_signing_key_file: String,
    /// Life of an issued access token (Keycloak's `expires_in`).
    #[serde(rename = "token_lifetime_secs", deserialize_with = "seconds")]
    pub token_lifetime: Duration,
    /// Life of an issued refresh token (Keycloak's `refresh_expires_in`).
    #[serde(rename = "refresh_token_lifetime_secs", deserialize_with = "seconds")]
    pub refresh_token_lifetime: Duration,
    /// The key from GATEWAY_TOKEN_SIGNING_KEY, or a per-run key in `--sandbox`.
    #[serde(skip)]
    pub signing_key: Option<SecretString>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_signing_key_file: String::new(),
            token_lifetime: Duration::from_secs(300),
            refresh_token_lifetime: Duration::from_secs(1800),
            signing_key: None,
        }
    }
}

impl AuthConfig {
    /// The signing key: from GATEWAY_TOKEN_SIGNING_KEY (or the sandbox), else the file's content
    /// without its final line break. None when neither is set.
    pub fn signing_key_bytes(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        use secrecy::ExposeSecret;
        if let Some(key) = &self.signing_key {
            return Ok(Some(key.expose_secret().as_bytes().to_vec()));
        }
        if self.token_signing_key_file.is_empty() {
            return Ok(None);
        }
        let mut bytes = std::fs::read(&self.token_signing_key_file).map_err(|error| {
            ConfigError::TokenKeyUnreadable {
                path: self.token_signing_key_file.clone(),
                error,
            }
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(Some(bytes))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    #[serde(rename = "shutdown_timeout_secs", deserialize_with = "seconds")]
    pub shutdown_timeout: Duration,
    /// Worker runtimes, one thread each (0 = one per CPU).
    pub workers: usize,
    /// A request head must arrive within this long of a connection opening or of its first byte.
    #[serde(rename = "header_timeout_secs", deserialize_with = "seconds")]
    pub header_timeout: Duration,
    /// A keep-alive connection with no call is closed after this long.
    #[serde(rename = "idle_timeout_secs", deserialize_with = "seconds")]
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// 401s one client address may get in a minute before its calls get 429 (0 = no limit).
    pub auth_failures_per_minute: u32,
    /// Proxies (CIDRs or addresses) whose `Forwarded` / `X-Forwarded-For` name the caller.
    pub trusted_proxies: Vec<String>,
    /// Where the gateway's own endpoints (/_gateway/*) are served instead of on `listen`; empty:
    /// on `listen`, beside the API.
    pub admin_listen: String,
    /// PEM certificate chain and key that turn TLS on for `listen` (both, or neither).
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// PEM CA certificates whose client certificates are verified; a team may then be identified
    /// by its certificate's subject (`[[clients]] cert_subject`).
    pub tls_client_ca_file: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            workers: 0,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            auth_failures_per_minute: 30,
            trusted_proxies: Vec::new(),
            admin_listen: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    pub api_url: String,
    pub auth_url: String,
    #[serde(rename = "timeout_secs", deserialize_with = "seconds")]
    pub timeout: Duration,
    #[serde(rename = "connect_timeout_secs", deserialize_with = "seconds")]
    pub connect_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.contabo.com".into(),
            auth_url: "https://auth.contabo.com/auth/realms/contabo/protocol/openid-connect/token"
                .into(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// "pretty" for people, "json" for log pipelines.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. "info" or "contabo_gateway=debug,info".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Traces: the calls' spans exported over OTLP/HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (spans go to `/v1/traces` under it), e.g.
    /// `http://otel-collector:4318`; empty: no spans leave the process.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "contabo-gateway".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The response cache for user and client reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    pub enabled: bool,
    #[serde(rename = "ttl_secs", deserialize_with = "seconds")]
    pub ttl: Duration,
    pub max_bytes: u64,
    /// Serve an entry expired for less than this when upstream fails (0 = never).
    #[serde(rename = "stale_if_error_secs", deserialize_with = "seconds")]
    pub stale_if_error: Duration,
    /// Redis for invalidations across replicas ("" = this replica only). Env: GATEWAY_REDIS_URL.
    pub redis_url: String,
    /// While Redis is unreachable, entries live at most this long (invalidations may be missed).
    #[serde(rename = "redis_fallback_ttl_secs", deserialize_with = "seconds")]
    pub redis_fallback_ttl: Duration,
    /// The Redis channel invalidations are published on.
    pub redis_channel: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(30),
            max_bytes: 64 * 1024 * 1024,
            stale_if_error: Duration::from_secs(0),
            redis_url: String::new(),
            redis_fallback_ttl: Duration::from_secs(2),
            redis_channel: "contabo-gateway:cache-invalidation".into(),
        }
    }
}

/// The compliance audit log of mutating calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// sqlite://PATH or postgres://USER@HOST/DB. Env: GATEWAY_DATABASE_URL.
    pub database_url: String,
    /// Forward mutating calls even when the store cannot be written (they are then unaudited).
    pub fail_open: bool,
    /// Longest stored body; longer ones are cut with a marker.
    pub max_body_bytes: usize,
    /// JSON keys whose values are stored as "[REDACTED]" (case-insensitive, any depth).
    pub redact_keys: Vec<String>,
    /// Delete records older than this many days (0 = keep forever).
    pub retention_days: u64,
    /// Store `userData` (cloud-init) as sent instead of as its SHA-256 and size.
    pub store_user_data: bool,
    /// Longest wait for any store operation (a pending record's commit, a batch, a probe, an
    /// open); past it the call gets 503 and the store is reported down.
    #[serde(rename = "write_timeout_ms", deserialize_with = "milliseconds")]
    pub write_timeout: Duration,
    /// Ed25519 private key (PKCS#8 PEM, from `keys new-signing PATH`) that signs checkpoints of
    /// the chain's head; every replica on one PostgreSQL needs the same. "" = no checkpoints.
    pub signing_key_file: String,
    /// Seconds between signed checkpoints (one is also signed at shutdown and with each pruning).
    #[serde(rename = "checkpoint_secs", deserialize_with = "seconds")]
    pub checkpoint_interval: Duration,
    /// File each signed checkpoint is appended to as one JSON line (fsync'd): put it where the
    /// database's administrator cannot write (another disk, a WORM bucket's sync, a log shipper).
    pub checkpoint_file: String,
    /// A per-run key in `--sandbox` when none is configured (PEM).
    #[serde(skip)]
    pub signing_key_pem: Option<SecretString>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            database_url: "sqlite://data/audit.db".into(),
            fail_open: false,
            max_body_bytes: 65536,
            redact_keys: [
                "password",
                "rootPassword",
                "secret",
                "secretKey",
                "client_secret",
                "token",
                "access_token",
                "refresh_token",
            ]
            .map(String::from)
            .to_vec(),
            retention_days: 0,
            store_user_data: false,
            write_timeout: Duration::from_millis(2000),
            signing_key_file: String::new(),
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_file: String::new(),
            signing_key_pem: None,
        }
    }
}

impl AuditConfig {
    /// The key that signs checkpoints, when one is configured (or the sandbox made one).
    pub fn checkpoint_signer(
        &self,
    ) -> Result<Option<crate::signed_checkpoint::Signer>, crate::signed_checkpoint::CheckpointError>
    {
        use crate::signed_checkpoint::Signer;
        use secrecy::ExposeSecret;
        if let Some(pem) = &self.signing_key_pem {
            return Signer::from_pem(pem.expose_secret().as_bytes()).map(Some);
        }
        if self.signing_key_file.is_empty() {
            return Ok(None);
        }
        Signer::load(&self.signing_key_file).map(Some)
    }
}

/// Rate limits: per team (in `[[clients]]`) and for the one shared Contabo credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// false turns every limit off (per team and upstream budget); upstream 429s still pause.
    pub enabled: bool,
    /// Calls per second that all teams together may send to Contabo (cache hits do not count).
    pub upstream_per_second: f64,
    /// Calls that may go to Contabo at once above the sustained rate.
    pub upstream_burst: u32,
    /// Longest a call waits in the fair queue for upstream budget before it gets 429.
    #[serde(rename = "max_wait_ms", deserialize_with = "milliseconds")]
    pub max_wait: Duration,
    /// Redis shared by the replicas ("" = limits kept in this process). Env: GATEWAY_REDIS_URL.
    pub redis_url: String,
    /// Prefix of the Redis keys (replicas of one deployment share it).
    pub redis_key_prefix: String,
    /// Replicas of the deployment: while Redis is unreachable each keeps 1/replicas of the limits.
    pub replicas: u32,
    /// Tokens a call of an operation costs (default 1), by operationId or "METHOD /v1/path".
    pub route_costs: std::collections::BTreeMap<String, u32>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            upstream_per_second: 10.0,
            upstream_burst: 20,
            max_wait: Duration::from_millis(2000),
            redis_url: String::new(),
            redis_key_prefix: "contabo-gateway:ratelimit".into(),
            replicas: 1,
            route_costs: Default::default(),
        }
    }
}

/// One team: its key (as a SHA-256 digest), its role and its rate limits.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientConfig {
    pub name: String,
    /// Empty for a team identified by its client certificate alone.
    #[serde(default)]
    pub key_sha256: String,
    pub role: Role,
    #[serde(default = "default_per_second")]
    pub per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Secret fields (by name, from the route table) this team sees in the clear although it is not
    /// admin; the audit log still redacts them.
    #[serde(default)]
    pub reveal: Vec<String>,
    /// The subject of the team's client certificate (`CN=team-a, O=Example`), verified against
    /// `server.tls_client_ca_file`: a call over such a connection without a key is this team's.
    #[serde(default)]
    pub cert_subject: Option<String>,
}

fn default_per_second() -> f64 {
    5.0
}
fn default_burst() -> u32 {
    10
}

/// The one Contabo credential the gateway holds. Read from the environment only, never from the
/// config file, so the file can be shared and committed.
#[derive(Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: SecretString,
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Names of the credential variables, in the order the README lists them.
pub const CREDENTIAL_VARS: [&str; 4] = [
    "CONTABO_CLIENT_ID",
    "CONTABO_CLIENT_SECRET",
    "CONTABO_API_USER",
    "CONTABO_API_PASSWORD",
];

impl Credentials {
    /// Reads the four CONTABO_* variables; the error names every one that is missing or empty.
    pub fn from_env() -> Result<Self, ConfigError> {
        let values: Vec<Option<String>> = CREDENTIAL_VARS
            .iter()
            .map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .collect();
        let missing: Vec<&str> = CREDENTIAL_VARS
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError::CredentialIncomplete { missing });
        }
        let mut values = values.into_iter().map(Option::unwrap);
        let mut next = || values.next().unwrap_or_default();
        Ok(Self {
            client_id: next(),
            client_secret: SecretString::from(next()),
            username: next(),
            password: SecretString::from(next()),
        })
    }
}

/// Where the configuration came from, for messages.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    BuiltInDefaults,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltInDefaults => write!(f, "built-in defaults"),
        }
    }
}

impl Config {
    /// Resolves the file (`--config`, else `GATEWAY_CONFIG`, else `config/default.toml` if it
    /// exists, else built-in defaults), parses it and applies the environment overrides.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Source), ConfigError> {
        let env_path = std::env::var_os("GATEWAY_CONFIG").map(PathBuf::from);
        let chosen = explicit.map(Path::to_path_buf).or(env_path);
        let (mut config, source) = match chosen {
            Some(path) => (Self::from_file(&path)?, Source::File(path)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                let path = PathBuf::from(DEFAULT_CONFIG_PATH);
                (Self::from_file(&path)?, Source::File(path))
            }
            None => (Self::default(), Source::BuiltInDefaults),
        };
        config.apply_env(|name| std::env::var(name).ok());
        let directory = match &source {
            Source::File(path) => path.parent().map(Path::to_path_buf),
            Source::BuiltInDefaults => None,
        };
        config.read_clients_file(directory.as_deref())?;
        Ok((config, source))
    }

    /// Adds the teams of `clients_file` (a path relative to `directory`, the config file's).
    pub fn read_clients_file(&mut self, directory: Option<&Path>) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        struct ClientsFile {
            #[serde(default)]
            clients: Vec<ClientConfig>,
        }
        if self.clients_file.is_empty() {
            return Ok(());
        }
        let named = Path::new(&self.clients_file);
        let path = match directory {
            Some(directory) if named.is_relative() => directory.join(named),
            _ => named.to_path_buf(),
        };
        let text =
            std::fs::read_to_string(&path).map_err(|error| ConfigError::TeamsFileUnreadable {
                setting: self.clients_file.clone(),
                path: path.clone(),
                error,
                env_note: self.env_note("clients_file"),
            })?;
        let file: ClientsFile = parse_toml(&text).map_err(|problem| ConfigError::InFile {
            path: path.clone(),
            problem: Box::new(problem),
        })?;
        self.clients.extend(file.clients);
        Ok(())
    }

    /// " (the value comes from env VAR)" when an environment variable set `setting`, else "".
    fn env_note(&self, setting: &str) -> String {
        match self.from_env.iter().find(|(s, _)| *s == setting) {
            Some((_, variable)) => format!(" (the value comes from env {variable})"),
            None => String::new(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_toml(&text).map_err(|problem| ConfigError::InFile {
            path: path.to_path_buf(),
            problem: Box::new(problem),
        })
    }

    /// Parses a config file's text (see [`parse_toml`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        parse_toml(text)
    }

    /// The configuration with its addresses resolved, when validation finds no problem; else
    /// every problem, said as `origin` (where the configuration came from) having them.
    pub fn validated(self, origin: impl std::fmt::Display) -> Result<ValidConfig, ConfigError> {
        match self.checked() {
            (Some(addresses), problems) if problems.is_empty() => Ok(ValidConfig {
                settings: self,
                addresses,
            }),
            (_, problems) => Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            }),
        }
    }

    /// Environment variables win over the file. `lookup` is injectable for tests.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let mut from_env = Vec::new();
        let mut set = |name: &'static str, setting: &'static str, target: &mut String| {
            if let Some(v) = lookup(name).filter(|v| !v.is_empty()) {
                *target = v;
                from_env.push((setting, name));
            }
        };
        set("GATEWAY_LISTEN", "server.listen", &mut self.server.listen);
        set(
            "GATEWAY_CLIENTS_FILE",
            "clients_file",
            &mut self.clients_file,
        );
        set(
            "GATEWAY_ADMIN_LISTEN",
            "server.admin_listen",
            &mut self.server.admin_listen,
        );
        set(
            "CONTABO_API_URL",
            "upstream.api_url",
            &mut self.upstream.api_url,
        );
        set(
            "CONTABO_AUTH_URL",
            "upstream.auth_url",
            &mut self.upstream.auth_url,
        );
        set(
            "GATEWAY_REDIS_URL",
            "cache.redis_url",
            &mut self.cache.redis_url,
        );
        set(
            "GATEWAY_REDIS_URL",
            "rate_limit.redis_url",
            &mut self.rate_limit.redis_url,
        );
        set(
            "GATEWAY_DATABASE_URL",
            "audit.database_url",
            &mut self.audit.database_url,
        );
        self.from_env = from_env;
        if let Some(key) = lookup("GATEWAY_TOKEN_SIGNING_KEY").filter(|v| !v.is_empty()) {
            self.auth.signing_key = Some(key.into());
        }
    }

    /// Every problem found, each a sentence that says what to change. Empty means valid.
    pub fn problems(&self) -> Vec<String> {
        self.checked().1
    }

    /// The addresses resolved (None when any does not) and every problem found, each with the
    /// environment variable named that set its value.
    fn checked(&self) -> (Option<Addresses>, Vec<String>) {
        let mut problems = Vec::new();
        let addresses = self.addresses(&mut problems);
        problems.extend(self.problems_of_values());
        let problems = problems
            .into_iter()
            .map(|problem| {
                let setting = problem.split(" =").next().unwrap_or_default();
                let note = self.env_note(setting);
                problem + &note
            })
            .collect();
        (addresses, problems)
    }

    /// What `server.listen`, `server.admin_listen` and Contabo's two URLs name, resolved and
    /// parsed; None when any of them does not, each such problem added to `problems`.
    fn addresses(&self, problems: &mut Vec<String>) -> Option<Addresses> {
        fn noted<T>(result: Result<T, String>, problems: &mut Vec<String>) -> Option<T> {
            result.map_err(|problem| problems.push(problem)).ok()
        }
        let listen = noted(
            resolve_listen("server.listen", &self.server.listen),
            problems,
        );
        let admin_listen = match self.server.admin_listen.as_str() {
            "" => Some(None),
            text => noted(
                resolve_listen("server.admin_listen", text).and_then(|admin| {
                    let shared = listen.is_some_and(|api| api.port() == admin.port());
                    match shared && admin.port() != 0 {
                        true => Err(format!(
                            "server.admin_listen = {text:?} uses the port of server.listen; give \
                             the admin endpoints a port of their own"
                        )),
                        false => Ok(Some(admin)),
                    }
                }),
                problems,
            ),
        };
        let api = contabo_url("upstream.api_url", &self.upstream.api_url);
        let api = noted(api, problems);
        let auth = contabo_url("upstream.auth_url", &self.upstream.auth_url);
        let auth = noted(auth, problems);
        Some(Addresses {
            listen: listen?,
            admin_listen: admin_listen?,
            contabo: ContaboUrls {
                api: api?,
                auth: auth?,
            },
        })
    }

    fn problems_of_values(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let endpoint = &self.telemetry.otlp_endpoint;
        let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !is_url {
            problems.push(format!(
                "telemetry.otlp_endpoint = {endpoint:?} is not an http(s) URL; write the \
                 collector's OTLP/HTTP address, e.g. \"http://otel-collector:4318\""
            ));
        }
        let tls = &self.server;
        if tls.tls_cert_file.is_empty() != tls.tls_key_file.is_empty() {
            problems.push(
                "server.tls_cert_file and server.tls_key_file go together: set both (PEM files) \
                 to serve TLS, or neither"
                    .into(),
            );
        }
        if !tls.tls_client_ca_file.is_empty() && tls.tls_cert_file.is_empty() {
            problems.push(
                "server.tls_client_ca_file needs server.tls_cert_file and server.tls_key_file: \
                 client certificates are asked for in a TLS handshake"
                    .into(),
            );
        }
        if self.server.workers > 1024 {
            problems.push(format!(
                "server.workers = {} is more than 1024; use 0 for one per CPU",
                self.server.workers
            ));
        }
        if self.server.header_timeout.is_zero() || self.server.idle_timeout.is_zero() {
            problems.push(
                "server.header_timeout_secs and server.idle_timeout_secs must be at least 1".into(),
            );
        }
        if let Err(problem) =
            crate::client_address::TrustedProxies::parse(&self.server.trusted_proxies)
        {
            problems.push(problem.to_string());
        }
        if self.server.max_connections == 0 {
            problems.push("server.max_connections must be at least 1".into());
        }
        if self.server.max_body_bytes == 0 {
            problems.push("server.max_body_bytes must be at least 1".into());
        }
        if self.upstream.timeout.is_zero() {
            problems.push("upstream.timeout_secs must be at least 1".into());
        }
        if self.upstream.connect_timeout.is_zero() {
            problems.push("upstream.connect_timeout_secs must be at least 1".into());
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            problems.push(format!(
                "log.level = {:?} is not a tracing filter ({e}); use e.g. \"info\" or \"debug\"",
                self.log.level
            ));
        }
        problems.extend(self.cache_problems());
        if let Err(problem) = database_backend(&self.audit.database_url) {
            problems.push(problem.to_string());
        }
        if self.audit.write_timeout < Duration::from_millis(50) {
            problems.push(format!(
                "audit.write_timeout_ms = {} is too short for any store; use at least 50 (default 2000)",
                self.audit.write_timeout.as_millis()
            ));
        }
        if self.audit.max_body_bytes == 0 {
            problems.push("audit.max_body_bytes must be at least 1".into());
        }
        problems.extend(self.checkpoint_problems());
        problems.extend(self.client_problems());
        problems.extend(self.rate_limit_problems());
        problems.extend(self.auth_problems());
        problems
    }

    fn checkpoint_problems(&self) -> Vec<String> {
        let a = &self.audit;
        let mut problems = Vec::new();
        if let Err(problem) = a.checkpoint_signer() {
            problems.push(problem.to_string());
        }
        if a.checkpoint_interval.is_zero() {
            problems.push("audit.checkpoint_secs must be at least 1 (default 60)".into());
        }
        if !a.checkpoint_file.is_empty() && a.signing_key_file.is_empty() {
            problems.push(format!(
                "audit.checkpoint_file = {:?} needs audit.signing_key_file: checkpoints are only \
                 written when they can be signed",
                a.checkpoint_file
            ));
        }
        problems
    }

    fn auth_problems(&self) -> Vec<String> {
        let a = &self.auth;
        let mut problems = Vec::new();
        match a.signing_key_bytes() {
            Ok(Some(key)) => {
                if let Err(e) = crate::team_token::TokenSigner::new(&key) {
                    problems.push(format!("auth: {e}"));
                }
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem.to_string()),
        }
        if a.token_lifetime < Duration::from_secs(10) {
            problems.push(format!(
                "auth.token_lifetime_secs = {} is too short for a tool to use its token; use at \
                 least 10 (default 300)",
                a.token_lifetime.as_secs()
            ));
        }
        if a.refresh_token_lifetime < a.token_lifetime {
            problems.push(format!(
                "auth.refresh_token_lifetime_secs = {} is shorter than auth.token_lifetime_secs = \
                 {}; a refresh token must outlive the access token (default 1800)",
                a.refresh_token_lifetime.as_secs(),
                a.token_lifetime.as_secs()
            ));
        }
        problems
    }

    fn rate_limit_problems(&self) -> Vec<String> {
        let r = &self.rate_limit;
        let mut problems = Vec::new();
        if !(r.upstream_per_second.is_finite() && r.upstream_per_second > 0.0) {
            problems.push(format!(
                "rate_limit.upstream_per_second = {} must be a number above 0 \
                 (Contabo's limit for the shared credential, e.g. 10)",
                r.upstream_per_second
            ));
        }
        if r.upstream_burst < 1 {
            problems.push("rate_limit.upstream_burst must be at least 1".into());
        }
        if r.replicas < 1 {
            problems.push("rate_limit.replicas must be at least 1".into());
        }
        if r.max_wait > Duration::from_secs(60) {
            problems.push(format!(
                "rate_limit.max_wait_ms = {} is above 60000; a caller should not wait a minute",
                r.max_wait.as_millis()
            ));
        }
        if !r.redis_url.is_empty() && redis::Client::open(r.redis_url.as_str()).is_err() {
            problems.push(format!(
                "rate_limit.redis_url = {:?} is not a Redis URL, e.g. \"redis://127.0.0.1:6379\"",
                r.redis_url
            ));
        }
        if r.redis_key_prefix.is_empty() {
            problems.push("rate_limit.redis_key_prefix must not be empty".into());
        }
        for (route, &cost) in &r.route_costs {
            if crate::routes::named(route).is_none() {
                problems.push(format!(
                    "rate_limit.route_costs: {route:?} is not an operation of the Contabo API; \
                     use its operationId (e.g. \"createInstance\") or \"METHOD /v1/path\" as in the \
                     spec (e.g. \"POST /v1/compute/instances\")"
                ));
                continue;
            }
            if cost < 1 {
                problems.push(format!(
                    "rate_limit.route_costs.{route} = 0: a cost must be at least 1"
                ));
            }
            if cost > r.upstream_burst {
                problems.push(format!(
                    "rate_limit.route_costs.{route} = {cost} is above rate_limit.upstream_burst = {}; \
                     such a call could never go upstream",
                    r.upstream_burst
                ));
            }
            for c in self
                .clients
                .iter()
                .filter(|c| c.burst >= 1 && cost > c.burst)
            {
                problems.push(format!(
                    "rate_limit.route_costs.{route} = {cost} is above the burst ({}) of client {:?}, \
                     which could then never make that call; raise its burst or lower the cost",
                    c.burst, c.name
                ));
            }
        }
        problems
    }

    fn cache_problems(&self) -> Vec<String> {
        let c = &self.cache;
        let mut problems = Vec::new();
        if c.ttl.is_zero() {
            problems.push("cache.ttl_secs must be at least 1 (set cache.enabled = false to turn the cache off)".into());
        }
        if c.max_bytes < 1024 {
            problems.push(format!(
                "cache.max_bytes = {} is too small; give it at least 1024",
                c.max_bytes
            ));
        }
        if !c.redis_url.is_empty() && redis::Client::open(c.redis_url.as_str()).is_err() {
            problems.push(format!(
                "cache.redis_url = {:?} is not a Redis URL, e.g. \"redis://127.0.0.1:6379\"",
                c.redis_url
            ));
        }
        if c.redis_fallback_ttl.is_zero() {
            problems.push("cache.redis_fallback_ttl_secs must be at least 1".into());
        }
        if c.redis_channel.is_empty() {
            problems.push("cache.redis_channel must not be empty".into());
        }
        problems
    }

    fn client_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        let mut subjects = std::collections::HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let at = format!("clients[{i}] ({:?})", c.name);
            if c.name.trim().is_empty() {
                problems.push(format!(
                    "clients[{i}].name is empty; give every team a name"
                ));
            } else if !names.insert(c.name.as_str()) {
                problems.push(format!(
                    "{at}: the name is used twice; names must be unique"
                ));
            }
            let digest_ok = c.key_sha256.len() == 64 && hex::decode(&c.key_sha256).is_ok();
            let certificate_only = c.key_sha256.is_empty() && c.cert_subject.is_some();
            if let Some(subject) = &c.cert_subject {
                if !subject.contains('=') {
                    problems.push(format!(
                        "{at}: cert_subject = {subject:?} is not a subject; write it as \
                         \"CN=team-a, O=Example\""
                    ));
                } else if !subjects.insert(subject_key(subject)) {
                    problems.push(format!("{at}: cert_subject is shared with another client"));
                }
                if self.server.tls_client_ca_file.is_empty() {
                    problems.push(format!(
                        "{at}: cert_subject needs server.tls_client_ca_file (the CA that signs \
                         the teams' certificates)"
                    ));
                }
            }
            if !digest_ok && !certificate_only {
                problems.push(format!(
                    "{at}: key_sha256 must be 64 hex characters (the SHA-256 of the key); \
                     `contabo-gateway keys new {}` prints one (or identify the team by its \
                     client certificate alone with cert_subject)",
                    c.name
                ));
            } else if digest_ok && !digests.insert(c.key_sha256.to_ascii_lowercase()) {
                problems.push(format!("{at}: key_sha256 is shared with another client"));
            }
            if !(c.per_second.is_finite() && c.per_second > 0.0) {
                problems.push(format!(
                    "{at}: per_second = {} must be a number above 0",
                    c.per_second
                ));
            }
            if c.burst < 1 {
                problems.push(format!("{at}: burst must be at least 1"));
            }
            let known = crate::routes::secret_fields();
            for field in &c.reveal {
                if !known.iter().any(|k| k.eq_ignore_ascii_case(field)) {
                    problems.push(format!(
                        "{at}: reveal = {field:?} is no secret field of Contabo's API; name one \
                         of {}",
                        known.join(", ")
                    ));
                }
            }
        }
        problems
    }

    /// Worker runtimes to run: `server.workers`, or one per CPU when 0.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().problems().is_empty());
    }

    #[test]
    fn durations_are_read_once_from_their_seconds_and_milliseconds_keys() {
        let cfg = Config::from_toml(
            "[upstream]\ntimeout_secs = 7\n[rate_limit]\nmax_wait_ms = 250\n\
             [audit]\nwrite_timeout_ms = 900\ncheckpoint_secs = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.upstream.timeout, Duration::from_secs(7));
        assert_eq!(cfg.rate_limit.max_wait, Duration::from_millis(250));
        assert_eq!(cfg.audit.write_timeout, Duration::from_millis(900));
        assert_eq!(cfg.audit.checkpoint_interval, Duration::from_secs(5));
        assert_eq!(
            cfg.upstream.connect_timeout,
            Duration::from_secs(5),
            "default"
        );
        let err = Config::from_toml("[upstream]\ntimeout_secs = \"30s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout_secs"), "{err}");
        let err = Config::from_toml("[upstream]\ntimeout_secs = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout_secs"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlissten = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lissten"), "{err}");
        let err = Config::from_toml("[bogus]\n").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        // Every unknown key of the file, each with its line.
        let err = Config::from_toml(
            "[server]\nlisen = \"127.0.0.1:1\"\n[cache]\nttl = 5\n[[clients]]\nname = 'a'\n\
             key_sha256 = 'x'\nrole = 'admin'\nrevael = []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`server.lisen` (line 2)"), "{err}");
        assert!(err.contains("`cache.ttl` (line 4)"), "{err}");
        assert!(err.contains("revael"), "{err}");
        assert_eq!(err.lines().count(), 3, "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let cfg = Config::from_toml(
            r#"
            [server]
            listen = "nowhere"
            [upstream]
            api_url = "ftp://x"
            timeout_secs = 0
            [[clients]]
            name = "a"
            key_sha256 = "abc"
            role = "admin"
            per_second = 0
            burst = 0
            [[clients]]
            name = "a"
            key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            role = "readonly"
            "#,
        )
        .unwrap();
        let p = cfg.problems().join("\n");
        for needle in [
            "server.listen",
            "upstream.api_url",
            "timeout_secs",
            "key_sha256 must be 64 hex",
            "per_second",
            "burst",
            "used twice",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
    }

    #[test]
    fn rate_limit_problems_are_explained() {
        let cfg = Config::from_toml(
            r#"
            [rate_limit]
            upstream_per_second = -1
            upstream_burst = 0
            replicas = 0
            [rate_limit.route_costs]
            createInstances = 2
            "POST /v1/compute/instances" = 4
            [[clients]]
            name = "small"
            key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            role = "admin"
            per_second = 0.5
            burst = 3
            "#,
        )
        .unwrap();
        let p = cfg.problems().join("\n");
        for needle in [
            "upstream_per_second = -1 must be a number above 0",
            "upstream_burst must be at least 1",
            "replicas must be at least 1",
            "\"createInstances\" is not an operation of the Contabo API",
            "above rate_limit.upstream_burst",
            "above the burst (3) of client \"small\"",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
        let negative = Config::from_toml("[rate_limit]\nupstream_burst = -2\n")
            .unwrap_err()
            .to_string();
        assert!(negative.contains("upstream_burst"), "{negative}");
    }

    #[test]
    fn a_problem_names_the_environment_variable_that_set_the_value() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "GATEWAY_LISTEN").then(|| "nowhere".into()));
        let problems = cfg.problems().join("\n");
        assert!(problems.contains("from env GATEWAY_LISTEN"), "{problems}");
    }

    #[test]
    fn validation_resolves_the_addresses_once_and_names_every_bad_one() {
        let mut cfg = Config::default();
        cfg.server.listen = "127.0.0.1:7000".into();
        cfg.server.admin_listen = "[::1]:7001".into();
        cfg.upstream.api_url = "http://127.0.0.1:9/prefix/".into();
        let valid = cfg.clone().validated("the test").unwrap();
        assert_eq!(valid.listen(), "127.0.0.1:7000".parse().unwrap());
        assert_eq!(valid.admin_listen(), Some("[::1]:7001".parse().unwrap()));
        assert_eq!(valid.contabo().api().path(), "/prefix/");
        assert_eq!(valid.contabo().auth().host_str(), Some("auth.contabo.com"));
        cfg.server.admin_listen = "localhost:7000".into();
        cfg.upstream.auth_url = "token-endpoint".into();
        let error = cfg.validated("the test").unwrap_err().to_string();
        assert!(error.contains("has 2 problem"), "{error}");
        assert!(error.contains("uses the port of server.listen"), "{error}");
        assert!(
            error.contains("upstream.auth_url = \"token-endpoint\""),
            "{error}"
        );
    }

    #[test]
    fn an_api_url_with_credentials_is_refused_without_echoing_them() {
        let mut cfg = Config::default();
        cfg.upstream.api_url = "https://team:hunter2@api.example.com".into();
        let problems = cfg.problems().join("\n");
        assert!(problems.contains("carries credentials"), "{problems}");
        assert!(
            problems.contains("https://***@api.example.com/"),
            "{problems}"
        );
        assert!(
            !problems.contains("hunter2") && !problems.contains("team"),
            "{problems}"
        );
    }

    #[test]
    fn listen_takes_a_host_name() {
        let mut cfg = Config::default();
        cfg.server.listen = "localhost:8080".into();
        let valid = cfg.clone().validated("the test").unwrap();
        assert_eq!(valid.listen().port(), 8080);
        assert!(valid.listen().ip().is_loopback());
        cfg.server.listen = "localhost".into();
        let problems = cfg.problems().join("\n");
        assert!(problems.contains("localhost:8080"), "{problems}");
    }

    #[test]
    fn reveal_and_token_settings_are_checked() {
        let digest = "ab".repeat(32);
        let cfg = Config::from_toml(&format!(
            "[auth]\ntoken_signing_key_file = '/nonexistent/key'\ntoken_lifetime_secs = 600\n\
             refresh_token_lifetime_secs = 60\n\
             [[clients]]\nname='a'\nkey_sha256='{digest}'\nrole='operator'\n\
             reveal = ['secretKey', 'password']\n"
        ))
        .unwrap();
        let problems = cfg.problems().join("\n");
        assert!(
            problems.contains("\"password\" is no secret field"),
            "{problems}"
        );
        assert!(!problems.contains("\"secretKey\""), "{problems}");
        assert!(problems.contains("/nonexistent/key"), "{problems}");
        assert!(problems.contains("must outlive"), "{problems}");
        let mut short = Config::default();
        short.apply_env(|k| (k == "GATEWAY_TOKEN_SIGNING_KEY").then(|| "short".into()));
        let problems = short.problems().join("\n");
        assert!(problems.contains("at least 32"), "{problems}");
        assert!(
            !problems.contains("short\""),
            "the key is never echoed: {problems}"
        );
    }

    #[test]
    fn bad_role_is_explained() {
        let err = Config::from_toml("[[clients]]\nname='a'\nkey_sha256='00'\nrole='root'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("root") && err.contains("admin"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let mut cfg = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        cfg.apply_env(|k| match k {
            "GATEWAY_LISTEN" => Some("127.0.0.1:2".into()),
            "CONTABO_API_URL" => Some("http://127.0.0.1:9".into()),
            _ => None,
        });
        assert_eq!(cfg.server.listen, "127.0.0.1:2");
        cfg.apply_env(|k| (k == "GATEWAY_REDIS_URL").then(|| "redis://127.0.0.1:1".into()));
        assert_eq!(cfg.cache.redis_url, "redis://127.0.0.1:1");
        assert_eq!(cfg.rate_limit.redis_url, "redis://127.0.0.1:1");
        assert_eq!(cfg.upstream.api_url, "http://127.0.0.1:9");
    }
}

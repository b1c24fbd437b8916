//! The gateway's shared state: everything a call needs, shared by all calls, and the facts about a
//! call's connection that the gateway's own endpoints read from the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::auth_throttle::AuthThrottle;
use crate::cache::ResponseCache;
use crate::client_address::TrustedProxies;
use crate::clients::ClientRegistry;
use crate::config::{ClientConfig, Config, Credentials, ValidConfig};
use crate::ratelimit::RateLimits;
use crate::routes::RouteTable;
use crate::team_token::TokenSigner;
use crate::tls::Tls;
use crate::upstream::Upstream;

/// What a reload changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub teams: usize,
}

/// Everything a call needs, shared by all calls.
/// Why the shared state could not be built from a configuration: the part that refused, in its
/// own words.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Redis(#[from] crate::redis_link::RedisLinkError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("auth: {0}")]
    TokenKey(#[from] crate::team_token::KeyTooShort),
    #[error(transparent)]
    TrustedProxies(#[from] crate::client_address::NotAProxy),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::error::AuditError),
}

pub struct Gateway {
    pub config: Config,
    clients: ArcSwap<ClientRegistry>,
    pub routes: RouteTable,
    pub upstream: Upstream,
    pub cache: Arc<ResponseCache>,
    pub audit: AuditLog,
    pub limits: RateLimits,
    pub in_flight: AtomicUsize,
    /// 401s per client address, against key guessing.
    pub auth_throttle: AuthThrottle,
    /// Connections served at once across every worker (`server.max_connections`).
    connections: Arc<Semaphore>,
    /// Signs and verifies the tokens of the gateway's token endpoint; None turns the endpoint off.
    pub team_tokens: Option<TokenSigner>,
    /// Proxies whose forwarding headers name the caller (`server.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// TLS on the API listener, when `server.tls_cert_file` is set; reloaded with the teams.
    pub tls: Option<Arc<Tls>>,
    /// Turns true when the server stops accepting calls: open-ended answers (an audit follow
    /// stream) end then instead of holding the drain up.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    pub fn new(config: ValidConfig, credentials: Credentials) -> Result<Self, BuildError> {
        let upstream = Upstream::new(
            &config.upstream,
            config.contabo(),
            credentials,
            config.worker_count(),
        )?;
        let config = config.into_settings();
        let cache = Arc::new(ResponseCache::new(&config.cache)?);
        crate::metrics::handle();
        let team_tokens = match config.auth.signing_key_bytes()? {
            Some(key) => Some(TokenSigner::new(&key)?),
            None => None,
        };
        let trusted_proxies = TrustedProxies::parse(&config.server.trusted_proxies)?;
        let tls = Tls::from_settings(&config.server)?;
        Ok(Self {
            tls,
            stopping: tokio::sync::watch::Sender::new(false),
            team_tokens,
            trusted_proxies,
            audit: AuditLog::start(&config.audit)?,
            limits: RateLimits::new(&config.rate_limit)?,
            cache,
            clients: ArcSwap::from_pointee(ClientRegistry::from_config(
                &config.clients,
                &config.rate_limit,
            )),
            routes: RouteTable::default(),
            upstream,
            in_flight: AtomicUsize::new(0),
            auth_throttle: AuthThrottle::new(config.server.auth_failures_per_minute),
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            config,
        })
    }

    /// The slots of `server.max_connections`, shared by every worker's accept loop.
    pub fn connection_slots(&self) -> Arc<Semaphore> {
        self.connections.clone()
    }

    /// The current team registry (an ArcSwap, so a reload can replace it; reading takes no lock).
    pub fn clients(&self) -> arc_swap::Guard<Arc<ClientRegistry>> {
        self.clients.load()
    }

    /// Swaps in the teams of a new configuration; calls in flight keep the team they hold.
    pub fn replace_clients(&self, clients: &[ClientConfig]) -> Reloaded {
        let old = self.clients.load_full();
        let new = old.reloaded(clients, &self.config.rate_limit);
        let names = |r: &ClientRegistry| {
            r.names()
                .map(str::to_string)
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (before, after) = (names(&old), names(&new));
        let reloaded = Reloaded {
            added: after.difference(&before).cloned().collect(),
            removed: before.difference(&after).cloned().collect(),
            teams: new.len(),
        };
        self.clients.store(Arc::new(new));
        reloaded
    }
}

/// The caller's address for the router's endpoints (the 401 throttle counts by it); Contabo calls
/// get it straight from the connection. The call's [`RequestId`] is in the extensions too.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The subject of the client certificate the connection's TLS handshake verified (with
/// `server.tls_client_ca_file`), in the request's extensions: a team may be identified by it.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<str>);

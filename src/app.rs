//! The gateway's shared state and its router: every route and layer, assembled in one place.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::cache::ResponseCache;
use crate::clients::ClientRegistry;
use crate::config::{Config, Credentials};
use crate::routes::RouteTable;
use crate::upstream::Upstream;
use crate::{admin, pipeline};

/// Everything a call needs, shared by all calls.
pub struct Gateway {
    pub config: Config,
    clients: RwLock<Arc<ClientRegistry>>,
    pub routes: RouteTable,
    pub upstream: Upstream,
    pub cache: Arc<ResponseCache>,
    pub in_flight: AtomicUsize,
}

impl Gateway {
    pub fn new(config: Config, credentials: Credentials) -> Result<Self, String> {
        let upstream = Upstream::new(&config.upstream, credentials)?;
        let cache = Arc::new(ResponseCache::new(&config.cache)?);
        Ok(Self {
            cache,
            clients: RwLock::new(Arc::new(ClientRegistry::from_config(&config.clients))),
            routes: RouteTable::default(),
            upstream,
            in_flight: AtomicUsize::new(0),
            config,
        })
    }

    /// The current team registry (replaceable at runtime).
    pub fn clients(&self) -> Arc<ClientRegistry> {
        self.clients.read().expect("clients lock").clone()
    }

    pub fn replace_clients(&self, registry: ClientRegistry) {
        *self.clients.write().expect("clients lock") = Arc::new(registry);
    }
}

/// The router: Contabo calls through the pipeline, gateway endpoints beside it, 404 elsewhere.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1", any(pipeline::handle))
        .route("/v1/{*rest}", any(pipeline::handle))
        .route("/_gateway/health", get(admin::health))
        .route("/_gateway/ready", get(admin::ready))
        .route("/_gateway/status", get(admin::status))
        .route(
            "/_gateway/cache",
            get(admin::cache_stats).delete(admin::cache_purge),
        )
        .fallback(pipeline::not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            admin::panic_response,
        ))
        .with_state(gateway)
}

/// Serves until `shutdown` resolves, then stops accepting and lets calls in flight finish for at
/// most `drain_timeout`.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain_timeout = Duration::from_secs(gateway.config.server.shutdown_timeout_secs);
    let background = start_background_tasks(&gateway);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = listener.tap_io(|tcp| {
        // Answers are written in pieces (head, body chunks): do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router(gateway))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        _ = stopping_rx => {}
    }
    let drained = tokio::time::timeout(drain_timeout, server).await;
    background.into_iter().for_each(|task| task.abort());
    match drained {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                timeout_secs = drain_timeout.as_secs(),
                "calls still in flight after server.shutdown_timeout_secs; exiting anyway"
            );
            Ok(())
        }
    }
}

/// Tasks that live as long as the server: the cache invalidation listener (with Redis).
fn start_background_tasks(gateway: &Arc<Gateway>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(bus) = gateway.cache.bus() {
        tasks.push(bus.spawn_listener(Arc::downgrade(&gateway.cache)));
    }
    tasks
}

//! The server: the router of the gateway's own endpoints, the per-call wrapper every call goes
//! through, worker runtimes with their listeners, graceful shutdown, and [`Application`], which
//! `serve` and every test start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use futures_util::future::Either;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::Instrument;

use crate::config::{Credentials, ValidConfig};
use crate::connection::{AcceptErrors, Activity, Limits, Watched};
use crate::error::GatewayError;
use crate::gateway::{ClientAddr, ClientCertificate, Gateway};
use crate::request_id::{Origin, RequestId};
use crate::{admin, console, pipeline, token_endpoint};

/// What one listener serves: everything (no `server.admin_listen`), or with an admin listener the
/// API (Contabo calls and the token endpoint) on `server.listen` and the gateway's own endpoints
/// on `server.admin_listen`, so metrics and status never share the public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Everything,
    Api,
    Admin,
}

impl Surface {
    fn serves_api(self) -> bool {
        self != Surface::Admin
    }

    fn serves_admin(self) -> bool {
        self != Surface::Api
    }
}

/// The router of the gateway's own endpoints on a listener serving `surface`: the token endpoint,
/// /_gateway/**, 400/404 for every other path outside /v1.
pub fn router(gateway: Arc<Gateway>, surface: Surface) -> Router {
    let mut router = Router::new();
    if surface.serves_api() {
        router = router.route(token_endpoint::TOKEN_PATH, post(token_endpoint::token));
    }
    if surface.serves_admin() {
        router = router
            .route("/_gateway/health", get(admin::health))
            .route("/_gateway/ready", get(admin::ready))
            .route("/_gateway/status", get(admin::status))
            .route("/_gateway/metrics", get(admin::metrics))
            .route("/_gateway/audit", get(admin::audit_query))
            .route(
                "/_gateway/audit/verify",
                get(admin::audit_verify)
                    .post(admin::audit_verify_against)
                    .layer(DefaultBodyLimit::max(admin::MAX_CHECKPOINT_UPLOAD)),
            )
            .route("/_gateway/audit/whoami", get(admin::audit_whoami))
            .route("/_gateway/audit/activity", get(admin::audit_activity))
            .route("/_gateway/audit/contabo", get(admin::audit_contabo))
            .route("/_gateway/audit/reconcile", get(admin::audit_reconcile))
            .route("/_gateway/console", get(console::page))
            .route("/_gateway/console/console.js", get(console::script))
            .route("/_gateway/console/console.css", get(console::style))
            .route(
                "/_gateway/cache",
                get(admin::cache_stats).delete(admin::cache_purge),
            );
    }
    let router = match surface {
        Surface::Everything => router.fallback(pipeline::not_found),
        Surface::Api => router.fallback(served_on_the_admin_port),
        Surface::Admin => router.fallback(served_on_the_api_port),
    };
    router.with_state(gateway)
}

/// The API listener's answer to /_gateway/* when an admin listener serves those.
async fn served_on_the_admin_port(request: axum::extract::Request) -> axum::response::Response {
    if !request.uri().path().starts_with("/_gateway/") {
        return pipeline::not_found(request).await;
    }
    let request_id = RequestId::of_call(request.extensions(), request.headers());
    GatewayError::NotFound(format!(
        "{} is served on the gateway's admin port (server.admin_listen), not on this one",
        request.uri().path()
    ))
    .into_response_with(&request_id)
}

/// The admin listener's answer to everything but /_gateway/*.
async fn served_on_the_api_port(request: axum::extract::Request) -> axum::response::Response {
    let request_id = RequestId::of_call(request.extensions(), request.headers());
    GatewayError::NotFound(format!(
        "{} is not served on the admin port: Contabo calls and the token endpoint are on \
         server.listen; this port serves /_gateway/ only",
        request.uri().path()
    ))
    .into_response_with(&request_id)
}

/// Every call, whichever endpoint serves it, goes through here: its request id (the caller's
/// valid one, else a new one) and the span that carries it, the count of calls in flight, a panic
/// answered as a JSON 500 with the call's own request id, and the "call finished" log line. Contabo
/// calls go straight to the pipeline; the router's matching is for the gateway's own endpoints.
async fn serve_call(
    gateway: Arc<Gateway>,
    router: Router,
    surface: Surface,
    mut request: axum::extract::Request,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
) -> Result<axum::response::Response, std::convert::Infallible> {
    if let Some(certificate) = certificate {
        request.extensions_mut().insert(certificate);
    }
    let http1 = request.version() <= http::Version::HTTP_11;
    let (request_id, origin) = RequestId::from_headers(request.headers());
    // The caller's address: the peer, or behind a trusted proxy the address it forwarded.
    let peer = gateway.trusted_proxies.client(peer, request.headers());
    let span = tracing::info_span!(
        "call",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        client = tracing::field::Empty,
        route = tracing::field::Empty,
    );
    crate::telemetry::adopt_caller_context(&span, request.headers());
    let served = if surface.serves_api() && pipeline::is_contabo_call(request.uri().path()) {
        Either::Left(pipeline::handle(
            &gateway,
            request,
            request_id.clone(),
            Some(peer),
        ))
    } else {
        request.extensions_mut().insert(ClientAddr(peer));
        request.extensions_mut().insert(request_id.clone());
        Either::Right(async move {
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    };
    let mut response = within_call(&gateway, &request_id, origin, served)
        .instrument(span)
        .await;
    // A body refused for its size was not read to its end, so this HTTP/1 connection cannot
    // carry another call: say so, or a pooled client sends its next call into a closing socket.
    if http1 && response.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

/// What the wrapper does around every served call, inside its span.
async fn within_call(
    gateway: &Gateway,
    request_id: &RequestId,
    origin: Origin,
    served: impl std::future::Future<Output = axum::response::Response>,
) -> axum::response::Response {
    use futures_util::FutureExt;
    if origin == Origin::ReplacedMalformed {
        tracing::debug!("the caller's x-request-id does not match Contabo's pattern; replaced");
    }
    let _in_flight = InFlight::enter(gateway);
    let started = Instant::now();
    let mut response = std::panic::AssertUnwindSafe(served)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("the call panicked inside the gateway");
            GatewayError::Internal(
                "the gateway failed on this call; it has been logged with this request id".into(),
            )
            .into_response_with(request_id)
        });
    response
        .headers_mut()
        .entry(crate::request_id::HEADER)
        .or_insert_with(|| request_id.header_value());
    let status = response.status().as_u16();
    tracing::info!(
        status,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "call finished"
    );
    response
}

/// Counts calls in flight; the count drops even when a caller disconnects and the call is dropped.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(gw: &'a Gateway) -> Self {
        gw.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(&gw.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the gateway could not start: an address it cannot listen on, or shared state it cannot
/// build.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {error}")]
    Listen {
        address: String,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] crate::gateway::BuildError),
}

/// The gateway, built and bound, ready to run: what `main` (and `serve --sandbox`) runs, and what
/// every integration test starts, so the tests exercise the serving code that ships.
pub struct Application {
    gateway: Arc<Gateway>,
    listeners: Vec<std::net::TcpListener>,
    address: SocketAddr,
    admin: Option<(std::net::TcpListener, SocketAddr)>,
}

impl Application {
    /// Binds `server.listen` (one socket per worker) and builds the shared state: everything that
    /// can fail at start fails here, before anything is served.
    pub async fn build(config: ValidConfig, credentials: Credentials) -> Result<Self, StartError> {
        let cannot_listen = |address: &str| {
            let address = address.to_string();
            move |error| StartError::Listen { address, error }
        };
        let listeners = bind_workers(config.listen(), config.worker_count())
            .map_err(cannot_listen(&config.server.listen))?;
        let address = listeners[0]
            .local_addr()
            .map_err(cannot_listen(&config.server.listen))?;
        let admin = match config.admin_listen() {
            Some(addr) => {
                let mut bound =
                    bind_workers(addr, 1).map_err(cannot_listen(&config.server.admin_listen))?;
                let listener = bound.remove(0);
                let address = listener
                    .local_addr()
                    .map_err(cannot_listen(&config.server.admin_listen))?;
                Some((listener, address))
            }
            None => None,
        };
        let gateway = Arc::new(Gateway::new(config, credentials)?);
        Ok(Self {
            gateway,
            listeners,
            address,
            admin,
        })
    }

    /// Where the gateway's own endpoints are served when `server.admin_listen` is set.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, address)| *address)
    }

    /// The address it listens on (the port resolved when `server.listen` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Serves until `shutdown` resolves, then drains (see [`serve_workers`]).
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        serve_workers(
            self.gateway,
            self.listeners,
            self.admin.map(|(listener, _)| listener),
            shutdown,
        )
        .await
    }
}

/// Serves on `listeners` (bound with [`bind_workers`]), each in its own single-threaded runtime on
/// its own thread, like nginx's worker processes: a call stays on one thread from accept to answer,
/// and the kernel spreads connections across workers. The admin listener, when there is one, is
/// served on the caller's runtime with connection slots of its own, so probes and scrapes get in
/// while the API port is full. Returns when every worker has drained.
async fn serve_workers(
    gateway: Arc<Gateway>,
    listeners: Vec<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let background = start_background_tasks(&gateway);
    gateway.limits.connect().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let surface = if admin.is_some() {
        Surface::Api
    } else {
        Surface::Everything
    };
    let admin = match admin {
        Some(listener) => {
            let listener = TcpListener::from_std(listener)?;
            let mut stop = stop_rx.clone();
            let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS));
            Some(tokio::spawn(accept_loop(
                gateway.clone(),
                listener,
                Surface::Admin,
                slots,
                async move {
                    let _ = stop.wait_for(|stopping| *stopping).await;
                },
            )))
        }
        None => None,
    };
    let mut workers = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let gateway = gateway.clone();
        let mut stop = stop_rx.clone();
        let worker = std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || -> std::io::Result<()> {
                crate::upstream::set_worker_index(index);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let slots = gateway.connection_slots();
                    accept_loop(gateway, listener, surface, slots, async move {
                        let _ = stop.wait_for(|stopping| *stopping).await;
                    })
                    .await
                })
            })?;
        workers.push(worker);
    }
    shutdown.await;
    gateway.stopping.send_replace(true);
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a worker panicked")))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(std::io::Error::other)?;
    if let Some(admin) = admin {
        admin.await.map_err(std::io::Error::other)??;
    }
    // Every call has drained: commit the audit records they left with the writer, and sign the
    // chain's head as it stands.
    gateway.audit.flush().await;
    if let Err(reason) = gateway.audit.checkpoint().await {
        tracing::error!(%reason, "the audit checkpoint at shutdown failed");
    }
    background.into_iter().for_each(|task| task.abort());
    joined
        .into_iter()
        .collect::<std::io::Result<Vec<()>>>()
        .map(|_| ())
}

/// `workers` listening sockets on one address with SO_REUSEPORT (port 0 resolves to one port).
/// SO_REUSEPORT is for this process's own workers only: when something already listens on the
/// port (another gateway, whose workers would otherwise share it with ours and split the traffic),
/// binding fails with `AddrInUse` naming the address.
fn bind_workers(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        refuse_a_served_port(addr)?;
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Binds (without SO_REUSEPORT, so it joins no group) and releases the address: it fails when any
/// socket listens there, also one of another gateway's reuse-port group.
fn refuse_a_served_port(addr: SocketAddr) -> std::io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "port {} on {} is already served by another process (another gateway?); \
                     stop it or choose another server.listen",
                addr.port(),
                addr.ip()
            ),
        )),
        Err(error) => Err(error),
    }
}

/// Accepts connections and serves each with hyper until `shutdown`, then stops accepting and lets
/// calls in flight finish for at most `server.shutdown_timeout_secs`.
async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    surface: Surface,
    slots: Arc<tokio::sync::Semaphore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = &gateway.config.server;
    let drain_timeout = server.shutdown_timeout;
    let limits = Limits {
        header: server.header_timeout,
        idle: server.idle_timeout,
    };
    let router = router(gateway.clone(), surface);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        // At most server.max_connections at once: beyond it, connections wait in the backlog.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    accept_errors.failed(&error);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers are written in pieces (head, body chunks): do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        // The service of one connection's calls; a TLS connection's knows its client certificate.
        let make_service = {
            let (router, gateway, calls) = (router.clone(), gateway.clone(), activity.clone());
            move |certificate: Option<ClientCertificate>| {
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let call = calls.call();
                    let request = request.map(axum::body::Body::new);
                    // Boxed: hyper keeps the call's future where it is instead of moving its
                    // kilobytes into the connection's state.
                    let answer = Box::pin(serve_call(
                        gateway.clone(),
                        router.clone(),
                        surface,
                        request,
                        peer,
                        certificate.clone(),
                    ));
                    async move {
                        let answered = answer.await;
                        drop(call);
                        answered
                    }
                })
            }
        };
        let io = Watched::new(stream, activity.clone());
        // The watchdog sleeps in a task of its own, so the connection's many wake-ups do not poll
        // its timer; it says when to cut the connection (a TLS handshake counts as the head).
        let (cut, cut_off) = tokio::sync::oneshot::channel::<()>();
        let watchdog = tokio::spawn(async move {
            activity.overstayed(limits).await;
            let _ = cut.send(());
        });
        let tls = match surface {
            Surface::Admin => None,
            _ => gateway.tls.as_ref().map(|tls| tls.acceptor()),
        };
        // Shutdown waits for every watcher: a TLS handshake in progress is a connection too.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let served = async move {
                match tls {
                    None => {
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(io), make_service(None));
                        let _ = watcher.watch(connection.into_owned()).await;
                    }
                    Some(acceptor) => {
                        let stream = match acceptor.accept(io).await {
                            Ok(stream) => stream,
                            Err(error) => {
                                tracing::debug!(%error, %peer, "TLS handshake failed");
                                return;
                            }
                        };
                        let certificate =
                            crate::tls::client_subject(stream.get_ref().1).map(ClientCertificate);
                        let connection = builder.serve_connection_with_upgrades(
                            TokioIo::new(stream),
                            make_service(certificate),
                        );
                        let _ = watcher.watch(connection.into_owned()).await;
                    }
                }
            };
            tokio::select! {
                biased;
                _ = served => {}
                // A slow or silent client: dropping the connection closes it.
                _ = cut_off => {}
            }
            watchdog.abort();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = drain_timeout.as_secs(),
            "calls still in flight after server.shutdown_timeout_secs; exiting anyway"
        );
    }
    Ok(())
}

/// Connections the admin listener serves at once (probes, scrapes, reviewers).
const ADMIN_CONNECTIONS: usize = 256;

/// Tasks that live as long as the server: the upstream budget's dispatcher, the metrics upkeep,
/// the cache invalidation listener (with Redis), the TLS files' watch (with TLS), the audit
/// checkpoints (with `audit.signing_key_file`) and retention pruning (with `audit.retention_days`).
fn start_background_tasks(gateway: &Arc<Gateway>) -> Vec<tokio::task::JoinHandle<()>> {
    let upkept = gateway.clone();
    let mut tasks = vec![
        tokio::spawn(gateway.limits.budget().clone().run_dispatcher()),
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                crate::metrics::run_upkeep();
                upkept.auth_throttle.prune();
            }
        }),
    ];
    if let Some(bus) = gateway.cache.bus() {
        tasks.push(bus.spawn_listener(Arc::downgrade(&gateway.cache)));
    }
    if let Some(tls) = &gateway.tls {
        tasks.push(tokio::spawn(tls.clone().watch()));
    }
    if let Some(every) = gateway.audit.checkpoint_every() {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(reason) = gateway.audit.checkpoint().await {
                    tracing::error!(%reason, "the audit checkpoint failed");
                }
            }
        }));
    }
    let retention_days = gateway.config.audit.retention_days;
    if gateway.audit.enabled() && retention_days > 0 {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every_hour.tick().await;
                let before = chrono::Utc::now() - chrono::Duration::days(retention_days as i64);
                let before = before.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
                match gateway.audit.reader().await {
                    Ok(store) => match store.prune(&before, gateway.audit.signer()).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(pruned = n, %before, "audit retention: records pruned, checkpoint written");
                            // The pruning's signed checkpoint goes to the checkpoint file now.
                            if let Err(reason) = gateway.audit.checkpoint().await {
                                tracing::error!(%reason, "the audit checkpoint failed");
                            }
                        }
                        Err(reason) => tracing::error!(%reason, "audit retention pruning failed"),
                    },
                    Err(reason) => tracing::error!(%reason, "audit retention pruning failed"),
                }
            }
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn gateway() -> Gateway {
        let mut config = Config::default();
        config.audit.enabled = false;
        let credentials = Credentials {
            client_id: "id".into(),
            client_secret: "secret".to_string().into(),
            username: "user".into(),
            password: "password".to_string().into(),
        };
        Gateway::new(config.validated("the test").unwrap(), credentials).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_call_is_answered_as_json_with_its_own_request_id() {
        let gw = gateway();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-request-id",
            "04e0f898-37b4-48bc-a794-1a57abe6aa31".parse().unwrap(),
        );
        let (request_id, origin) = RequestId::from_headers(&headers);
        let response = within_call(&gw, &request_id, origin, async {
            panic!("a handler's bug");
        })
        .await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], request_id.as_str());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["request_id"], "04e0f898-37b4-48bc-a794-1a57abe6aa31");
        assert_eq!(body["error"], "internal_error");
        assert_eq!(
            gw.in_flight.load(Ordering::SeqCst),
            0,
            "the call is no longer in flight"
        );
    }

    #[tokio::test]
    async fn every_answer_carries_the_calls_request_id() {
        let gw = gateway();
        let (request_id, origin) = RequestId::from_headers(&http::HeaderMap::new());
        let response = within_call(&gw, &request_id, origin, async {
            axum::response::IntoResponse::into_response("ok")
        })
        .await;
        assert_eq!(response.headers()["x-request-id"], request_id.as_str());
    }
}

//! One Redis connection and its upkeep, for each part that talks to Redis (the shared rate limits,
//! the cache bus's publisher): a multiplexed connection, opened at start and, after it failed,
//! again in the background at most once per `reconnect_every`, so a call never waits for a
//! connection to open; every command has a deadline, and a failed or late one drops the connection
//! (it may be stuck behind the unanswered command). What an outage means is the caller's to say.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

/// Why Redis could not be used: its URL at start, or one command.
#[derive(Debug, thiserror::Error)]
pub enum RedisLinkError {
    #[error("{setting} is not usable: {error}")]
    Unusable {
        setting: &'static str,
        #[source]
        error: redis::RedisError,
    },
    #[error("not connected (reconnecting in the background)")]
    NotConnected,
    #[error("{0}")]
    Failed(#[from] redis::RedisError),
    #[error("no answer within {} ms", .0.as_millis())]
    NoAnswer(Duration),
}

pub struct RedisLink {
    client: redis::Client,
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Deadline of one command; opening a connection may take four times as long.
    timeout: Duration,
    reconnect_every: Duration,
    reconnecting: AtomicBool,
    /// Milliseconds since `epoch` of the last attempt to connect.
    last_attempt_ms: AtomicU64,
    epoch: Instant,
}

impl RedisLink {
    /// A link to `url` (not yet connected: see [`RedisLink::connect`]); `setting` names the
    /// configuration key for the error.
    pub fn open(
        url: &str,
        setting: &'static str,
        timeout: Duration,
        reconnect_every: Duration,
    ) -> Result<Arc<Self>, RedisLinkError> {
        let client = redis::Client::open(url)
            .map_err(|error| RedisLinkError::Unusable { setting, error })?;
        Ok(Arc::new(Self {
            client,
            connection: ArcSwapOption::empty(),
            timeout,
            reconnect_every,
            reconnecting: AtomicBool::new(false),
            last_attempt_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// The client, for what needs a connection of its own (a pub/sub subscription).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether a connection is open (it worked last time it was used).
    pub fn is_connected(&self) -> bool {
        self.connection.load().is_some()
    }

    /// Runs one command within the deadline. Without a connection it fails at once and a new one
    /// is opened in the background when one is due.
    pub async fn run<T, F, Fut>(self: &Arc<Self>, command: F) -> Result<T, RedisLinkError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            self.reconnect_if_due();
            return Err(RedisLinkError::NotConnected);
        };
        match tokio::time::timeout(self.timeout, command((*connection).clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.drop_connection();
                Err(error.into())
            }
            Err(_) => {
                self.drop_connection();
                Err(RedisLinkError::NoAnswer(self.timeout))
            }
        }
    }

    /// Connects now (at start), waiting a little for it, so the first calls already use Redis.
    pub async fn connect(self: &Arc<Self>) {
        self.reconnect_if_due();
        for _ in 0..20 {
            if !self.reconnecting.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn drop_connection(&self) {
        self.connection.store(None);
    }

    fn reconnect_if_due(self: &Arc<Self>) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        let every = self.reconnect_every.as_millis() as u64;
        if last != 0 && now_ms.saturating_sub(last) < every {
            return;
        }
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_attempt_ms.store(now_ms.max(1), Ordering::Relaxed);
        let link = self.clone();
        tokio::spawn(async move {
            let opened = tokio::time::timeout(
                link.timeout * 4,
                link.client.get_multiplexed_async_connection(),
            )
            .await;
            match opened {
                Ok(Ok(connection)) => link.connection.store(Some(Arc::new(connection))),
                Ok(Err(error)) => tracing::debug!(%error, "connecting to Redis failed"),
                Err(_) => tracing::debug!("connecting to Redis timed out"),
            }
            link.reconnecting.store(false, Ordering::Release);
        });
    }
}

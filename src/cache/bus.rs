//! Cache invalidation across replicas over Redis pub/sub.
//!
//! Every invalidation is published as "<replica id> <group>"; each replica applies the messages of
//! the others. While Redis is unreachable the cache falls back to a short TTL (messages may be
//! missed), the listener retries every second, and on reconnecting the replica drops its whole cache
//! because it cannot know what it missed.
//!
//! The link is up while the subscription holds and the last command on the publishing connection
//! succeeded: any failed or timed-out command marks it down, any success marks it up again. While
//! a publish has failed, the listener pings Redis every second, so the link recovers without
//! waiting for the next write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;

use super::ResponseCache;
use crate::redis_link::RedisLink;
use crate::routes::CacheGroup;

const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub struct InvalidationBus {
    /// The publishing connection (the subscription has one of its own).
    link: Arc<RedisLink>,
    channel: String,
    replica: String,
    /// The subscription is established.
    subscribed: AtomicBool,
    /// The last command on the publishing connection succeeded (true until one fails).
    publishing: AtomicBool,
    /// What `is_connected` said last, to log transitions once.
    connected: AtomicBool,
    failure_logged: AtomicBool,
}

fn group_name(group: CacheGroup) -> &'static str {
    match group {
        CacheGroup::Users => "users",
        CacheGroup::Client => "client",
    }
}

fn parse_group(name: &str) -> Option<CacheGroup> {
    match name {
        "users" => Some(CacheGroup::Users),
        "client" => Some(CacheGroup::Client),
        _ => None,
    }
}

impl InvalidationBus {
    pub fn new(url: &str, channel: &str) -> Result<Self, crate::redis_link::RedisLinkError> {
        let link = RedisLink::open(url, "cache.redis_url", PUBLISH_TIMEOUT, RECONNECT_DELAY)?;
        Ok(Self {
            link,
            channel: channel.to_string(),
            replica: uuid::Uuid::new_v4().to_string(),
            subscribed: AtomicBool::new(false),
            publishing: AtomicBool::new(true),
            connected: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Notes the state of one side of the link (the subscription or the publishing connection).
    fn side(&self, side: &AtomicBool, up: bool, reason: &str) {
        side.store(up, Ordering::SeqCst);
        let connected =
            self.subscribed.load(Ordering::SeqCst) && self.publishing.load(Ordering::SeqCst);
        self.set_connected(connected, reason);
    }

    fn set_connected(&self, connected: bool, reason: &str) {
        let was = self.connected.swap(connected, Ordering::SeqCst);
        let first_failure = !connected && !self.failure_logged.swap(true, Ordering::SeqCst);
        if connected {
            self.failure_logged.store(false, Ordering::SeqCst);
        }
        if (was || first_failure) && !connected {
            tracing::warn!(
                %reason,
                "Redis for cache invalidation is unreachable; serving with the short fallback TTL \
                 (cache.redis_fallback_ttl_secs) until it is back"
            );
        } else if !was && connected {
            tracing::info!("Redis cache invalidation bus connected");
        }
    }

    /// Publishes one invalidation; on failure the bus is marked down (short TTL) and the error logged.
    pub async fn publish(&self, group: CacheGroup) {
        let message = format!("{} {}", self.replica, group_name(group));
        self.command("publish", |mut connection| {
            let channel = self.channel.clone();
            async move {
                connection
                    .publish::<_, _, i64>(&channel, &message)
                    .await
                    .map(|_| ())
            }
        })
        .await;
    }

    /// One command on the publishing connection within `PUBLISH_TIMEOUT`; its outcome marks that
    /// side of the link up or down.
    async fn command<F, Fut>(&self, what: &str, run: F)
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<()>>,
    {
        match self.link.run(run).await {
            Ok(()) => self.side(&self.publishing, true, ""),
            Err(e) => self.side(&self.publishing, false, &format!("{what} failed: {e}")),
        }
    }

    /// While the last publish failed: a PING, so the link comes back without a write.
    async fn probe(&self) {
        if !self.publishing.load(Ordering::SeqCst) {
            self.command("ping", |mut connection| async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(|_| ())
            })
            .await;
        }
    }

    /// Listens for other replicas' invalidations for as long as the cache lives.
    pub fn spawn_listener(
        self: &Arc<Self>,
        cache: Weak<ResponseCache>,
    ) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            bus.link.connect().await;
            loop {
                let reason = match bus.link.client().get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&bus.channel).await {
                        Ok(()) => {
                            match cache.upgrade() {
                                Some(cache) => cache.invalidate_all_locally(),
                                None => return,
                            }
                            bus.side(&bus.subscribed, true, "");
                            let mut messages = pubsub.on_message();
                            let mut probe = tokio::time::interval(RECONNECT_DELAY);
                            loop {
                                tokio::select! {
                                    message = messages.next() => {
                                        let Some(message) = message else { break };
                                        let Some(cache) = cache.upgrade() else { return };
                                        let payload: String =
                                            message.get_payload().unwrap_or_default();
                                        bus.apply(&cache, &payload);
                                    }
                                    _ = probe.tick() => bus.probe().await,
                                }
                            }
                            "the subscription ended".to_string()
                        }
                        Err(e) => format!("subscribe failed: {e}"),
                    },
                    Err(e) => format!("connect failed: {e}"),
                };
                bus.side(&bus.subscribed, false, &reason);
                if cache.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        })
    }

    fn apply(&self, cache: &ResponseCache, payload: &str) {
        let Some((replica, group)) = payload.split_once(' ') else {
            return;
        };
        if replica == self.replica {
            return;
        }
        if let Some(group) = parse_group(group) {
            cache.apply_invalidation(group);
        }
    }
}

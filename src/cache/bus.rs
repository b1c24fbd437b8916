//! Cache invalidation across replicas over Redis pub/sub.
//!
//! Every invalidation is published as "<replica id> <group>"; each replica applies the messages of
//! the others. While Redis is unreachable the cache falls back to a short TTL (messages may be
//! missed), the listener retries every second, and on reconnecting the replica drops its whole cache
//! because it cannot know what it missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;

use super::ResponseCache;
use crate::routes::CacheGroup;

const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub struct InvalidationBus {
    client: redis::Client,
    channel: String,
    replica: String,
    publisher: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
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
    pub fn new(url: &str, channel: &str) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("cache.redis_url is not usable: {e}"))?;
        Ok(Self {
            client,
            channel: channel.to_string(),
            replica: uuid::Uuid::new_v4().to_string(),
            publisher: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
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
        let attempt = async {
            let mut publisher = self.publisher.lock().await;
            if publisher.is_none() {
                *publisher = Some(self.client.get_multiplexed_async_connection().await?);
            }
            let connection = publisher.as_mut().expect("connected above");
            let result: redis::RedisResult<i64> = connection.publish(&self.channel, &message).await;
            if result.is_err() {
                *publisher = None;
            }
            result
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, attempt).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.set_connected(false, &format!("publish failed: {e}")),
            Err(_) => self.set_connected(false, "publish timed out"),
        }
    }

    /// Listens for other replicas' invalidations for as long as the cache lives.
    pub fn spawn_listener(
        self: &Arc<Self>,
        cache: Weak<ResponseCache>,
    ) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                let reason = match bus.client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&bus.channel).await {
                        Ok(()) => {
                            match cache.upgrade() {
                                Some(cache) => cache.invalidate_all_locally(),
                                None => return,
                            }
                            bus.set_connected(true, "");
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let Some(cache) = cache.upgrade() else { return };
                                let payload: String = message.get_payload().unwrap_or_default();
                                bus.apply(&cache, &payload);
                            }
                            "the subscription ended".to_string()
                        }
                        Err(e) => format!("subscribe failed: {e}"),
                    },
                    Err(e) => format!("connect failed: {e}"),
                };
                bus.set_connected(false, &reason);
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

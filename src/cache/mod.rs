//! The response cache for user and client reads (GET /v1/users, /v1/users/{userId},
//! /v1/users/client).
//!
//! - One moka cache bounded by bytes and by TTL; one entry serves every team (all share one
//!   credential), and redaction for the caller's role happens when serving.
//! - Concurrent misses on one key are coalesced into one upstream call; its answer (or error) goes to
//!   every waiter. Only 200s are stored.
//! - Writes invalidate by bumping the generation of a group of entries: an entry of an older
//!   generation is never served, and a fetch that started before a write is never stored after it.
//!   With Redis configured, invalidations are published so every replica applies them.

mod bus;
mod key;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use tokio::sync::OnceCell;

pub use bus::InvalidationBus;
pub use key::cache_key;

use crate::config::CacheConfig;
use crate::error::GatewayError;
use crate::routes::CacheGroup;

const GROUPS: [CacheGroup; 2] = [CacheGroup::Users, CacheGroup::Client];

fn slot(group: CacheGroup) -> usize {
    match group {
        CacheGroup::Users => 0,
        CacheGroup::Client => 1,
    }
}

/// What non-admins get instead of the stored body.
#[derive(Debug, Clone)]
pub enum NonAdminBody {
    /// The body carries no secrets.
    Same,
    /// The body with its secrets redacted.
    Redacted(Bytes),
    /// The body may carry secrets but could not be read to redact them.
    Unreadable(GatewayError),
}

/// A buffered upstream answer to a cacheable read.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub non_admin_body: NonAdminBody,
    pub stored_at: Instant,
    generation: u64,
    group: CacheGroup,
}

impl CachedResponse {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        non_admin_body: NonAdminBody,
    ) -> Self {
        Self {
            status,
            headers,
            body,
            non_admin_body,
            stored_at: Instant::now(),
            generation: 0,
            group: CacheGroup::Users,
        }
    }

    fn weight(&self, key: &str) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        let redacted = match &self.non_admin_body {
            NonAdminBody::Redacted(b) => b.len(),
            _ => 0,
        };
        u32::try_from(key.len() + headers + self.body.len() + redacted).unwrap_or(u32::MAX)
    }

    pub fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }
}

/// The answer to a lookup.
pub enum Lookup {
    Fresh(Arc<CachedResponse>),
    /// Not fresh; the expired entry is kept when it may still be served if upstream fails.
    Miss {
        stale: Option<Arc<CachedResponse>>,
    },
}

/// The shared result of one coalesced upstream fetch.
#[derive(Clone)]
pub struct Fetched {
    pub result: Result<Arc<CachedResponse>, GatewayError>,
    pub stored: bool,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
    upstream_fetches: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct CacheStats {
    pub enabled: bool,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub stale_hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub upstream_fetches: u64,
    pub ttl_secs: f64,
    pub redis: Option<&'static str>,
}

type InFlight = Mutex<HashMap<(String, u64), Arc<OnceCell<Fetched>>>>;

pub struct ResponseCache {
    config: CacheConfig,
    entries: moka::future::Cache<String, Arc<CachedResponse>>,
    generations: [AtomicU64; 2],
    in_flight: InFlight,
    counters: Counters,
    bus: Option<Arc<InvalidationBus>>,
}

impl ResponseCache {
    pub fn new(config: &CacheConfig) -> Result<Self, crate::redis_link::RedisLinkError> {
        let counters = Counters::default();
        let evictions = counters.evictions.clone();
        let lifetime = config.ttl + config.stale_if_error;
        let entries = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| value.weight(key))
            .time_to_live(lifetime)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        let bus = if config.redis_url.is_empty() {
            None
        } else {
            Some(Arc::new(InvalidationBus::new(
                &config.redis_url,
                &config.redis_channel,
            )?))
        };
        Ok(Self {
            config: config.clone(),
            entries,
            generations: Default::default(),
            in_flight: Mutex::default(),
            counters,
            bus,
        })
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn bus(&self) -> Option<&Arc<InvalidationBus>> {
        self.bus.as_ref()
    }

    fn generation(&self, group: CacheGroup) -> u64 {
        self.generations[slot(group)].load(Ordering::SeqCst)
    }

    /// How long an entry is fresh now: the configured TTL, or the short fallback TTL while the
    /// Redis bus is down (invalidations from other replicas may be missed).
    fn ttl(&self) -> Duration {
        let ttl = self.config.ttl;
        match &self.bus {
            Some(bus) if !bus.is_connected() => ttl.min(self.config.redis_fallback_ttl),
            _ => ttl,
        }
    }

    pub async fn lookup(&self, key: &str) -> Lookup {
        let Some(entry) = self.entries.get(key).await else {
            return Lookup::Miss { stale: None };
        };
        if entry.generation != self.generation(entry.group) {
            return Lookup::Miss { stale: None };
        }
        let ttl = self.ttl();
        if entry.age() < ttl {
            return Lookup::Fresh(entry);
        }
        let stale_window = self.config.stale_if_error;
        let stale = (entry.age() < ttl + stale_window).then_some(entry);
        Lookup::Miss { stale }
    }

    pub fn count_hit(&self, stale: bool) {
        let counter = if stale {
            &self.counters.stale_hits
        } else {
            &self.counters.hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `fetch` once for all concurrent callers of the same key (and generation), stores a 200
    /// answer unless a write invalidated the group meanwhile, and hands the outcome to every caller.
    pub async fn fetch_coalesced<F>(&self, key: &str, group: CacheGroup, fetch: F) -> Fetched
    where
        F: Future<Output = Result<CachedResponse, GatewayError>>,
    {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation(group);
        let slot_key = (key.to_string(), generation);
        let cell = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .entry(slot_key.clone())
            .or_default()
            .clone();
        let fill = async {
            self.counters
                .upstream_fetches
                .fetch_add(1, Ordering::Relaxed);
            match fetch.await {
                Ok(mut response) => {
                    response.generation = generation;
                    response.group = group;
                    let response = Arc::new(response);
                    let stored =
                        response.status == StatusCode::OK && self.generation(group) == generation;
                    if stored {
                        self.entries.insert(key.to_string(), response.clone()).await;
                    }
                    Fetched {
                        result: Ok(response),
                        stored,
                    }
                }
                Err(error) => Fetched {
                    result: Err(error),
                    stored: false,
                },
            }
        };
        let span = crate::telemetry::span(|| tracing::info_span!("cache fill (coalesced)"));
        let fetched = cell
            .get_or_init(|| tracing::Instrument::instrument(fill, span))
            .await
            .clone();
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        if in_flight
            .get(&slot_key)
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            in_flight.remove(&slot_key);
        }
        fetched
    }

    /// Drops every entry of `groups` here, then tells the other replicas. Returns once both are done
    /// (or the bus gave up), so a caller's next read never sees the value its write replaced.
    pub async fn invalidate(&self, groups: &[CacheGroup]) {
        for group in groups {
            self.apply_invalidation(*group);
        }
        if let Some(bus) = &self.bus {
            for group in groups {
                bus.publish(*group).await;
            }
        }
    }

    /// Applies an invalidation (local or from another replica).
    pub fn apply_invalidation(&self, group: CacheGroup) {
        self.generations[slot(group)].fetch_add(1, Ordering::SeqCst);
    }

    /// Drops everything (admin purge, or after the bus reconnects and may have missed messages).
    pub fn invalidate_all_locally(&self) {
        for group in GROUPS {
            self.apply_invalidation(group);
        }
        self.entries.invalidate_all();
    }

    pub async fn purge(&self) {
        self.invalidate_all_locally();
        if let Some(bus) = &self.bus {
            for group in GROUPS {
                bus.publish(group).await;
            }
        }
        self.entries.run_pending_tasks().await;
    }

    pub async fn stats(&self) -> CacheStats {
        self.entries.run_pending_tasks().await;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            enabled: self.config.enabled,
            entries: self.entries.entry_count(),
            bytes: self.entries.weighted_size(),
            max_bytes: self.config.max_bytes,
            hits: load(&self.counters.hits),
            stale_hits: load(&self.counters.stale_hits),
            misses: load(&self.counters.misses),
            evictions: load(&self.counters.evictions),
            upstream_fetches: load(&self.counters.upstream_fetches),
            ttl_secs: self.ttl().as_secs_f64(),
            redis: self.bus.as_ref().map(|b| {
                if b.is_connected() {
                    "connected"
                } else {
                    "unreachable (short TTL in force)"
                }
            }),
        }
    }
}

/// Whether a caller asked to skip the cache (`Cache-Control: no-cache` or `Pragma: no-cache`).
pub fn wants_fresh(headers: &HeaderMap) -> bool {
    [http::header::CACHE_CONTROL, http::header::PRAGMA]
        .iter()
        .flat_map(|name| headers.get_all(name))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
}

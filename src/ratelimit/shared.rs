//! Limits shared by every replica, kept in Redis: GCRA in one Lua script, so a check-and-take is
//! atomic whatever the number of replicas.
//!
//! A busy replica does not ask Redis for every call: it takes a [`Lease`] of the tokens it used in
//! the last [`LEASE_WINDOW`] (never more than that window's share of the rate, nor a fair share of
//! the burst) and spends them locally for at most that window; what it did not spend is lost, never
//! handed out twice. At low rates the lease is one token, so every call asks Redis and the limits
//! are exact; at high rates Redis sees about one call per bucket per window.
//!
//! When Redis does not answer (within [`REDIS_TIMEOUT`]) the store says so and the caller falls back
//! to its local limits; the failure is logged loudly once, the connection is opened again in the
//! background (see [`crate::redis_link`]) and the return to Redis is logged too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Decision, Policy};
use crate::redis_link::RedisLink;

/// Longest a limit check waits for Redis before the local fallback decides.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a replica in fallback tries to reach Redis again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// How long leased tokens may be spent, and the window whose use sizes the next lease.
const LEASE_WINDOW: Duration = Duration::from_millis(20);

/// GCRA: KEYS[1] the bucket (its theoretical arrival time in microseconds), KEYS[2] an optional
/// pause key that refuses everything while it exists. ARGV: emission interval (microseconds),
/// burst, cost, wanted (at least cost: the lease). Takes min(wanted, available) tokens when at
/// least `cost` are available. Returns {taken (0 = refused), remaining, retry_after_us,
/// reset_after_us}. The clock is Redis's own (TIME), so replicas with skewed clocks still agree.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
if KEYS[2] then
  local pause = redis.call('PTTL', KEYS[2])
  if pause > 0 then return {0, 0, pause * 1000, pause * 1000} end
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local tolerance = interval * burst
local available = math.floor((tolerance - (tat - now)) / interval + 1e-6)
if available < cost then
  local allow_at = tat + interval * cost - tolerance
  return {0, math.max(0, available), allow_at - now, tat - now}
end
local taken = math.min(wanted, available)
local new_tat = tat + interval * taken
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {taken, available - taken, 0, new_tat - now}
"#;

/// Tokens of one Redis bucket held by this replica for a short while (see the module comment).
/// Cheap to clone: clones share the tokens.
#[derive(Clone)]
pub struct Lease(Arc<LeaseInner>);

struct LeaseInner {
    /// Most tokens one lease takes.
    cap: u32,
    state: std::sync::Mutex<LeaseState>,
}

struct LeaseState {
    tokens: u32,
    expires: Instant,
    /// What Redis said the bucket held besides the lease, and when it is full again.
    remaining: u32,
    full_at: Instant,
    window_started: Instant,
    used_this_window: u32,
    used_last_window: u32,
    /// A renewal ahead of need is on its way.
    renewing: bool,
}

/// What the lease could do for one call.
enum Spent {
    /// Paid from the lease; `renew` asks for that many tokens ahead of need.
    Served {
        decision: Decision,
        renew: Option<u32>,
    },
    /// Not enough tokens: ask Redis for this many (the call's cost included).
    Empty { wanted: u32 },
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("cap", &self.0.cap)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A lease of a bucket with `policy` shared by `replicas`.
    pub fn new(policy: Policy, replicas: u32) -> Self {
        let window_share = (policy.per_second * LEASE_WINDOW.as_secs_f64()).ceil() as u32;
        let burst_share = policy.burst / (2 * replicas.max(1));
        let now = Instant::now();
        Self(Arc::new(LeaseInner {
            cap: window_share.min(burst_share).max(1),
            state: std::sync::Mutex::new(LeaseState {
                tokens: 0,
                expires: now,
                remaining: 0,
                full_at: now,
                window_started: now,
                used_this_window: 0,
                used_last_window: 0,
                renewing: false,
            }),
        }))
    }

    /// Spends `cost` leased tokens if the lease holds them. A lease running low (a quarter of
    /// what the last window used, or a quarter of its life left) asks to be renewed ahead of
    /// need, so busy callers rarely wait for Redis. One-token leases (low rates) never renew
    /// ahead: every call asks Redis and the limit stays exact.
    fn spend(&self, cost: u32) -> Spent {
        let now = Instant::now();
        let mut state = self.0.state.lock().expect("lease lock");
        if now.duration_since(state.window_started) >= LEASE_WINDOW {
            state.used_last_window = state.used_this_window;
            state.used_this_window = 0;
            state.window_started = now;
        }
        state.used_this_window = state.used_this_window.saturating_add(cost);
        let wanted = state.used_last_window.clamp(cost, self.0.cap.max(cost));
        if now < state.expires && state.tokens >= cost {
            state.tokens -= cost;
            let running_low = state.tokens < wanted / 4
                || state.expires.saturating_duration_since(now) < LEASE_WINDOW / 4;
            let renew = (self.0.cap > 1 && running_low && !state.renewing).then(|| {
                state.renewing = true;
                wanted
            });
            return Spent::Served {
                decision: Decision {
                    allowed: true,
                    remaining: state.remaining + state.tokens,
                    retry_after: Duration::ZERO,
                    reset_after: state.full_at.saturating_duration_since(now),
                },
                renew,
            };
        }
        Spent::Empty { wanted }
    }

    /// Keeps what Redis granted beyond `cost` (0 for a renewal ahead of need).
    fn refill(&self, cost: u32, taken: u32, decision: &Decision) {
        let now = Instant::now();
        let mut state = self.0.state.lock().expect("lease lock");
        let extra = taken.saturating_sub(cost);
        state.tokens = if now < state.expires {
            state.tokens + extra
        } else {
            extra
        };
        state.expires = now + LEASE_WINDOW;
        state.remaining = decision.remaining;
        state.full_at = now + decision.reset_after;
    }

    fn renewed(&self) {
        self.0.state.lock().expect("lease lock").renewing = false;
    }
}

/// Sets the pause key for ARGV[1] milliseconds unless it already lasts longer.
const PAUSE: &str = r#"
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 1
"#;

pub struct SharedStore {
    link: Arc<RedisLink>,
    upstream_key: String,
    pause_key: String,
    gcra: redis::Script,
    pause: redis::Script,
    /// Whether the last exchange with Redis worked (for status and the one loud log line).
    healthy: AtomicBool,
}

impl SharedStore {
    pub fn new(url: &str, prefix: &str) -> Result<Arc<Self>, crate::redis_link::RedisLinkError> {
        let link = RedisLink::open(url, "rate_limit.redis_url", REDIS_TIMEOUT, RECONNECT_EVERY)?;
        Ok(Arc::new(Self {
            link,
            upstream_key: format!("{prefix}:upstream"),
            pause_key: format!("{prefix}:upstream:pause"),
            gcra: redis::Script::new(GCRA),
            pause: redis::Script::new(PAUSE),
            // Optimistic until proven otherwise, so the first failure is logged.
            healthy: AtomicBool::new(true),
        }))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.link.is_connected()
    }

    /// Takes `cost` tokens from a team's bucket (from its lease when it holds them); None when
    /// Redis cannot decide.
    pub async fn take_team(
        self: &Arc<Self>,
        key: &str,
        lease: &Lease,
        policy: Policy,
        cost: u32,
    ) -> Option<Decision> {
        self.take(key, None, lease, policy, cost).await
    }

    /// Takes from the upstream budget, refused while an upstream 429 pause holds; None when Redis
    /// cannot decide.
    pub async fn take_upstream(
        self: &Arc<Self>,
        lease: &Lease,
        policy: Policy,
        cost: u32,
    ) -> Option<Decision> {
        self.take(
            &self.upstream_key,
            Some(&self.pause_key),
            lease,
            policy,
            cost,
        )
        .await
    }

    /// Tells every replica to hold upstream calls for `wait`.
    pub async fn pause_upstream(self: &Arc<Self>, wait: Duration) {
        let ms = wait.as_millis().max(1) as u64;
        let mut call = self.pause.key(&self.pause_key);
        call.arg(ms);
        let result = self
            .link
            .run(|mut connection| async move { call.invoke_async::<i64>(&mut connection).await })
            .await;
        if let Err(reason) = result {
            self.failed(&reason);
        }
    }

    async fn take(
        self: &Arc<Self>,
        bucket: &str,
        pause: Option<&str>,
        lease: &Lease,
        policy: Policy,
        cost: u32,
    ) -> Option<Decision> {
        let wanted = match lease.spend(cost) {
            Spent::Served { decision, renew } => {
                if let Some(wanted) = renew {
                    self.renew_ahead(bucket, pause, lease, policy, wanted);
                }
                return Some(decision);
            }
            Spent::Empty { wanted } => wanted,
        };
        let (taken, decision) = self.ask(bucket, pause, policy, cost, wanted).await?;
        if decision.allowed {
            lease.refill(cost, taken, &decision);
        }
        Some(Decision {
            remaining: decision.remaining + taken.saturating_sub(cost),
            ..decision
        })
    }

    /// Tops the lease up in the background while callers keep spending what is left.
    fn renew_ahead(
        self: &Arc<Self>,
        bucket: &str,
        pause: Option<&str>,
        lease: &Lease,
        policy: Policy,
        wanted: u32,
    ) {
        let (store, lease) = (self.clone(), lease.clone());
        let (bucket, pause) = (bucket.to_string(), pause.map(str::to_string));
        tokio::spawn(async move {
            if let Some((taken, decision)) = store
                .ask(&bucket, pause.as_deref(), policy, 0, wanted)
                .await
            {
                lease.refill(0, taken, &decision);
            }
            lease.renewed();
        });
    }

    /// One GCRA take in Redis: the tokens taken (at most `wanted`, at least `cost` when allowed)
    /// and the decision; None when Redis cannot decide.
    async fn ask(
        self: &Arc<Self>,
        bucket: &str,
        pause: Option<&str>,
        policy: Policy,
        cost: u32,
        wanted: u32,
    ) -> Option<(u32, Decision)> {
        let mut invocation = self.gcra.key(bucket);
        if let Some(pause) = pause {
            invocation.key(pause);
        }
        let interval_us = policy.interval().as_secs_f64() * 1e6;
        invocation
            .arg(interval_us)
            .arg(policy.burst)
            .arg(cost)
            .arg(wanted);
        let result = self
            .link
            .run(|mut connection| async move {
                invocation
                    .invoke_async::<(i64, i64, i64, i64)>(&mut connection)
                    .await
            })
            .await;
        match result {
            Ok((taken, remaining, retry_us, reset_us)) => {
                self.recovered();
                let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
                let taken = taken.clamp(0, i64::from(u32::MAX)) as u32;
                let decision = Decision {
                    allowed: taken >= cost,
                    remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                    retry_after: micros(retry_us),
                    reset_after: micros(reset_us),
                };
                Some((taken, decision))
            }
            Err(reason) => {
                self.failed(&reason);
                None
            }
        }
    }

    fn failed(&self, reason: &crate::redis_link::RedisLinkError) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(
                %reason,
                "Redis for rate limits is unreachable: each replica now enforces its own share of \
                 the limits (limits / rate_limit.replicas) until Redis is back"
            );
        }
    }

    fn recovered(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "Redis for rate limits is back: limits are shared across replicas again"
            );
        }
    }

    /// Connects now (at start-up), so the first calls already use Redis.
    pub async fn connect(self: &Arc<Self>) {
        self.link.connect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(remaining: u32) -> Decision {
        Decision {
            allowed: true,
            remaining,
            retry_after: Duration::ZERO,
            reset_after: Duration::from_millis(100),
        }
    }

    #[test]
    fn a_low_rate_lease_holds_one_token_and_never_renews_ahead() {
        // 20/s over 20 ms is under one token: every call must ask Redis.
        let lease = Lease::new(
            Policy {
                per_second: 20.0,
                burst: 5,
            },
            2,
        );
        assert_eq!(lease.0.cap, 1);
        assert!(matches!(lease.spend(1), Spent::Empty { wanted: 1 }));
        lease.refill(1, 1, &decision(3));
        assert!(matches!(lease.spend(1), Spent::Empty { wanted: 1 }));
    }

    #[test]
    fn a_busy_lease_asks_for_what_the_last_window_used_and_renews_once_ahead() {
        let lease = Lease::new(
            Policy {
                per_second: 100_000.0,
                burst: 100_000,
            },
            1,
        );
        assert_eq!(lease.0.cap, 2000, "20 ms of 100k/s");
        // First window: nothing leased, each call asks for its own cost.
        for _ in 0..40 {
            assert!(matches!(lease.spend(1), Spent::Empty { wanted: 1 }));
        }
        std::thread::sleep(LEASE_WINDOW);
        let Spent::Empty { wanted } = lease.spend(1) else {
            panic!("the lease is empty")
        };
        assert_eq!(wanted, 40, "the last window used 40 tokens");
        lease.refill(1, wanted, &decision(1000));
        let mut renewals = 0;
        for spent in 0..39 {
            match lease.spend(1) {
                Spent::Served { decision, renew } => {
                    assert_eq!(decision.remaining, 1000 + 38 - spent);
                    renewals += usize::from(renew.is_some());
                }
                Spent::Empty { .. } => panic!("39 leased tokens, call {spent} found none"),
            }
        }
        assert_eq!(renewals, 1, "one renewal ahead of need, not one per call");
        assert!(
            matches!(lease.spend(1), Spent::Empty { .. }),
            "never more than leased"
        );
    }
}

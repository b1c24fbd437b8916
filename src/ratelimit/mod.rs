//! Rate limits, so one noisy script cannot lock every team out of the one Contabo credential
//! they share, and the company as a whole stays under Contabo's own limit.
//!
//! Two layers, both GCRA:
//! - per team (`[[clients]] per_second, burst`), checked when a call is admitted: over the limit
//!   it gets 429 with `retry-after` and never reaches upstream;
//! - the upstream budget (`[rate_limit] upstream_per_second, upstream_burst`), taken by every call
//!   that actually goes to Contabo, with a fair queue ([`budget`]) and a pause after upstream 429s.
//!
//! Locally the buckets are `governor` limiters; with `rate_limit.redis_url` they live in Redis
//! ([`shared`]) so N replicas together keep the limits, and each replica falls back to its own
//! share (limits / `replicas`) while Redis is unreachable.

pub mod budget;
pub mod cost;
pub mod headers;
pub mod local;
pub mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;
use crate::routes::Operation;
use budget::UpstreamBudget;
use cost::RouteCosts;
use shared::SharedStore;

/// A GCRA limit: `per_second` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub per_second: f64,
    pub burst: u32,
}

impl Policy {
    /// Time for one token to come back.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second)
    }

    /// This replica's part of the limit when `replicas` share it without coordination.
    pub fn share(&self, replicas: u32) -> Policy {
        let replicas = replicas.max(1);
        Policy {
            per_second: self.per_second / f64::from(replicas),
            burst: self.burst.div_ceil(replicas).max(1),
        }
    }
}

/// The answer of a bucket to one take.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Tokens left after this take.
    pub remaining: u32,
    /// When refused: how long until the tokens are there.
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset_after: Duration,
}

/// What the pipeline carries from admission to the response: the team's policy and its state.
#[derive(Debug, Clone)]
pub struct Quota {
    pub policy: Policy,
    /// The team's `ratelimit-policy` header value.
    pub policy_header: http::HeaderValue,
    pub decision: Decision,
}

impl Quota {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        let decision = &self.decision;
        headers::apply(
            headers,
            &self.policy_header,
            decision.remaining,
            decision.reset_after,
        );
    }
}

/// Where limits are kept right now, for status and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Off,
    Local,
    Redis,
    /// Redis is configured but unreachable: each replica enforces its share.
    LocalFallback,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Off => "off",
            Backend::Local => "local",
            Backend::Redis => "redis",
            Backend::LocalFallback => "local-fallback",
        }
    }
}

pub struct RateLimits {
    enabled: bool,
    costs: RouteCosts,
    shared: Option<Arc<SharedStore>>,
    budget: Arc<UpstreamBudget>,
    max_wait: Duration,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Result<Self, crate::redis_link::RedisLinkError> {
        let shared = match config.redis_url.as_str() {
            "" => None,
            url => Some(SharedStore::new(url, &config.redis_key_prefix)?),
        };
        let policy = Policy {
            per_second: config.upstream_per_second,
            burst: config.upstream_burst,
        };
        Ok(Self {
            enabled: config.enabled,
            costs: RouteCosts::from_config(&config.route_costs),
            budget: UpstreamBudget::new(policy, shared.clone(), Self::local_share(config)),
            shared,
            max_wait: config.max_wait,
        })
    }

    /// The part of each limit one replica keeps locally: all of it without Redis, 1/replicas of it
    /// as the fallback when the limits live in Redis.
    pub fn local_share(config: &RateLimitConfig) -> u32 {
        if config.redis_url.is_empty() {
            1
        } else {
            config.replicas.max(1)
        }
    }

    pub fn budget(&self) -> &Arc<UpstreamBudget> {
        &self.budget
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    pub fn backend(&self) -> Backend {
        match (&self.shared, self.enabled) {
            (_, false) => Backend::Off,
            (None, true) => Backend::Local,
            (Some(shared), true) if shared.is_healthy() => Backend::Redis,
            (Some(_), true) => Backend::LocalFallback,
        }
    }

    /// Where limits are kept, the upstream budget, its queue and any upstream 429 pause.
    pub fn status(&self) -> serde_json::Value {
        let policy = self.budget.policy();
        serde_json::json!({
            "backend": self.backend().as_str(),
            "upstream_per_second": policy.per_second,
            "upstream_burst": policy.burst,
            "queued": self.budget.queued(),
            "upstream_paused_ms": self.budget.paused_for().map_or(0, |d| d.as_millis() as u64),
        })
    }

    /// Connects to Redis (when configured) before the first call.
    pub async fn connect(&self) {
        if let Some(shared) = &self.shared {
            shared.connect().await;
        }
    }

    /// Tokens a call of `route` costs.
    pub fn cost(&self, route: Option<&'static Operation>) -> u32 {
        self.costs.of(route)
    }

    /// Takes the call's cost from its team's bucket: the quota left (for the response headers), or
    /// 429 `rate_limited`. None when limits are off.
    pub async fn admit(
        &self,
        team: &str,
        limit: &TeamLimit,
        cost: u32,
    ) -> Result<Option<Quota>, Refusal> {
        if !self.enabled {
            return Ok(None);
        }
        let policy = limit.policy_configured;
        let shared = match &self.shared {
            Some(shared) => {
                Box::pin(shared.take_team(&limit.redis_key, &limit.lease, policy, cost)).await
            }
            None => None,
        };
        let decision = shared.unwrap_or_else(|| limit.local.take(cost));
        let quota = Quota {
            policy,
            policy_header: limit.policy_header.clone(),
            decision,
        };
        if quota.decision.allowed {
            Ok(Some(quota))
        } else {
            crate::metrics::team_rate_limited(team);
            Err(Refusal::TeamLimited {
                team: team.to_string(),
                quota: Box::new(quota),
            })
        }
    }

    /// Waits (fairly, at most `max_wait_ms` from `started`) for the upstream budget to pay for
    /// one call; 429 `upstream_budget_exhausted` when it does not come in time. An upstream 429
    /// pause is honoured even with limits off.
    pub async fn upstream_permit(
        &self,
        team: &str,
        cost: u32,
        started: Instant,
    ) -> Result<(), Refusal> {
        let deadline = started + self.max_wait;
        if !self.enabled {
            return match self.budget.paused_for() {
                None => Ok(()),
                Some(pause) if Instant::now() + pause <= deadline => {
                    tokio::time::sleep(pause).await;
                    Ok(())
                }
                Some(pause) => {
                    crate::metrics::upstream_budget_exhausted(team);
                    Err(self.exhausted(pause))
                }
            };
        }
        self.budget
            .acquire(team, cost, deadline)
            .await
            .map_err(|wait| {
                crate::metrics::upstream_budget_exhausted(team);
                self.exhausted(wait)
            })
    }

    fn exhausted(&self, retry_after: Duration) -> Refusal {
        Refusal::BudgetExhausted {
            retry_after,
            max_wait_ms: self.max_wait.as_millis() as u64,
        }
    }
}

/// Why a call may not go on now; the error module turns it into the caller's 429.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The team is over its own limit.
    TeamLimited { team: String, quota: Box<Quota> },
    /// The shared upstream budget had nothing for the call within `max_wait_ms`.
    BudgetExhausted {
        retry_after: Duration,
        max_wait_ms: u64,
    },
}

/// A team's own bucket(s), built with the registry (see [`crate::clients`]).
#[derive(Debug)]
pub struct TeamLimit {
    /// The limit as configured (what the headers advertise).
    pub policy_configured: Policy,
    pub policy_header: http::HeaderValue,
    /// In this process: the whole limit, or this replica's share when Redis holds the real one.
    pub local: local::LocalLimit,
    pub redis_key: String,
    /// Tokens taken from Redis ahead of use (when the limit lives there).
    pub lease: shared::Lease,
}

impl TeamLimit {
    pub fn new(team: &str, policy: Policy, config: &RateLimitConfig) -> Self {
        Self {
            policy_configured: policy,
            policy_header: headers::policy_value(policy),
            local: local::LocalLimit::new(policy.share(RateLimits::local_share(config))),
            redis_key: format!("{}:team:{team}", config.redis_key_prefix),
            lease: shared::Lease::new(policy, RateLimits::local_share(config)),
        }
    }
}

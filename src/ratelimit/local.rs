//! A rate limit kept in this process: GCRA from the `governor` crate, lock-free.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{Decision, Policy};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One GCRA bucket in memory.
pub struct LocalLimit {
    policy: Policy,
    limiter: Limiter,
}

impl std::fmt::Debug for LocalLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimit")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl LocalLimit {
    /// A bucket refilled at `policy.per_second` holding at most `policy.burst` tokens.
    pub fn new(policy: Policy) -> Self {
        let burst = NonZeroU32::new(policy.burst.max(1)).expect("at least 1");
        let period = Duration::from_secs_f64(1.0 / policy.per_second.max(1e-9));
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("a positive period")
            .allow_burst(burst);
        let limiter = RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>();
        Self { policy, limiter }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Takes `cost` tokens if they are all there; otherwise takes none and says when they will be.
    pub fn take(&self, cost: u32) -> Decision {
        let interval = self.policy.interval();
        let Some(n) = NonZeroU32::new(cost.max(1)) else {
            unreachable!("cost is at least 1")
        };
        match self.limiter.check_n(n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    remaining,
                    retry_after: Duration::ZERO,
                    reset_after: interval * (self.policy.burst.saturating_sub(remaining)),
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after: wait,
                    reset_after: wait + interval * self.policy.burst.saturating_sub(cost),
                }
            }
            // More than the whole bucket: it can never pass (configuration prevents this, except
            // in the reduced fallback buckets); say when the bucket is full again.
            Err(_) => Decision {
                allowed: false,
                remaining: 0,
                retry_after: interval * self.policy.burst,
                reset_after: interval * self.policy.burst,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_wait() {
        let limit = LocalLimit::new(Policy {
            per_second: 2.0,
            burst: 3,
        });
        let remaining: Vec<u32> = (0..3).map(|_| limit.take(1).remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = limit.take(1);
        assert!(!refused.allowed);
        assert!(
            refused.retry_after > Duration::from_millis(400)
                && refused.retry_after <= Duration::from_millis(500),
            "{:?}",
            refused.retry_after
        );
    }

    #[test]
    fn a_cost_takes_several_tokens_or_none() {
        let limit = LocalLimit::new(Policy {
            per_second: 1.0,
            burst: 5,
        });
        assert_eq!(limit.take(3).remaining, 2);
        assert!(!limit.take(3).allowed);
        assert!(limit.take(2).allowed);
        assert!(!limit.take(6).allowed, "more than the bucket never passes");
    }
}

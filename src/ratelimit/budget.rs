//! The upstream budget: every call that actually goes to Contabo takes a token from one bucket
//! shared by all teams (and, with Redis, by all replicas).
//!
//! A call that finds the bucket empty waits in a fair queue: one lane per team, served round-robin,
//! so a team flooding the gateway waits behind its own calls while another team's call is served
//! at the next free token. One dispatcher task hands out tokens as they come; a caller gives up at
//! its deadline (`max_wait_ms`). After an upstream 429 every upstream call is held for the time
//! Contabo asked for (or an exponential backoff with jitter when it did not say).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use super::local::LocalLimit;
use super::shared::{Lease, SharedStore};
use super::{Decision, Policy};
use crate::backoff::Backoff;

/// Longest pause after repeated upstream 429s that said nothing about when to retry.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct UpstreamBudget {
    policy: Policy,
    /// The whole budget without Redis; this replica's share of it while Redis is unreachable.
    local: LocalLimit,
    shared: Option<Arc<SharedStore>>,
    lease: Lease,
    queue: Mutex<FairQueue>,
    /// Callers queued or being served by the dispatcher; 0 lets a call take a token directly.
    waiting: AtomicUsize,
    wake: Notify,
    epoch: Instant,
    /// End of the current upstream pause, in milliseconds since `epoch` (0 = none).
    paused_until_ms: AtomicU64,
    /// Upstream 429s in a row without retry-after, for the backoff.
    consecutive_429: AtomicU32,
}

/// What a queued caller is waiting for.
struct Waiter {
    cost: u32,
    grant: oneshot::Sender<()>,
}

/// One FIFO lane per team, the lanes served in turn.
#[derive(Default)]
struct FairQueue {
    lanes: HashMap<Arc<str>, VecDeque<Waiter>>,
    turn: VecDeque<Arc<str>>,
}

impl FairQueue {
    fn push(&mut self, team: &str, waiter: Waiter) {
        match self.lanes.get_mut(team) {
            Some(lane) => lane.push_back(waiter),
            None => {
                let team: Arc<str> = team.into();
                self.turn.push_back(team.clone());
                self.lanes.insert(team, VecDeque::from([waiter]));
            }
        }
    }

    /// The next live waiter in round-robin order (callers that gave up are dropped).
    fn pop(&mut self) -> Option<Waiter> {
        while let Some(team) = self.turn.pop_front() {
            let lane = self.lanes.get_mut(&team)?;
            let waiter = lane.pop_front();
            if lane.is_empty() {
                self.lanes.remove(&team);
            } else {
                self.turn.push_back(team);
            }
            match waiter {
                Some(w) if !w.grant.is_closed() => return Some(w),
                _ => continue,
            }
        }
        None
    }

    fn cost_queued(&self) -> u32 {
        self.lanes
            .values()
            .flat_map(|lane| lane.iter().map(|w| w.cost))
            .sum()
    }
}

impl UpstreamBudget {
    /// `local_share` divides the budget for the fallback when the budget lives in Redis.
    pub fn new(policy: Policy, shared: Option<Arc<SharedStore>>, local_share: u32) -> Arc<Self> {
        Arc::new(Self {
            policy,
            local: LocalLimit::new(policy.share(local_share)),
            shared,
            lease: Lease::new(policy, local_share),
            queue: Mutex::new(FairQueue::default()),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            epoch: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
            consecutive_429: AtomicU32::new(0),
        })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Callers waiting for a token now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits for `cost` tokens until `deadline`. Err holds how long the caller should wait
    /// before trying again.
    pub async fn acquire(&self, team: &str, cost: u32, deadline: Instant) -> Result<(), Duration> {
        if self.waiting.load(Ordering::Acquire) == 0 && self.paused_for().is_none() {
            let decision = self.take(cost).await;
            if decision.allowed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(decision.retry_after);
            }
        }
        if Instant::now() >= deadline {
            // No wait allowed (max_wait_ms = 0): do not hold a place in the queue.
            return Err(self.estimated_wait());
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let (grant, granted) = oneshot::channel();
        self.queue
            .lock()
            .expect("queue lock")
            .push(team, Waiter { cost, grant });
        self.wake.notify_one();
        let outcome = tokio::time::timeout_at(deadline.into(), granted).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(Ok(())) => Ok(()),
            _ => Err(self.estimated_wait()),
        }
    }

    /// How long the tokens already asked for take to come, and at least the current pause.
    fn estimated_wait(&self) -> Duration {
        let queued = self.queue.lock().expect("queue lock").cost_queued().max(1);
        let refill = self.policy.interval() * queued;
        refill.max(self.paused_for().unwrap_or_default())
    }

    /// Takes tokens from Redis when it answers, else from the local bucket.
    async fn take(&self, cost: u32) -> Decision {
        if let Some(shared) = &self.shared
            && let Some(decision) =
                Box::pin(shared.take_upstream(&self.lease, self.policy, cost)).await
        {
            return decision;
        }
        self.local.take(cost)
    }

    /// Hands tokens to queued callers as the bucket refills. Runs as long as the gateway.
    pub async fn run_dispatcher(self: Arc<Self>) {
        loop {
            let next = self.queue.lock().expect("queue lock").pop();
            let Some(waiter) = next else {
                self.wake.notified().await;
                continue;
            };
            loop {
                if waiter.grant.is_closed() {
                    break;
                }
                if let Some(pause) = self.paused_for() {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                let decision = self.take(waiter.cost).await;
                if decision.allowed {
                    let _ = waiter.grant.send(());
                    break;
                }
                tokio::time::sleep(decision.retry_after.max(Duration::from_millis(1))).await;
            }
        }
    }

    /// How long upstream calls are still held after an upstream 429, if they are.
    pub fn paused_for(&self) -> Option<Duration> {
        let until = self.paused_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        // Against the exact time: whole milliseconds on both sides could make what is left of a
        // pause up to 1 ms longer than the pause itself (a flaky test saw it).
        let (until, now) = (Duration::from_millis(until), self.epoch.elapsed());
        (until > now).then(|| until - now)
    }

    /// Contabo answered 429: hold every upstream call for `retry_after`, or for an exponential
    /// backoff with jitter when it gave none. Returns the pause. The concurrent 429s of one burst
    /// (answers that arrive while the pause of the first is still on) make one pause: the backoff
    /// grows only for a 429 that arrives after the previous pause ended.
    pub async fn upstream_limited(&self, retry_after: Option<Duration>) -> Duration {
        let pause = match retry_after {
            Some(wait) => wait,
            None if let Some(left) = self.paused_for() => return left,
            None => {
                let earlier = self.consecutive_429.fetch_add(1, Ordering::AcqRel);
                Backoff::up_to(MAX_BACKOFF).jittered_after(earlier.saturating_add(1))
            }
        };
        let until = (self.epoch.elapsed() + pause).as_millis() as u64;
        self.paused_until_ms.fetch_max(until, Ordering::AcqRel);
        crate::metrics::upstream_paused(pause);
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "Contabo answered 429: every upstream call is held for the pause"
        );
        if let Some(shared) = &self.shared {
            shared.pause_upstream(pause).await;
        }
        pause
    }

    /// Contabo answered something other than 429: the backoff starts again from 1 s.
    pub fn upstream_answered(&self) {
        if self.consecutive_429.load(Ordering::Relaxed) != 0 {
            self.consecutive_429.store(0, Ordering::Release);
        }
    }

    #[cfg(test)]
    fn remaining_now(&self) -> Decision {
        self.local.take(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_second: f64, burst: u32) -> Arc<UpstreamBudget> {
        UpstreamBudget::new(Policy { per_second, burst }, None, 1)
    }

    #[tokio::test]
    async fn round_robin_across_teams() {
        let budget = budget(50.0, 1);
        let dispatcher = tokio::spawn(budget.clone().run_dispatcher());
        let _ = budget.remaining_now(); // empty the bucket so everyone queues
        let (flood, quiet) = ("flood", "quiet");
        let deadline = Instant::now() + Duration::from_secs(5);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut calls = Vec::new();
        for i in 0..10 {
            let (budget, order, team) = (budget.clone(), order.clone(), flood);
            calls.push(tokio::spawn(async move {
                budget.acquire(team, 1, deadline).await.unwrap();
                order.lock().unwrap().push(format!("flood{i}"));
            }));
            tokio::task::yield_now().await;
        }
        let (b, o) = (budget.clone(), order.clone());
        calls.push(tokio::spawn(async move {
            b.acquire(quiet, 1, deadline).await.unwrap();
            o.lock().unwrap().push("quiet".into());
        }));
        for call in calls {
            call.await.unwrap();
        }
        dispatcher.abort();
        let order = order.lock().unwrap();
        let quiet_at = order.iter().position(|c| c == "quiet").unwrap();
        assert!(
            quiet_at <= 2,
            "the quiet team waited behind the flood: {order:?}"
        );
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_a_wait() {
        let budget = budget(1.0, 1);
        let dispatcher = tokio::spawn(budget.clone().run_dispatcher());
        let team = "t";
        let soon = || Instant::now() + Duration::from_millis(100);
        assert!(budget.acquire(team, 1, soon()).await.is_ok());
        let wait = budget.acquire(team, 1, soon()).await.unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        dispatcher.abort();
    }

    #[tokio::test]
    async fn backoff_without_retry_after_grows() {
        let budget = budget(100.0, 10);
        let first = budget.upstream_limited(None).await;
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        // Another 429 of the same burst, during the pause: the same pause, not a longer one.
        let same_burst = budget.upstream_limited(None).await;
        assert!(same_burst <= first);
        assert_eq!(budget.consecutive_429.load(Ordering::Relaxed), 1);
        // A 429 after the pause ended: the pause doubles.
        budget.paused_until_ms.store(0, Ordering::Release);
        let second = budget.upstream_limited(None).await;
        assert!(second >= Duration::from_secs(1) && second <= Duration::from_secs(2));
        assert!(budget.paused_for().is_some());
        budget.upstream_answered();
        assert_eq!(budget.consecutive_429.load(Ordering::Relaxed), 0);
    }
}

//! The gateway's one exponential backoff: 1 s, 2 s, 4 s ... doubling with each failure in a row, up
//! to a cap. The token manager waits it between grant attempts; the upstream budget pauses for it
//! (jittered, so replicas do not retry in step) after a 429 that named no wait.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    cap: Duration,
}

impl Backoff {
    pub const fn up_to(cap: Duration) -> Self {
        Self { cap }
    }

    /// The wait after the `failures`-th failure in a row (1 for the first).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        Duration::from_secs(1u64 << doublings).min(self.cap)
    }

    /// [`Backoff::after`] shortened by a random share of up to half.
    pub fn jittered_after(&self, failures: u32) -> Duration {
        self.after(failures).mul_f64(rand::random_range(0.5..1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff::up_to(Duration::from_secs(4));
        let steps: Vec<u64> = (1..=5).map(|n| backoff.after(n).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 4, 4]);
        assert_eq!(backoff.after(0), Duration::from_secs(1));
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(4));
        let jittered = backoff.jittered_after(2);
        assert!(jittered >= Duration::from_secs(1) && jittered <= Duration::from_secs(2));
    }
}

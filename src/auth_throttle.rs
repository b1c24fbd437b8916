//! Throttling of key guessing: a client address that got `server.auth_failures_per_minute` 401s
//! within a minute gets 429 with `retry-after` for every call until that minute is over, whatever
//! key it presents (a valid key answered differently would tell a guesser it found one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::GatewayError;

const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at most; beyond it, windows that are over are dropped first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

#[derive(Debug)]
pub struct AuthThrottle {
    limit: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
    /// Addresses with a window: when none has one (nearly always), no lock is taken.
    tracked: AtomicUsize,
}

impl AuthThrottle {
    /// `limit` 401s a minute per address; 0 turns the throttle off.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Refuses a call from an address over its limit, with the seconds until its minute is over.
    pub fn check(&self, address: Option<IpAddr>) -> Result<(), GatewayError> {
        let Some(address) = address else {
            return Ok(());
        };
        if self.limit == 0 || self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let windows = self.windows.lock().expect("auth throttle lock");
        match windows.get(&address) {
            Some(window) if window.failures >= self.limit => {
                let left = WINDOW.saturating_sub(window.started.elapsed());
                if left.is_zero() {
                    return Ok(());
                }
                Err(GatewayError::AuthThrottled {
                    retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a 401 given to `address`.
    pub fn failed(&self, address: Option<IpAddr>) {
        let Some(address) = address else {
            return;
        };
        if self.limit == 0 {
            return;
        }
        let mut windows = self.windows.lock().expect("auth throttle lock");
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, w| w.started.elapsed() < WINDOW);
        }
        let window = windows.entry(address).or_insert(Window {
            started: Instant::now(),
            failures: 0,
        });
        if window.started.elapsed() >= WINDOW {
            *window = Window {
                started: Instant::now(),
                failures: 0,
            };
        }
        window.failures += 1;
        self.tracked.store(windows.len(), Ordering::Relaxed);
    }

    /// Drops the windows that are over (called now and then, so the map does not keep addresses
    /// that stopped failing).
    pub fn prune(&self) {
        let mut windows = self.windows.lock().expect("auth throttle lock");
        windows.retain(|_, w| w.started.elapsed() < WINDOW);
        self.tracked.store(windows.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_limit_is_refused_and_others_are_not() {
        let throttle = AuthThrottle::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.check(Some(a)).is_ok());
            throttle.failed(Some(a));
        }
        match throttle.check(Some(a)) {
            Err(GatewayError::AuthThrottled { retry_after_secs }) => {
                assert!((59..=60).contains(&retry_after_secs))
            }
            other => panic!("{other:?}"),
        }
        assert!(throttle.check(Some(b)).is_ok());
        assert!(AuthThrottle::new(0).check(Some(a)).is_ok());
    }
}

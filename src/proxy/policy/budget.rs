//! The retry budget (Envoy's): retries that may add work to the backends stay
//! under `retry.budget` of the requests of the last 10 s, and at least 3 a
//! second are always allowed, so a quiet service still retries. A fleet that
//! is failing then gets at most 1.2× its load, not the 3× that
//! `retry.attempts = 3` would send. Retries after an attempt that did no
//! work on a live backend (connection refused, connect timeout, closed before
//! a response head — a backend that is gone — or lb's own shortage) are not
//! charged: they are how a request finds a live backend while health checks
//! catch up. Timeouts, malformed answers and retry statuses are charged.
//!
//! Lock-free and approximate: ten one-second slots of atomic counters, a slot
//! reset when a new second claims it (an increment racing a reset may be
//! lost, which only makes the budget a little more generous or strict for a
//! moment).

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds in the window.
const WINDOW: u64 = 10;
/// Retries always allowed per second of the window.
const MIN_PER_SECOND: u64 = 3;

#[derive(Default)]
struct Slot {
    /// The second this slot counts (since the clock's origin), plus one (0 = unused).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Requests and retries over the last [`WINDOW`] seconds.
#[derive(Default)]
pub struct RetryBudget {
    slots: [Slot; WINDOW as usize],
}

impl RetryBudget {
    /// The slot counting second `now`, reset if it last counted an older one.
    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.slots[(now % WINDOW) as usize];
        let stamp = now + 1;
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != stamp
            && slot
                .second
                .compare_exchange(seen, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a new request at second `now`.
    pub fn request(&self, now: u64) {
        self.slot(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// May a retry go at second `now` under `budget`? Counts it if so.
    pub fn try_retry(&self, budget: f64, now: u64) -> bool {
        let current = self.slot(now);
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let second = s.second.load(Ordering::Relaxed);
            if second != 0 && second + WINDOW > now + 1 {
                requests += s.requests.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = ((requests as f64 * budget) as u64).max(MIN_PER_SECOND * WINDOW);
        if retries >= allowed {
            return false;
        }
        current.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The process's budget (one per process, as the backends are shared).
pub static RETRY_BUDGET: std::sync::LazyLock<RetryBudget> =
    std::sync::LazyLock::new(RetryBudget::default);

/// The current second for the budget.
pub fn now() -> u64 {
    crate::clock::ms(std::time::Instant::now()) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_under_the_budget_with_a_floor() {
        let b = RetryBudget::default();
        // 1,000 requests a second for 10 s at 20 %: 2,000 retries over the
        // window, then no more until old seconds leave it.
        for s in 0..10 {
            for _ in 0..1000 {
                b.request(s);
            }
        }
        let granted = (0..5000).filter(|_| b.try_retry(0.2, 9)).count();
        assert_eq!(granted, 2000);
        // A quiet service: the floor of 3 a second over the window.
        let quiet = RetryBudget::default();
        quiet.request(100);
        let granted = (0..100).filter(|_| quiet.try_retry(0.2, 100)).count();
        assert_eq!(granted, 30);
        // Ten seconds later the window has moved on.
        assert!(quiet.try_retry(0.2, 111));
        // Budget 0: only the floor.
        let zero = RetryBudget::default();
        for _ in 0..1000 {
            zero.request(5);
        }
        assert_eq!((0..100).filter(|_| zero.try_retry(0.0, 5)).count(), 30);
    }
}

//! A process-wide time origin so lock-free state can store instants as integers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // An hour before first use, so that instants taken just before the first
    // call (a test's `now`, a request's start) still map to distinct values
    // instead of all saturating to 0.
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// A log line rate-limited to one a second across threads: true for the
/// caller whose turn it is, `last` holding when the last one was allowed
/// (ms since the process epoch; start it at 0).
pub fn once_a_second(last: &AtomicU64) -> bool {
    // +1: the first call is allowed even within the epoch's first second.
    let now = ms(Instant::now()) + 1_000;
    let prev = last.load(Ordering::Relaxed);
    now.saturating_sub(prev) >= 1_000
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Milliseconds from the process epoch to `now` (0 for instants before it).
pub fn ms(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_before_first_use_keep_their_distance() {
        let t = Instant::now();
        let later = t + Duration::from_millis(1500);
        assert_eq!(ms(later) - ms(t), 1500);
    }
}

//! A process-wide time origin so lock-free state can store instants as integers.

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds from the process epoch to `now` (0 for instants before it).
pub fn ms(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64
}

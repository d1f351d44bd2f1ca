//! In-flight accounting and per-backend capacity: the RAII slot a request
//! holds on its backend while an attempt is under way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Backend, BackendStats};
use crate::queue::Queue;

/// RAII in-flight accounting: increments on creation, decrements on drop, so the
/// count stays right on success, error, retry, client disconnect and panic. For
/// a backend with a `max_in_flight` the slot is taken by compare-and-swap, so
/// the limit holds however many requests race for the last slot, and dropping
/// the guard wakes the oldest queued request ([`Queue::kick`]).
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<BackendStats>,
    /// Set for capacity-limited backends only: whom a freed slot concerns.
    queue: Option<Arc<Queue>>,
}

impl InFlight {
    /// Counts one more request in flight on `stats` (no limit).
    pub fn start(stats: &Arc<BackendStats>) -> InFlight {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: stats.clone(),
            queue: None,
        }
    }

    /// Takes one of `backend`'s slots if it has one free (always, without a
    /// `max_in_flight`); `None` when it is at capacity.
    pub fn acquire(backend: &Backend, queue: &Arc<Queue>) -> Option<InFlight> {
        let max = i64::from(backend.max_in_flight);
        if max == 0 {
            return Some(InFlight::start(&backend.stats));
        }
        let counter = &backend.stats.in_flight;
        let mut cur = counter.load(Ordering::Relaxed);
        while cur < max {
            // SeqCst pairs with the queue's `waiting` counter (see `Drop`).
            match counter.compare_exchange_weak(cur, cur + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(InFlight {
                        stats: backend.stats.clone(),
                        queue: Some(queue.clone()),
                    })
                }
                Err(now) => cur = now,
            }
        }
        None
    }

    /// The backend this guard counts against.
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The decrement is ordered before the queue's `waiting` load: either
        // this release sees a waiter and wakes it, or a request joining the
        // queue afterwards sees the free slot when its join re-checks.
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            q.kick();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, AtomicU64};

    use super::*;
    use crate::config::Config;
    use crate::state::State;

    #[test]
    fn slots_never_exceed_max_in_flight_under_races() {
        // 8 threads hammer one backend with max_in_flight = 3. Every count
        // read while holding a slot includes this thread's own slot and only
        // other slots held at that moment, so it must never exceed 3.
        let text = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nmax_in_flight = 3\n";
        let s = Arc::new(State::new(Arc::new(Config::from_toml(text).unwrap())));
        let peak = Arc::new(AtomicI64::new(0));
        let won = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, peak, won) = (s.clone(), peak.clone(), won.clone());
                std::thread::spawn(move || {
                    let snap = s.load_full();
                    let b = &snap.backends[0];
                    for _ in 0..20_000 {
                        if let Some(slot) = InFlight::acquire(b, &s.queue) {
                            peak.fetch_max(b.stats.in_flight(), Ordering::Relaxed);
                            won.fetch_add(1, Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = s.load();
        assert_eq!(snap.backends[0].stats.in_flight(), 0);
        assert!(peak.load(Ordering::Relaxed) <= 3, "peak {peak:?}");
        assert!(won.load(Ordering::Relaxed) > 0);
        // Unlimited backends always get a slot and are never "full".
        let text = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n";
        let s = State::new(Arc::new(Config::from_toml(text).unwrap()));
        let snap = s.load_full();
        let slots: Vec<_> = (0..100)
            .map(|_| InFlight::acquire(&snap.backends[0], &s.queue).unwrap())
            .collect();
        assert_eq!((snap.full(), snap.backends[0].stats.in_flight()), (0, 100));
        drop(slots);
    }
}

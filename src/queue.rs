//! The FIFO queue where a request waits when every backend it could use is at its
//! `max_in_flight` (SPEC "Per-backend capacity and the queue").
//!
//! The queue only orders *who tries next*; the capacity itself is the backends'
//! in-flight counters, taken by compare-and-swap in the proxy's selection step, so
//! no backend ever exceeds its limit whatever the queue does. The protocol:
//!
//! - A request that found every eligible backend full [`Queue::join`]s at the back.
//!   While anyone waits, newcomers join too instead of trying first, so a freed
//!   slot goes to the oldest waiter (arrival order), not to whoever is fastest.
//! - A finished request ([`crate::state::InFlight`] dropped) calls [`Queue::kick`]:
//!   the oldest waiter not already woken is woken and runs selection again. If it
//!   gets a slot it leaves, and its leaving wakes the next one (there may be more
//!   room); if it lost the slot to a race it [`Ticket::rearm`]s, keeping its place.
//! - Joining also kicks: a slot freed between "everything is full" and joining
//!   would otherwise wake nobody (the releaser saw an empty queue).
//! - Room can also appear without a release (a backend turning healthy, a circuit
//!   turning half-open, a reload raising a limit): the waiter at the front
//!   re-checks every [`RECHECK`] on its own.
//!
//! The mutex guards only the waiter list and is taken only while someone waits
//! or a request joins; the uncontended hot path reads one atomic ([`Queue::waiting`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};
use tokio::sync::Notify;
// tokio's clock (the same as std's unless a test pauses it), so waits and
// deadlines are testable with a paused clock.
use tokio::time::Instant;

/// How often the waiter at the front re-checks for room that appeared without
/// a release waking it (see the module docs). Releases wake at once.
pub const RECHECK: Duration = Duration::from_millis(100);

/// `lb_queue_wait_seconds` buckets: 1 ms to the 60 s a very patient
/// `queue.timeout` might allow; most waits are a few milliseconds.
pub const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Why a request left the queue without a backend
/// (`lb_queue_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `queue.size` requests were already waiting (or `size = 0`).
    Full = 0,
    /// It waited `queue.timeout` without a slot freeing.
    Timeout = 1,
}

impl Rejected {
    /// Both reasons, in label order.
    pub const ALL: [Rejected; 2] = [Rejected::Full, Rejected::Timeout];

    /// The `reason` label, also the error message's detail.
    pub fn as_str(self) -> &'static str {
        ["full", "timeout"][self as usize]
    }
}

struct Waiter {
    id: u64,
    notify: Arc<Notify>,
    /// Woken and not yet back to waiting: a kick skips it.
    woken: bool,
}

#[derive(Default)]
struct Waiters {
    next_id: u64,
    list: VecDeque<Waiter>,
}

impl Waiters {
    /// Wakes the oldest waiter not already woken.
    fn wake_oldest(&mut self) {
        self.wake_first(0);
    }

    /// Wakes the oldest waiter not already woken from position `from` on.
    fn wake_first(&mut self, from: usize) {
        if let Some(w) = self.list.iter_mut().skip(from).find(|w| !w.woken) {
            w.woken = true;
            // Stores a permit if the waiter is not polling yet: never lost.
            w.notify.notify_one();
        }
    }
}

/// The queue of one lb process (shared by both request paths).
pub struct Queue {
    /// Requests in the queue: read lock-free on every request.
    waiting: AtomicUsize,
    /// Id of the waiter at the front (`u64::MAX` when empty), for [`RECHECK`].
    front: AtomicU64,
    waiters: Mutex<Waiters>,
    /// `lb_queue_wait_seconds`: time spent queued by every request that queued.
    wait: Histogram,
    /// `lb_queue_rejected_total` by [`Rejected`].
    rejected: [AtomicU64; 2],
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Default for Queue {
    fn default() -> Self {
        let opts = HistogramOpts::new(
            "lb_queue_wait_seconds",
            "Time requests spent in the queue, whether served or timed out",
        )
        .buckets(WAIT_BUCKETS.to_vec());
        Queue {
            waiting: AtomicUsize::new(0),
            front: AtomicU64::new(u64::MAX),
            waiters: Mutex::default(),
            // Constant name and strictly increasing buckets: cannot fail (tested).
            wait: Histogram::with_opts(opts).expect("constant histogram options are valid"),
            rejected: Default::default(),
        }
    }
}

impl Queue {
    /// Requests waiting now (`lb_queue_depth`).
    #[inline]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // The list stays consistent under a panic (every edit is one call).
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_front(&self, w: &Waiters) {
        let id = w.list.front().map_or(u64::MAX, |f| f.id);
        self.front.store(id, Ordering::Relaxed);
    }

    /// Joins at the back, unless `size` requests already wait (then counts a
    /// `full` rejection and returns `None`). `now` starts the wait.
    pub fn join(&self, size: usize, now: Instant) -> Option<Ticket<'_>> {
        let mut w = self.lock();
        if w.list.len() >= size {
            drop(w);
            self.reject(Rejected::Full);
            return None;
        }
        let id = w.next_id;
        w.next_id += 1;
        let notify = Arc::new(Notify::new());
        w.list.push_back(Waiter {
            id,
            notify: notify.clone(),
            woken: false,
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.set_front(&w);
        // A slot freed just before `waiting` went up woke nobody: let the
        // oldest waiter (perhaps this one) look again.
        w.wake_oldest();
        Some(Ticket {
            queue: self,
            id,
            notify,
            since: now,
            pass_on: false,
        })
    }

    /// A slot may have freed: wakes the oldest waiter that is not already
    /// awake. One atomic load when nobody waits.
    #[inline]
    pub fn kick(&self) {
        if self.waiting() > 0 {
            self.lock().wake_oldest();
        }
    }

    /// Counts a rejection.
    pub fn reject(&self, why: Rejected) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections so far for `why`.
    pub fn rejected(&self, why: Rejected) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    /// The wait histogram (for `/metrics`).
    pub fn wait_histogram(&self) -> &Histogram {
        &self.wait
    }
}

/// What ended one [`Ticket::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken (a slot may have freed), or the front's periodic re-check: try now.
    Try,
    /// The deadline passed.
    TimedOut,
}

/// A place in the queue; leaving it (drop) removes it, and if it had been
/// woken passes the wake on to the next waiter.
pub struct Ticket<'a> {
    queue: &'a Queue,
    id: u64,
    notify: Arc<Notify>,
    /// When it joined.
    pub since: Instant,
    /// Wake the next waiter on leaving even if this one was not woken.
    pass_on: bool,
}

impl Ticket<'_> {
    /// Waits until woken, until the front's re-check is due, or until `deadline`.
    pub async fn wait(&self, deadline: Instant) -> Wake {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Wake::TimedOut;
            }
            let until = deadline.min(now + RECHECK);
            match tokio::time::timeout_at(until, self.notify.notified()).await {
                Ok(()) => return Wake::Try,
                // Only the front re-checks on its own: order stays FIFO.
                Err(_) if self.queue.front.load(Ordering::Relaxed) == self.id => return Wake::Try,
                Err(_) => {}
            }
        }
    }

    /// Tried and found no room: waits again at the same place. `pass_on`:
    /// the wake may have been for a slot this request cannot use (it avoids
    /// some backends), so the next waiter gets it.
    pub fn rearm(&self, pass_on: bool) {
        let mut w = self.queue.lock();
        if let Some(pos) = w.list.iter().position(|x| x.id == self.id) {
            w.list[pos].woken = false;
            if pass_on {
                w.wake_first(pos + 1);
            }
        }
    }

    /// Leaves having got a backend: records the wait and wakes the next
    /// waiter (there may be more room).
    pub fn served(mut self, now: Instant) {
        self.queue.wait.observe(self.waited(now));
        self.pass_on = true;
    }

    /// Leaves after `queue.timeout`: records the wait and the rejection.
    pub fn timed_out(self, now: Instant) {
        self.queue.wait.observe(self.waited(now));
        self.queue.reject(Rejected::Timeout);
    }

    fn waited(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.since).as_secs_f64()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut w = self.queue.lock();
        if let Some(pos) = w.list.iter().position(|x| x.id == self.id) {
            let me = w.list.remove(pos);
            self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
            self.queue.set_front(&w);
            // A woken waiter that leaves may have been handed the last wake of
            // a release (or got a slot with more room behind it): pass it on.
            if self.pass_on || me.is_some_and(|m| m.woken) {
                w.wake_oldest();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn woken(t: &Ticket<'_>) -> bool {
        let w = t.queue.lock();
        w.list.iter().any(|x| x.id == t.id && x.woken)
    }

    #[test]
    fn full_queue_rejects_and_counts() {
        let q = Queue::default();
        let now = Instant::now();
        let a = q.join(2, now).unwrap();
        let _b = q.join(2, now).unwrap();
        assert!(q.join(2, now).is_none());
        assert_eq!(q.rejected(Rejected::Full), 1);
        assert_eq!(q.waiting(), 2);
        drop(a);
        assert_eq!(q.waiting(), 1);
        // size 0: no queue at all.
        assert!(Queue::default().join(0, now).is_none());
    }

    #[test]
    fn kicks_wake_in_arrival_order_one_at_a_time() {
        let q = Queue::default();
        let now = Instant::now();
        // Joining wakes the oldest not-yet-woken waiter: the first join wakes
        // itself (it re-checks for a slot freed meanwhile), the second wakes
        // nobody new until the first went back to waiting.
        let a = q.join(10, now).unwrap();
        assert!(woken(&a));
        a.rearm(false);
        let b = q.join(10, now).unwrap();
        assert!(woken(&a) && !woken(&b), "b's join re-woke the oldest, a");
        a.rearm(false);
        let c = q.join(10, now).unwrap();
        a.rearm(false);
        q.kick();
        assert!(woken(&a) && !woken(&b) && !woken(&c));
        q.kick();
        assert!(woken(&b) && !woken(&c), "second kick: next in order");
        // b cannot use the slot (it avoids some backends): c gets the wake.
        b.rearm(true);
        assert!(!woken(&b) && woken(&c), "b passed its wake on to c");
        // c found no room for anyone: it does not pass anything on.
        c.rearm(false);
        assert!(!woken(&b) && !woken(&c));
        // a is served: leaving, it wakes the oldest waiter not awake, b.
        a.served(now);
        assert!(woken(&b) && !woken(&c));
        assert_eq!(q.front.load(Ordering::Relaxed), b.id);
        assert_eq!(q.wait_histogram().get_sample_count(), 1);
        c.timed_out(now);
        assert_eq!(q.rejected(Rejected::Timeout), 1);
        drop(b);
        assert_eq!(q.waiting(), 0);
        assert_eq!(q.front.load(Ordering::Relaxed), u64::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_ends_on_kick_recheck_or_deadline() {
        let q = Queue::default();
        let start = Instant::now();
        let a = q.join(10, start).unwrap();
        // Its own join woke it.
        assert_eq!(a.wait(start + Duration::from_secs(1)).await, Wake::Try);
        a.rearm(false);
        let b = q.join(10, start).unwrap();
        // b's join woke a again (a stored permit: its next wait returns at once).
        assert_eq!(a.wait(start + Duration::from_secs(1)).await, Wake::Try);
        a.rearm(false);
        // b is not at the front and nobody kicks: it sleeps until its deadline
        // (the paused clock jumps from timer to timer).
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(350);
        assert_eq!(b.wait(soon).await, Wake::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(350));
        // a is at the front: it re-checks after RECHECK without a kick.
        let t1 = Instant::now();
        let later = t1 + Duration::from_secs(1);
        assert_eq!(a.wait(later).await, Wake::Try);
        // Exactly RECHECK, but for tokio's timer wheel rounding a deadline up
        // to its next millisecond tick.
        let took = t1.elapsed();
        assert!(took >= RECHECK && took <= RECHECK + Duration::from_millis(1));
        // Once a leaves, a kick wakes b.
        drop(a);
        q.kick();
        assert_eq!(b.wait(later).await, Wake::Try);
    }
}

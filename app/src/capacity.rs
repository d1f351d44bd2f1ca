//! The worker-pool capacity model (`--workers N --service-time-ms S`): each
//! `/api/*` request needs one of `N` workers for `S`, and requests that find
//! every worker busy wait in a FIFO queue. The app therefore serves at most
//! `N / S` requests per second however fast the host is, which is what lets the
//! scenarios (`make scenarios`) give backends different *capacities* on one
//! small machine: the service time is a timer, not CPU work, so four apps of
//! different sizes share two cores without the cores becoming the bottleneck.
//!
//! Queueing theory in one line: with arrivals below `N / S` the queue stays
//! short and latency ≈ `S`; above it the queue (and latency) grows without bound
//! until clients give up, exactly like a thread-pool server that is too small.
//!
//! The service time can change at run time (`PUT /fault {"service_time_ms"}`),
//! e.g. to model a container slowed by memory pressure; the worker count is
//! fixed at start.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Workers and service time of one app.
pub(crate) struct Capacity {
    /// `Some` in worker-pool mode. Tokio's semaphore is fair: permits go out in
    /// the order they were asked for, so the queue is FIFO.
    workers: Option<Arc<Semaphore>>,
    size: usize,
    service_ns: AtomicU64,
    /// Requests waiting for a worker right now.
    queued: AtomicU64,
}

/// Decrements a counter on drop, so a request whose client went away while it
/// waited (its future dropped) leaves the queue count right.
struct Count<'a>(&'a AtomicU64);

impl<'a> Count<'a> {
    fn enter(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Count(c)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Capacity {
    /// `workers: None` means no pool (every request is served at once, after
    /// the service time if one is set).
    pub(crate) fn new(workers: Option<usize>, service_time: Duration) -> Self {
        let c = Capacity {
            workers: workers.map(|n| Arc::new(Semaphore::new(n))),
            size: workers.unwrap_or(0),
            service_ns: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        };
        c.set_service_time(service_time);
        c
    }

    /// Runs `work` on a worker: waits for a free one (FIFO), holds it for the
    /// service time and while `work` runs.
    pub(crate) async fn serve<F: Future>(&self, work: F) -> F::Output {
        let _permit = match &self.workers {
            Some(pool) => {
                let _waiting = Count::enter(&self.queued);
                // The semaphore is never closed, so this cannot fail.
                Arc::clone(pool).acquire_owned().await.ok()
            }
            None => None,
        };
        let service = self.service_time();
        if !service.is_zero() {
            tokio::time::sleep(service).await;
        }
        work.await
    }

    /// Is there anything to model (a pool or a service time)?
    pub(crate) fn is_active(&self) -> bool {
        self.workers.is_some() || !self.service_time().is_zero()
    }

    pub(crate) fn set_service_time(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.service_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn service_time(&self) -> Duration {
        Duration::from_nanos(self.service_ns.load(Ordering::Relaxed))
    }

    /// Worker count (0 without a pool).
    pub(crate) fn workers(&self) -> usize {
        self.size
    }

    /// Requests waiting for a worker.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Workers busy now.
    pub(crate) fn busy(&self) -> usize {
        self.workers
            .as_ref()
            .map_or(0, |s| self.size - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// 6 requests, 2 workers, 30 ms each: at most 2 in service at any moment,
    /// served in arrival order, and the batch cannot finish in under 3 rounds
    /// of the service time (a lower bound only: a busy machine is slower, never
    /// faster).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_n_in_service_in_fifo_order() {
        let cap = Arc::new(Capacity::new(Some(2), Duration::from_millis(30)));
        let busy = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (cap, busy, peak, order) = (cap.clone(), busy.clone(), peak.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                cap.serve(async {
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    order.lock().unwrap().push(i);
                    busy.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
            // Arrivals 2 ms apart so "arrival order" is well defined.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert!(start.elapsed() >= Duration::from_millis(90));
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(cap.queued(), 0);
        assert_eq!(cap.busy(), 0);
    }

    #[tokio::test]
    async fn queue_count_survives_a_cancelled_wait() {
        let cap = Arc::new(Capacity::new(Some(1), Duration::from_millis(200)));
        let holder = tokio::spawn({
            let cap = cap.clone();
            async move { cap.serve(async {}).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(cap.busy(), 1);
        // A second request waits, then its client goes away.
        let waited = tokio::time::timeout(Duration::from_millis(20), cap.serve(async {})).await;
        assert!(waited.is_err());
        assert_eq!(cap.queued(), 0);
        holder.await.unwrap();
    }

    #[test]
    fn without_a_pool_nothing_is_modelled() {
        let c = Capacity::new(None, Duration::ZERO);
        assert!(!c.is_active());
        assert_eq!((c.workers(), c.busy(), c.queued()), (0, 0, 0));
        c.set_service_time(Duration::from_millis(5));
        assert!(c.is_active());
        assert_eq!(c.service_time(), Duration::from_millis(5));
    }
}

//! Admission, shared by both request paths: choosing a backend and taking one of
//! its in-flight slots now, or a place in lb's FIFO queue until one has room
//! (SPEC "Per-backend capacity and the queue"). Every attempt goes through
//! here, so a retry may queue too.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::Ctx;
use crate::queue::{Queue, Rejected, Wake};
use crate::state::{InFlight, Local, Snapshot, State};
use crate::sticky::{self, Choice};

/// Why a request got no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing could take it (down, open circuit, maintenance, weight 0).
    NoBackend,
    /// Every backend it could use was full, and the queue was full or the
    /// wait reached `queue.timeout`: `503` with `Retry-After: 1`.
    Queue(Rejected),
    /// The client went away while queued.
    ClientGone,
}

impl Refusal {
    /// The error message of lb's own `503`.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NoBackend => "no eligible backend",
            Refusal::Queue(Rejected::Full) => "queue full",
            Refusal::Queue(Rejected::Timeout) => "queue timeout",
            Refusal::ClientGone => "client closed",
        }
    }
}

impl Refusal {
    /// The status lb answers with (`499`: nobody to answer, logged only).
    pub fn status(self) -> u16 {
        match self {
            Refusal::ClientGone => 499,
            _ => 503,
        }
    }
}

/// The client IP as hash key bytes (4 or 16), written into `buf`.
pub fn ip_key(ip: Option<IpAddr>, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        Some(IpAddr::V4(a)) => {
            buf[..4].copy_from_slice(&a.octets());
            &buf[..4]
        }
        Some(IpAddr::V6(a)) => {
            *buf = a.octets();
            &buf[..]
        }
        None => &[],
    }
}

/// What one selection found.
enum Selected {
    /// A backend, with its in-flight slot (`ctx.in_flight`) and breaker permit
    /// (`ctx.permit`) taken.
    Chosen(Choice),
    /// Backends this request could use exist, but every one is at its
    /// `max_in_flight`: the request may queue.
    Full,
    /// No backend could take it even with room.
    Nothing,
}

/// Chooses a backend whose circuit admits the request and takes one of its
/// in-flight slots: stickiness (`sticky` is the request's
/// [`sticky::sticky_value`]), then the algorithm; a backend not yet tried when
/// one exists, else any eligible one. Backends at capacity are left out (and
/// one that fills up between the choice and the slot's compare-and-swap is
/// left out on the next round), so none ever exceeds its `max_in_flight`.
fn select(queue: &Arc<Queue>, snap: &Snapshot, sticky: Option<&[u8]>, ctx: &mut Ctx) -> Selected {
    let now = Instant::now();
    let mut buf = [0u8; 16];
    let key = ip_key(ctx.client_ip, &mut buf);
    let cb = &snap.config.circuit_breaker;
    let mut full = snap.full();
    // A first attempt may use any backend; a retry prefers those not tried yet.
    let passes: &[bool] = if ctx.attempts == 0 {
        &[false]
    } else {
        &[true, false]
    };
    for &skip_tried in passes {
        let tried = if skip_tried { ctx.tried } else { 0 };
        // Each backend is left out at most once for its circuit and once for
        // losing its last slot to a race: the loop is bounded by twice their number.
        for _ in 0..=2 * snap.backends.len() {
            let excluded = ctx.refused | tried;
            let Some(choice) = sticky::choose(snap, sticky, excluded, full, key, now) else {
                break;
            };
            let backend = &snap.backends[choice.index];
            let Some(slot) = InFlight::acquire(backend, queue) else {
                full |= 1 << choice.index; // filled up since `full` was read
                continue;
            };
            match backend.stats.circuit.acquire(cb, now) {
                Some(permit) => {
                    ctx.permit = Some(permit);
                    ctx.in_flight = Some(slot);
                    return Selected::Chosen(choice);
                }
                // Lost a race for the last half-open probe slot (the
                // in-flight slot is given back as `slot` drops).
                None => ctx.refused |= 1 << choice.index,
            }
        }
        // Nothing with room. Would a backend do if it had room? Then wait for
        // it, rather than send a retry back to a backend that just failed.
        // (Rare path: only when something is full.)
        if full != 0 && sticky::choose(snap, sticky, ctx.refused | tried, 0, key, now).is_some() {
            return Selected::Full;
        }
        // Nothing untried left: a retry may reuse a tried backend.
    }
    Selected::Nothing
}

/// Selects a backend for the next attempt, waiting in `state`'s queue while
/// every backend the request could use is at capacity. `gone` resolves if the
/// client disconnects (both paths watch the client's socket while it waits).
///
/// While anyone waits, a new request queues behind them instead of trying
/// first: freed slots go to the queue in arrival order. A first attempt that
/// waited is routed by the snapshot current when it gets its slot (written
/// back to `snap` and `ctx`), so a backend removed meanwhile (reload, DNS)
/// receives nothing new; a retry keeps the request's snapshot, whose indices
/// its tried set refers to.
pub async fn admit(
    state: &State,
    snap: &mut Local,
    sticky: Option<&[u8]>,
    ctx: &mut Ctx,
    gone: impl Future<Output = ()>,
) -> Result<Choice, Refusal> {
    let queue = &state.queue;
    if queue.waiting() == 0 {
        match select(queue, snap, sticky, ctx) {
            Selected::Chosen(choice) => return Ok(choice),
            Selected::Nothing => return Err(Refusal::NoBackend),
            Selected::Full => {}
        }
    }
    let q = &snap.config.queue;
    // The queue's clock is tokio's (a test may pause it).
    let now = tokio::time::Instant::now();
    let Some(ticket) = queue.join(q.size, now) else {
        return Err(Refusal::Queue(Rejected::Full));
    };
    let deadline = now + q.timeout;
    tokio::pin!(gone);
    loop {
        let wake = tokio::select! {
            w = ticket.wait(deadline) => w,
            () = &mut gone => return Err(Refusal::ClientGone),
        };
        if wake == Wake::TimedOut {
            ticket.timed_out(tokio::time::Instant::now());
            return Err(Refusal::Queue(Rejected::Timeout));
        }
        if ctx.attempts == 0 {
            // Any swap (DNS changes keep the version): compare snapshots.
            if !state.is_current(snap) {
                *snap = state.current();
                ctx.snapshot = Some(snap.clone());
            }
        }
        match select(queue, snap, sticky, ctx) {
            Selected::Chosen(choice) => {
                ticket.served(tokio::time::Instant::now());
                return Ok(choice);
            }
            // Everything went down meanwhile: waiting longer would not help.
            Selected::Nothing => return Err(Refusal::NoBackend),
            // A request that avoids some backends (a retry avoiding those it
            // tried, or a lost half-open probe race) may have been woken for
            // a slot only others can use: pass the wake on, so it never holds
            // up the requests behind it. Others found no room for anyone.
            Selected::Full => ticket.rearm(ctx.tried | ctx.refused != 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::state::State;

    /// Backends `a` and `b` (1 slot each) unless `toml` says otherwise.
    fn state(extra: &str, backends: &str) -> Arc<State> {
        let text = format!("{extra}\n{backends}");
        Arc::new(State::new(Arc::new(Config::from_toml(&text).unwrap())))
    }

    const TWO: &str = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nmax_in_flight = 1\n\
                       [[backends]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\nmax_in_flight = 1\n";

    async fn admit_now(s: &State, ctx: &mut Ctx) -> Result<Choice, Refusal> {
        admit_as(s, None, ctx).await
    }

    async fn admit_as(s: &State, pin: Option<&str>, ctx: &mut Ctx) -> Result<Choice, Refusal> {
        let mut snap = s.current();
        let pin = pin.map(str::as_bytes);
        admit(s, &mut snap, pin, ctx, std::future::pending()).await
    }

    /// Polls (yielding, bounded) until `n` requests wait.
    async fn until_waiting(s: &State, n: usize) {
        for _ in 0..10_000 {
            if s.queue.waiting() == n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{} waiting, expected {n}", s.queue.waiting());
    }

    #[tokio::test]
    async fn full_backends_are_skipped_then_requests_queue_fifo() {
        let s = state("[queue]\ntimeout = \"10s\"", TWO);
        let active = Arc::new(AtomicUsize::new(0));
        let (mut c1, mut c2) = (Ctx::new(&active), Ctx::new(&active));
        let first = admit_now(&s, &mut c1).await.unwrap().index;
        let second = admit_now(&s, &mut c2).await.unwrap().index;
        assert_ne!(first, second, "the full backend is skipped");
        // Both full: five requests queue, in order.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (st, active, order) = (s.clone(), active.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let mut ctx = Ctx::new(&active);
                admit_now(&st, &mut ctx).await.unwrap();
                order.lock().unwrap().push(i);
                // Hold the slot a moment so the next waiter needs this release.
                tokio::task::yield_now().await;
            }));
            until_waiting(&s, i + 1).await;
        }
        // Free one slot: the queue drains one request at a time, in order.
        drop(c1);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(s.queue.waiting(), 0);
        assert_eq!(s.queue.wait_histogram().get_sample_count(), 5);
        drop(c2);
        let snap = s.load();
        assert!(snap.backends.iter().all(|b| b.stats.in_flight() == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_and_timeout_refuse() {
        let one = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nmax_in_flight = 1\n";
        let s = state("[queue]\nsize = 1\ntimeout = \"300ms\"", one);
        let active = Arc::new(AtomicUsize::new(0));
        let mut holder = Ctx::new(&active);
        admit_now(&s, &mut holder).await.unwrap();
        let waiter = {
            let (st, active) = (s.clone(), active.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let r = admit_now(&st, &mut Ctx::new(&active)).await;
                (r, started.elapsed())
            })
        };
        until_waiting(&s, 1).await;
        // The queue (size 1) is full: refused at once.
        let r = admit_now(&s, &mut Ctx::new(&active)).await;
        assert_eq!(r.unwrap_err(), Refusal::Queue(Rejected::Full));
        let (r, waited) = waiter.await.unwrap();
        assert_eq!(r.unwrap_err(), Refusal::Queue(Rejected::Timeout));
        // Paused clock: exactly the timeout, except that tokio's timer wheel
        // rounds a deadline up to its next millisecond tick.
        let ms = Duration::from_millis;
        assert!((ms(300)..=ms(301)).contains(&waited), "{waited:?}");
        assert_eq!(s.queue.rejected(Rejected::Full), 1);
        assert_eq!(s.queue.rejected(Rejected::Timeout), 1);
        // size = 0: no queue at all.
        let s = state("[queue]\nsize = 0", one);
        let mut holder = Ctx::new(&active);
        admit_now(&s, &mut holder).await.unwrap();
        let r = admit_now(&s, &mut Ctx::new(&active)).await;
        assert_eq!(r.unwrap_err(), Refusal::Queue(Rejected::Full));
    }

    #[tokio::test]
    async fn nothing_eligible_is_not_queued() {
        let s = state("", TWO);
        let snap = s.load_full();
        for b in &snap.backends {
            b.stats
                .healthy
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let active = Arc::new(AtomicUsize::new(0));
        let r = admit_now(&s, &mut Ctx::new(&active)).await;
        assert_eq!(r.unwrap_err(), Refusal::NoBackend);
        assert_eq!(s.queue.waiting(), 0);
    }

    #[tokio::test]
    async fn a_pinned_client_overflows_without_losing_its_pin() {
        let s = state("[balancer]\nsticky = \"cookie\"", TWO);
        let snap = s.load_full();
        let a_id = snap.backends[0].stats.sticky_id.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let mut c1 = Ctx::new(&active);
        let got = admit_as(&s, Some(&a_id), &mut c1).await.unwrap();
        assert_eq!((got.index, got.set_cookie), (0, false));
        // a is full: served by b this once, and no cookie moves the pin.
        let mut c2 = Ctx::new(&active);
        let got = admit_as(&s, Some(&a_id), &mut c2).await.unwrap();
        assert_eq!((got.index, got.set_cookie), (1, false));
        // a down: rebalanced and re-pinned, as before capacity existed.
        drop((c1, c2));
        snap.backends[0]
            .stats
            .healthy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let mut c3 = Ctx::new(&active);
        let got = admit_as(&s, Some(&a_id), &mut c3).await.unwrap();
        assert_eq!((got.index, got.set_cookie), (1, true));
    }

    #[tokio::test(start_paused = true)]
    async fn drained_backends_take_only_their_pinned_clients_from_the_queue() {
        let s = state(
            "[balancer]\nsticky = \"cookie\"\n[queue]\ntimeout = \"200ms\"",
            TWO,
        );
        s.update(|cur| {
            let mut backends = cur.backends.clone();
            backends[0].mode = crate::state::Mode::Drain;
            cur.with(backends, cur.algorithm)
        });
        let snap = s.load_full();
        let a_id = snap.backends[0].stats.sticky_id.clone();
        let active = Arc::new(AtomicUsize::new(0));
        // b takes the first request and is then full; a (draining) has room.
        let mut holder = Ctx::new(&active);
        assert_eq!(admit_now(&s, &mut holder).await.unwrap().index, 1);
        // A new client queues (and times out) rather than going to a.
        let r = admit_now(&s, &mut Ctx::new(&active)).await;
        assert_eq!(r.unwrap_err(), Refusal::Queue(Rejected::Timeout));
        // A client pinned to a still gets it.
        let mut c = Ctx::new(&active);
        assert_eq!(admit_as(&s, Some(&a_id), &mut c).await.unwrap().index, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waiting_for_its_backend_never_holds_up_others() {
        let s = state("[queue]\ntimeout = \"5s\"", TWO);
        let active = Arc::new(AtomicUsize::new(0));
        let mut holder = Ctx::new(&active);
        assert_eq!(admit_now(&s, &mut holder).await.unwrap().index, 0);
        // A retry that already tried b waits for a (full) instead of going
        // back to b, which has room.
        let retry = {
            let (st, active) = (s.clone(), active.clone());
            tokio::spawn(async move {
                let mut ctx = Ctx::new(&active);
                ctx.attempts = 1;
                ctx.tried = 1 << 1;
                let index = admit_now(&st, &mut ctx).await.unwrap().index;
                (index, tokio::time::Instant::now())
            })
        };
        until_waiting(&s, 1).await;
        // A newcomer queues behind it (FIFO) but gets b at once: the retry
        // passed on the wake it could not use.
        let t0 = tokio::time::Instant::now();
        let mut newcomer = Ctx::new(&active);
        assert_eq!(admit_now(&s, &mut newcomer).await.unwrap().index, 1);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(s.queue.waiting(), 1, "the retry still waits");
        drop(holder);
        let (index, at) = retry.await.unwrap();
        assert_eq!((index, at), (0, t0), "a's release served the retry");
    }

    #[tokio::test]
    async fn a_queued_request_follows_changes_made_while_it_waited() {
        let s = state("[queue]\ntimeout = \"10s\"", TWO);
        let active = Arc::new(AtomicUsize::new(0));
        let (mut on_a, mut on_b) = (Ctx::new(&active), Ctx::new(&active));
        assert_eq!(admit_now(&s, &mut on_a).await.unwrap().index, 0);
        assert_eq!(admit_now(&s, &mut on_b).await.unwrap().index, 1);
        let waiter = {
            let (st, active) = (s.clone(), active.clone());
            tokio::spawn(async move {
                let mut ctx = Ctx::new(&active);
                let got = admit_now(&st, &mut ctx).await.unwrap();
                let version = ctx.snapshot.as_ref().map(|s| s.version);
                (got.index, version)
            })
        };
        until_waiting(&s, 1).await;
        // b goes into maintenance (as a reload or DNS change could remove it)
        // while the request waits; then b's slot frees.
        s.update(|cur| {
            let mut backends = cur.backends.clone();
            backends[1].mode = crate::state::Mode::Maintenance;
            cur.with(backends, cur.algorithm)
        });
        drop(on_b);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.queue.waiting(), 1, "not sent to b");
        drop(on_a);
        let (index, version) = waiter.await.unwrap();
        assert_eq!(
            (index, version),
            (0, Some(s.version())),
            "routed by the new snapshot"
        );
    }
}

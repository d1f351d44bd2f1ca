//! Per-request context and the accounting of each attempt's outcome: stats,
//! EWMA, circuit breaker verdicts. Every attempt is recorded exactly once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balancer::Mask;
use crate::circuit::Permit;
use crate::metrics::ErrorKind;
use crate::state::{BackendStats, InFlight, Local};
use crate::sticky::Choice;

use super::admit::Refusal;
use super::budget;
use super::failure::{self, Failure, Next};
use crate::state::State;

/// The message of a `429` for `[limits] per_ip_rate`.
pub const RATE_LIMITED: &str = "rate limited";

/// How one attempt at a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response header received with this status.
    Status(u16),
    /// TCP connect failed (refused, unreachable, connect timeout).
    Connect,
    /// No response within `timeouts.response`.
    Timeout,
    /// Connection reset or closed mid-request.
    Reset,
    /// The client went away before the response: the elapsed time is a lower
    /// bound on the backend's latency (least_time), not a verdict on it.
    Abandoned,
}

/// Counts a request as active for graceful shutdown until the context drops.
pub struct Active(pub Arc<AtomicUsize>);

impl Active {
    /// Counts one more active request.
    pub fn start(counter: &Arc<AtomicUsize>) -> Active {
        counter.fetch_add(1, Ordering::AcqRel);
        Active(counter.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state; lives across retries.
pub struct Ctx {
    pub(in crate::proxy) _active: Active,
    pub(in crate::proxy) request_id: String,
    pub(in crate::proxy) started: Instant,
    pub(in crate::proxy) client_ip: Option<IpAddr>,
    /// One snapshot for the whole request: all attempts see one weight map.
    pub(in crate::proxy) snapshot: Option<Local>,
    /// Backends this request already sent an attempt to.
    pub(in crate::proxy) tried: Mask,
    /// Backends whose circuit refused this request.
    pub(in crate::proxy) refused: Mask,
    /// Attempts made (the access log's `attempts`).
    pub(in crate::proxy) attempts: u32,
    /// Attempts that did not use up one of `retry.attempts`: the backend could
    /// not answer and another was left to try (see [`Ctx::backend_gone`]).
    pub(in crate::proxy) free: u32,
    /// Current attempt: backend index, in-flight guard, breaker permit, start.
    pub(in crate::proxy) backend: Option<usize>,
    pub(in crate::proxy) in_flight: Option<InFlight>,
    pub(in crate::proxy) permit: Option<Permit>,
    pub(in crate::proxy) attempt_started: Instant,
    /// Whether the current attempt's outcome was recorded.
    pub(in crate::proxy) recorded: bool,
    /// Set by `upstream_response_filter` when it turned a status into a retry.
    pub(in crate::proxy) status_retry: bool,
    pub(in crate::proxy) set_cookie: bool,
    pub(in crate::proxy) no_backend: bool,
    /// Why admission refused the request (queue full or timed out, client gone).
    pub(in crate::proxy) refusal: Option<&'static str>,
    /// Whether the last failed attempt timed out (504 rather than 502).
    pub(in crate::proxy) last_timed_out: bool,
    pub(in crate::proxy) upstream_ttfb: Option<Duration>,
    /// A backend admitted before the first attempt began (the Pingora path
    /// admits in `request_filter`, where a refusal can keep the connection).
    pub(in crate::proxy) pending: Option<Choice>,
    /// The next attempt resends to the same backend on a fresh connection.
    pub(in crate::proxy) resend: bool,
    /// The answer the policy decided when it ended the request.
    pub(in crate::proxy) answer: Option<(u16, &'static str)>,
    /// The path sent body bytes it cannot send again (a streamed body): no
    /// further attempt is possible.
    pub(in crate::proxy) unreplayable: bool,
    /// The current attempt runs on a reused (pooled) upstream connection.
    pub(in crate::proxy) reused: bool,
    /// The current attempt's connection brought an interim (1xx) head: the
    /// backend saw the request (Pingora path; lb's paths see it in their
    /// buffer).
    pub(in crate::proxy) interim: bool,
    /// The status relayed to the client (fast path).
    pub(in crate::proxy) final_status: u16,
    /// The client's protocol, for the access log's `proto`.
    pub(in crate::proxy) proto: &'static str,
    /// The client connection is TLS (`X-Forwarded-Proto: https`, HSTS).
    pub(in crate::proxy) https: bool,
}

impl Ctx {
    /// A context for a new request.
    pub fn new(active: &Arc<AtomicUsize>) -> Ctx {
        let now = Instant::now();
        Ctx {
            _active: Active::start(active),
            request_id: String::new(),
            started: now,
            client_ip: None,
            snapshot: None,
            tried: 0,
            refused: 0,
            attempts: 0,
            free: 0,
            backend: None,
            in_flight: None,
            permit: None,
            attempt_started: now,
            recorded: true,
            status_retry: false,
            set_cookie: false,
            no_backend: false,
            refusal: None,
            last_timed_out: false,
            upstream_ttfb: None,
            pending: None,
            resend: false,
            answer: None,
            unreplayable: false,
            reused: false,
            interim: false,
            final_status: 0,
            proto: "http/1.1",
            https: false,
        }
    }

    /// Starts the next attempt at `choice` (both paths): marks the backend
    /// tried, counts the attempt, and charges a retry to `retried_from`, the
    /// backend whose failure caused it.
    pub fn begin_attempt(&mut self, choice: Choice, retried_from: Option<&BackendStats>) {
        if let Some(stats) = retried_from {
            stats.retries_total.fetch_add(1, Ordering::Relaxed);
        }
        if self.attempts == 0 {
            budget::RETRY_BUDGET.request(budget::now());
        }
        self.tried |= 1 << choice.index;
        self.attempts += 1;
        self.backend = Some(choice.index);
        self.set_cookie = choice.set_cookie;
        self.attempt_started = Instant::now();
        self.recorded = false;
    }

    /// The current attempt's backend stats.
    pub fn backend_stats(&self) -> Option<&Arc<BackendStats>> {
        self.in_flight.as_ref().map(InFlight::stats)
    }

    /// Attempts allowed for this request.
    pub fn max_attempts(&self) -> u32 {
        self.snapshot
            .as_ref()
            .map_or(1, |s| s.config.retry.attempts)
    }

    /// Does the retry budget allow another attempt? Attempts that found their
    /// backend gone while another was left ([`Ctx::backend_gone`]) do not count.
    pub fn attempts_left(&self) -> bool {
        !self.unreplayable && self.attempts - self.free < self.max_attempts()
    }

    /// The current attempt failed in a way that only says its backend cannot
    /// answer: the connection was refused, or reset or closed before a
    /// whole response header (as README and lb.toml say). While an eligible backend this request has not tried is
    /// left, that attempt does not use up one of `retry.attempts` — the request
    /// goes on to every eligible backend before it fails (nginx's
    /// `proxy_next_upstream error` tries every server too). Such failures are
    /// immediate, so this costs no time; timeouts and retry statuses always
    /// count. Whether the request may be sent again at all (idempotent, or
    /// nothing reached the backend) is the caller's decision.
    pub fn backend_gone(&mut self) {
        if self.untried_left() {
            self.free += 1;
        }
    }

    /// Does an eligible backend this request has not tried yet exist? (Full
    /// or not: a retry may queue.)
    pub fn untried_left(&self) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|s| s.schedulable(Instant::now()) & !(self.tried | self.refused) != 0)
    }

    /// The answer to a request admission refused (status, message), noting
    /// why for the access log; every path answers refusals with this.
    pub fn refused(&mut self, refusal: Refusal, state: &State) -> (u16, &'static str) {
        match refusal {
            // All attempts failed and nothing is left: the last failure's status.
            Refusal::NoBackend if self.attempts > 0 => {
                let last = if self.last_timed_out {
                    Failure::Timeout
                } else {
                    Failure::Closed
                };
                (last.status(), last.message())
            }
            Refusal::NoBackend => {
                self.no_backend = true;
                state.counters.no_backend.fetch_add(1, Ordering::Relaxed);
                (503, refusal.message())
            }
            r => {
                self.refusal = Some(r.message());
                (r.status(), r.message())
            }
        }
    }

    /// Is this request over its client's `[limits] per_ip_rate`? The
    /// `Retry-After` seconds of its `429` if so (counted, and noted for the
    /// access log).
    pub fn rate_limited(&mut self, state: &State) -> Option<u64> {
        let limits = &self.snapshot.as_ref()?.config.limits;
        let secs = super::limits::check_rate(self.client_ip, limits).err()?;
        state.counters.limited[1].fetch_add(1, Ordering::Relaxed);
        self.refusal = Some(RATE_LIMITED);
        Some(secs)
    }

    /// Records the current attempt's `failure` and decides what follows
    /// ([`failure::after_failure`]). A stale pooled connection is resent
    /// without a verdict on its backend; a failure that only shows the
    /// backend gone frees its attempt ([`Ctx::backend_gone`]) when the
    /// request may be sent again at all.
    /// A retry after an attempt a live backend may have worked on (a timeout,
    /// a malformed answer) is skipped when `retry.budget` is spent
    /// ([`budget`]); lb's own shortage is counted by `errno`.
    pub fn after_failure(&mut self, failure: Failure, idempotent: bool, state: &State) -> Next {
        if failure == Failure::Stale && self.reused && !self.unreplayable {
            return Next::Resend;
        }
        self.fail(failure);
        if let Failure::Local(errno) = failure {
            state.counters.local_error(errno);
        }
        if (idempotent || !failure.reached_backend()) && failure.backend_gone() {
            self.backend_gone();
        }
        let next = failure::after_failure(failure, idempotent, false, self.attempts_left());
        // A backend that is gone does no work: only retries after an attempt
        // a live backend may have worked on are charged to the budget.
        let charged = failure.reached_backend() && !failure.backend_gone();
        if next == Next::Retry && charged && !self.budget_allows(state) {
            return Next::Answer(failure.status());
        }
        next
    }

    /// Is a backend's `status` retried elsewhere ([`failure::retry_status`],
    /// within the retry budget)?
    pub fn retry_on_status(&self, status: u16, idempotent: bool, state: &State) -> bool {
        let statuses = self
            .snapshot
            .as_ref()
            .map_or(&[][..], |s| &s.config.retry.statuses[..]);
        failure::retry_status(
            status,
            statuses,
            idempotent,
            self.attempts_left(),
            self.untried_left(),
        ) && self.budget_allows(state)
    }

    /// Does `retry.budget` allow one more retry (counting it)? A skipped one
    /// is counted in `lb_retries_skipped_total{reason="budget"}`.
    fn budget_allows(&self, state: &State) -> bool {
        let budget = self
            .snapshot
            .as_ref()
            .map_or(1.0, |s| s.config.retry.budget);
        if budget::RETRY_BUDGET.try_retry(budget, budget::now()) {
            return true;
        }
        state
            .counters
            .retries_skipped_budget
            .fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Records the current attempt's failure (nothing when it was lb's own,
    /// [`Failure::Local`]) and notes whether it timed out.
    pub fn fail(&mut self, failure: Failure) {
        self.last_timed_out = failure.timed_out();
        match failure.outcome() {
            Some(outcome) => self.record(outcome),
            // Not the backend's doing: no counter, EWMA or breaker verdict; the
            // breaker permit goes back with the request.
            None => self.recorded = true,
        }
    }

    /// Records the current attempt's outcome once (first report wins): counters,
    /// EWMA (failures count as slow) and the circuit breaker's verdict.
    pub fn record(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        // Disjoint field borrows: no refcount traffic on the hot path.
        let (Some(guard), Some(snap)) = (&self.in_flight, &self.snapshot) else {
            return;
        };
        let stats = guard.stats();
        let now = Instant::now();
        let took = now.saturating_duration_since(self.attempt_started);
        if outcome == Outcome::Abandoned {
            // Only a latency floor: no counters, no breaker verdict (the permit
            // is released with the request).
            stats.ewma.observe_floor(took, now);
            return;
        }
        // SPEC least_time: connect errors, timeouts, 5xx and 429 count as slow,
        // so a backend failing fast never attracts traffic.
        let (slow, failure) = match outcome {
            Outcome::Status(s) => (s >= 500 || s == 429, s >= 500),
            Outcome::Connect | Outcome::Timeout | Outcome::Reset => (true, true),
            Outcome::Abandoned => (false, false),
        };
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
        if failure {
            stats.errors_total.fetch_add(1, Ordering::Relaxed);
            stats.metrics.error(match outcome {
                Outcome::Status(_) => ErrorKind::Status,
                Outcome::Connect => ErrorKind::Connect,
                Outcome::Timeout => ErrorKind::Timeout,
                Outcome::Reset | Outcome::Abandoned => ErrorKind::Reset,
            });
        } else {
            // `dynamic` compares the latency of answers, not of fast failures.
            stats
                .latency_sum_us
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
        self.last_timed_out = outcome == Outcome::Timeout;
        if slow {
            stats.ewma.observe_failure(took, now);
        } else {
            stats.ewma.observe(took, now);
        }
        let Some(permit) = self.permit.take() else {
            return;
        };
        if failure {
            let cb = &snap.config.circuit_breaker;
            if stats.circuit.on_failure(cb, permit, now) {
                tracing::warn!(backend = %stats.name, after = cb.failures, "circuit opened");
            }
        } else {
            if stats.circuit.on_success(permit) {
                // Closed after it opened: slow start (`balancer.slow_start`).
                stats.restart_ramp(now);
            }
        }
    }
}

//! Open-loop load for chaos tests: requests leave at a fixed rate whatever the
//! answers do (a closed loop would slow down exactly when lb misbehaves and so
//! hide it), each recorded with its due time, completion time, status and
//! `X-Backend`. Bounded in rate, count, duration and outstanding requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::time::MissedTickBehavior;

/// Most requests outstanding at once; beyond it the sender waits (and counts
/// the wait as saturation), so a hung lb cannot make the test open sockets
/// without bound.
const MAX_OUTSTANDING: u32 = 256;
/// Per-request client timeout: a request that takes longer is a failure.
pub const LOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One request of a [`Load`].
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the request was due. Open loop: if the sender itself was late, the
    /// delay is charged to this request's latency instead of being hidden.
    pub sent: Instant,
    /// When the response (headers and body) or the error arrived.
    pub done: Instant,
    /// HTTP status; None for a transport error (see `error`).
    pub status: Option<u16>,
    /// Transport error text, "" when a response arrived.
    pub error: String,
    /// `X-Backend` of the response, "" if absent.
    pub backend: String,
    /// `Retry-After` of the response, "" if absent.
    pub retry_after: String,
}

impl Sample {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        matches!(self.status, Some(s) if (200..300).contains(&s))
    }

    /// From due time to completion.
    pub fn latency(&self) -> Duration {
        self.done.saturating_duration_since(self.sent)
    }

    /// "200", "503", or "error: ..." for tallies.
    pub fn outcome(&self) -> String {
        match self.status {
            Some(s) => s.to_string(),
            None => format!("error: {}", self.error),
        }
    }
}

/// Queries over recorded samples (a finished run or a live snapshot).
pub trait SampleSet {
    /// Samples that are not 2xx (including transport errors).
    fn failed(&self) -> Vec<&Sample>;
    /// Samples due in `[from, to)`.
    fn sent_between(&self, from: Instant, to: Instant) -> Vec<&Sample>;
    /// 2xx answers per `X-Backend`.
    fn per_backend(&self) -> BTreeMap<String, usize>;
    /// Count per outcome ("200", "503", "error: ...").
    fn outcomes(&self) -> BTreeMap<String, usize>;
    /// Completion time of the last 2xx answer `backend` gave.
    fn last_served_by(&self, backend: &str) -> Option<Instant>;
    /// Due time of the first 2xx answer from `backend` among requests due at or
    /// after `after`.
    fn first_served_by_after(&self, backend: &str, after: Instant) -> Option<Instant>;
    /// (answers from `backend`, all answers with an X-Backend) among requests due
    /// in `[from, to)`, 2xx only.
    fn share(&self, backend: &str, from: Instant, to: Instant) -> (usize, usize);
    /// Largest latency among requests due in `[from, to)` (zero if none).
    fn max_latency(&self, from: Instant, to: Instant) -> Duration;
}

impl SampleSet for [Sample] {
    fn failed(&self) -> Vec<&Sample> {
        self.iter().filter(|s| !s.ok()).collect()
    }

    fn sent_between(&self, from: Instant, to: Instant) -> Vec<&Sample> {
        self.iter()
            .filter(|s| s.sent >= from && s.sent < to)
            .collect()
    }

    fn per_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.iter().filter(|s| s.ok()) {
            *m.entry(s.backend.clone()).or_default() += 1;
        }
        m
    }

    fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self {
            *m.entry(s.outcome()).or_default() += 1;
        }
        m
    }

    fn last_served_by(&self, backend: &str) -> Option<Instant> {
        self.iter()
            .filter(|s| s.ok() && s.backend == backend)
            .map(|s| s.done)
            .max()
    }

    fn first_served_by_after(&self, backend: &str, after: Instant) -> Option<Instant> {
        self.iter()
            .filter(|s| s.ok() && s.backend == backend && s.sent >= after)
            .map(|s| s.sent)
            .min()
    }

    fn share(&self, backend: &str, from: Instant, to: Instant) -> (usize, usize) {
        let window: Vec<&Sample> = self
            .sent_between(from, to)
            .into_iter()
            .filter(|s| s.ok() && !s.backend.is_empty())
            .collect();
        let mine = window.iter().filter(|s| s.backend == backend).count();
        (mine, window.len())
    }

    fn max_latency(&self, from: Instant, to: Instant) -> Duration {
        self.sent_between(from, to)
            .iter()
            .map(|s| s.latency())
            .max()
            .unwrap_or_default()
    }
}

/// A running open-loop load; call [`Load::stop`] to end it and get the samples.
pub struct Load {
    /// When the first request was due.
    pub started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    sent: Arc<AtomicUsize>,
    saturated: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    driver: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Sends `method url` at `rate_per_sec` until `max_requests` were sent,
    /// `max_duration` passed or [`Load::stop`]; each request is its own task.
    pub fn start(
        url: &str,
        rate_per_sec: u32,
        max_requests: usize,
        max_duration: Duration,
        method: reqwest::Method,
    ) -> Load {
        assert!((1..=2000).contains(&rate_per_sec), "keep load modest");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(LOAD_REQUEST_TIMEOUT)
            .build()
            .unwrap();
        let samples = Arc::new(Mutex::new(Vec::with_capacity(max_requests.min(100_000))));
        let sent = Arc::new(AtomicUsize::new(0));
        let saturated = Arc::new(AtomicUsize::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let started = Instant::now();
        let period = Duration::from_secs_f64(1.0 / f64::from(rate_per_sec));
        let (url, s2, sent2, sat2) = (
            url.to_string(),
            samples.clone(),
            sent.clone(),
            saturated.clone(),
        );
        let driver = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_OUTSTANDING as usize));
            let mut tick = tokio::time::interval(period);
            // Open loop: ticks missed while the sender was descheduled are sent
            // at once, keeping the average rate.
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let deadline = started + max_duration;
            while sent2.load(Ordering::Relaxed) < max_requests {
                let due = tokio::select! {
                    biased;
                    _ = stop_rx.changed() => break,
                    t = tick.tick() => t.into_std(),
                };
                if due >= deadline {
                    break;
                }
                let permit = match slots.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        sat2.fetch_add(1, Ordering::Relaxed);
                        slots.clone().acquire_owned().await.unwrap()
                    }
                };
                let (client, method, url, samples) =
                    (client.clone(), method.clone(), url.clone(), s2.clone());
                tokio::spawn(async move {
                    let s = one_request(&client, method, &url, due).await;
                    samples
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(s);
                    drop(permit);
                });
                sent2.fetch_add(1, Ordering::Relaxed);
            }
            // Every request ends within LOAD_REQUEST_TIMEOUT, so this is bounded.
            let _ = slots.acquire_many(MAX_OUTSTANDING).await;
        });
        Load {
            started,
            samples,
            sent,
            saturated,
            stop,
            driver,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Runs `f` over the samples completed so far.
    pub fn with_samples<T>(&self, f: impl FnOnce(&[Sample]) -> T) -> T {
        f(&self.samples.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Polls `f` over the completed samples every 20 ms until it returns Some
    /// or `timeout` passes.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        f: impl Fn(&[Sample]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.with_samples(&f) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending, waits for outstanding requests (at most the request
    /// timeout) and returns every sample in due-time order.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.driver.await.expect("load driver panicked");
        let saturated = self.saturated.load(Ordering::Relaxed);
        if saturated > 0 {
            eprintln!("load: {saturated} sends waited for one of {MAX_OUTSTANDING} slots");
        }
        let mut v =
            std::mem::take(&mut *self.samples.lock().unwrap_or_else(PoisonError::into_inner));
        v.sort_by_key(|s| s.sent);
        v
    }
}

async fn one_request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    due: Instant,
) -> Sample {
    let mut s = Sample {
        sent: due,
        done: due,
        status: None,
        error: String::new(),
        backend: String::new(),
        retry_after: String::new(),
    };
    match client.request(method, url).send().await {
        Ok(r) => {
            s.status = Some(r.status().as_u16());
            s.backend = super::header(&r, "x-backend");
            s.retry_after = super::header(&r, "retry-after");
            if let Err(e) = r.bytes().await {
                s.status = None;
                s.error = format!("body: {e}");
            }
        }
        Err(e) => s.error = error_chain(&e),
    }
    s.done = Instant::now();
    s
}

/// An error with its sources, so "error sending request" says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

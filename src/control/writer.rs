//! The state file's writer: one thread of its own, off every async runtime, so
//! a slow disk (a write is two fsyncs) never stalls `/metrics`, `/health` or
//! anything else on the admin API's runtime.
//!
//! Requests coalesce: each write saves the state current when the write starts,
//! so the last write always carries the latest state, and any number of changes
//! made during one slow write cost one more write, not one each. Callers that
//! want "persisted" before they answer (the admin API: a `200` means the change
//! survives a restart, a `507` that it does not) wait for their ticket without
//! blocking a thread.
//!
//! How a caller learns the outcome of *its* write: after each write the thread
//! publishes [`Progress`] — the highest ticket a write has covered, the highest
//! one a *successful* write has covered, and the last failure's reason. Ticket
//! `t` is on disk iff `saved >= t`: every write that starts after `t` was
//! requested saves a state that already holds `t`'s change, so one success
//! among them is enough, and when all of them failed the last reason is the
//! answer. This keeps coalescing as it was (one watch value, no reply channel
//! per request to fan out after a coalesced write) and never blocks a runtime
//! thread; writing synchronously in the handler instead would put the disk
//! back on the admin API's one thread, which is what this thread exists to
//! avoid.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a caller waits for its write before answering anyway (the change
/// is applied in memory either way; a failing write is logged by the writer).
pub const WAIT_AT_MOST: Duration = Duration::from_secs(5);

/// A write: `Err(reason)` when it could not be saved.
type WriteFn = Box<dyn Fn() -> Result<(), String> + Send + 'static>;

/// What the writer thread has done so far (published after every write).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The highest ticket a finished write covered, successful or not.
    pub written: u64,
    /// The highest ticket a successful write covered.
    pub saved: u64,
    /// Why the last failed write failed (kept after later successes; only
    /// read for tickets no success covered).
    pub error: Option<Arc<str>>,
}

/// The outcome of one ticket's write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write that covered the ticket succeeded.
    Saved,
    /// Every write that covered the ticket failed; the last one's reason.
    Failed(Arc<str>),
    /// Not written within [`WAIT_AT_MOST`].
    Pending,
}

impl Progress {
    /// `ticket`'s outcome, or `None` while no write has covered it yet.
    fn outcome(&self, ticket: u64) -> Option<Outcome> {
        if self.saved >= ticket {
            Some(Outcome::Saved)
        } else if self.written >= ticket {
            let why = self.error.clone().unwrap_or_else(|| "write failed".into());
            Some(Outcome::Failed(why))
        } else {
            None
        }
    }
}

/// Handle on the writer thread; the thread starts with the first request and
/// ends when the handle is dropped (after finishing a requested write).
pub struct Writer {
    shared: Arc<Shared>,
    progress: tokio::sync::watch::Receiver<Progress>,
}

struct Shared {
    job: Mutex<Job>,
    wake: Condvar,
    done: tokio::sync::watch::Sender<Progress>,
}

struct Job {
    /// Tickets handed out; the thread owes writes up to this one.
    requested: u64,
    /// The write function until the thread takes it (it starts lazily).
    write: Option<WriteFn>,
    closed: bool,
}

impl Writer {
    /// A writer calling `write` for each (coalesced) request; `write` answers
    /// `Err(reason)` when it could not save.
    pub fn new(write: impl Fn() -> Result<(), String> + Send + 'static) -> Writer {
        let (done, progress) = tokio::sync::watch::channel(Progress::default());
        Writer {
            shared: Arc::new(Shared {
                job: Mutex::new(Job {
                    requested: 0,
                    write: Some(Box::new(write)),
                    closed: false,
                }),
                wake: Condvar::new(),
                done,
            }),
            progress,
        }
    }

    /// Asks for a write of the state as it is from now on; returns at once.
    /// [`Writer::wait`] on the ticket tells whether it was saved.
    pub fn request(&self) -> u64 {
        let mut job = self.shared.job.lock().unwrap_or_else(|p| p.into_inner());
        job.requested += 1;
        if let Some(write) = job.write.take() {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("lb-state-file".into())
                .spawn(move || run(&shared, write));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the state file writer; state kept in memory");
            }
        }
        self.shared.wake.notify_one();
        job.requested
    }

    /// The latest ticket handed out (0 before any request).
    pub fn request_count(&self) -> u64 {
        self.shared
            .job
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requested
    }

    /// The highest ticket written so far (successfully or not).
    #[cfg(test)]
    pub fn written(&self) -> u64 {
        self.progress.borrow().written
    }

    /// Waits (without blocking a thread) until `ticket` is written, at most
    /// [`WAIT_AT_MOST`]; whether it was saved.
    pub async fn wait(&self, ticket: u64) -> Outcome {
        let mut rx = self.progress.clone();
        let waited = tokio::time::timeout(WAIT_AT_MOST, rx.wait_for(|p| p.written >= ticket)).await;
        match waited {
            Ok(Ok(p)) => p.outcome(ticket).unwrap_or(Outcome::Pending),
            _ => Outcome::Pending,
        }
    }

    /// Blocks the calling thread until `ticket` is written (at most
    /// [`WAIT_AT_MOST`]). For tests and synchronous callers only.
    pub fn wait_blocking(&self, ticket: u64) -> Outcome {
        let deadline = std::time::Instant::now() + WAIT_AT_MOST;
        loop {
            if let Some(o) = self.progress.borrow().outcome(ticket) {
                return o;
            }
            if std::time::Instant::now() >= deadline {
                return Outcome::Pending;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut job = self.shared.job.lock().unwrap_or_else(|p| p.into_inner());
        job.closed = true;
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared, write: WriteFn) {
    let mut done = 0;
    loop {
        let target = {
            let mut job = shared.job.lock().unwrap_or_else(|p| p.into_inner());
            while job.requested == done && !job.closed {
                job = shared.wake.wait(job).unwrap_or_else(|p| p.into_inner());
            }
            if job.requested == done {
                return; // closed with nothing owed
            }
            job.requested
        };
        // Every request up to `target` asked for the state as of its time or
        // later; this write takes the state as of now, so it serves them all.
        let result = write();
        done = target;
        shared.done.send_modify(|p| {
            p.written = done;
            match result {
                Ok(()) => p.saved = done,
                Err(why) => p.error = Some(why.into()),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    /// A writer whose writes each wait for one message on the returned sender.
    fn gated() -> (Writer, mpsc::Sender<()>, Arc<AtomicUsize>) {
        let (open, gate) = mpsc::channel::<()>();
        let writes = Arc::new(AtomicUsize::new(0));
        let w2 = writes.clone();
        let gate = Mutex::new(gate);
        let writer = Writer::new(move || {
            let _ = gate.lock().unwrap().recv();
            w2.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (writer, open, writes)
    }

    #[test]
    fn requests_during_a_slow_write_coalesce_into_one_more() {
        let (writer, open, writes) = gated();
        let first = writer.request();
        // Nine more while the first is stuck: they need one more write only.
        let mut last = first;
        for _ in 0..9 {
            last = writer.request();
        }
        assert_eq!((first, last), (1, 10));
        assert_eq!(writer.written(), 0);
        open.send(()).unwrap();
        open.send(()).unwrap();
        assert_eq!(writer.wait_blocking(last), Outcome::Saved);
        // The thread may have taken the first ticket alone or all ten at once.
        let n = writes.load(Ordering::SeqCst);
        assert!((1..=2).contains(&n), "{n} writes");
    }

    #[tokio::test]
    async fn waiting_does_not_block_the_runtime() {
        let (writer, open, _) = gated();
        let t = writer.request();
        // The write is stuck; on this current-thread runtime other tasks run.
        let other = tokio::spawn(async { 7 });
        assert_eq!(other.await.unwrap(), 7);
        assert_eq!(writer.written(), 0);
        open.send(()).unwrap();
        assert_eq!(writer.wait(t).await, Outcome::Saved);
    }

    #[test]
    fn a_ticket_is_saved_once_any_write_covering_it_succeeds() {
        // Writes fail while `failing` is set, with the reason "disk full".
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = failing.clone();
        let writer = Writer::new(move || {
            if f.load(Ordering::SeqCst) {
                return Err("disk full".into());
            }
            Ok(())
        });
        let first = writer.request();
        let failed = Outcome::Failed("disk full".into());
        assert_eq!(writer.wait_blocking(first), failed);
        failing.store(false, Ordering::SeqCst);
        let second = writer.request();
        assert_eq!(writer.wait_blocking(second), Outcome::Saved);
        // The second write saved the state as of its start, which holds the
        // first change too: the first ticket is on disk now as well.
        assert_eq!(writer.wait_blocking(first), Outcome::Saved);
        // A failure after a success: the earlier ticket stays saved (the file
        // still holds it), the new one is not.
        failing.store(true, Ordering::SeqCst);
        let third = writer.request();
        assert_eq!(writer.wait_blocking(third), failed);
        assert_eq!(writer.wait_blocking(second), Outcome::Saved);
    }
}

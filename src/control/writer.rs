//! The state file's writer: one thread of its own, off every async runtime, so
//! a slow disk (a write is two fsyncs) never stalls `/metrics`, `/health` or
//! anything else on the admin API's runtime.
//!
//! Requests coalesce: each write saves the state current when the write starts,
//! so the last write always carries the latest state, and any number of changes
//! made during one slow write cost one more write, not one each. Callers that
//! want "persisted" before they answer (the admin API: a `200` means the change
//! survives a restart) wait for their ticket without blocking a thread.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a caller waits for its write before answering anyway (the change
/// is applied in memory either way; a failing write is logged by the writer).
pub const WAIT_AT_MOST: Duration = Duration::from_secs(5);

type WriteFn = Box<dyn Fn() + Send + 'static>;

/// Handle on the writer thread; the thread starts with the first request and
/// ends when the handle is dropped (after finishing a requested write).
pub struct Writer {
    shared: Arc<Shared>,
    written: tokio::sync::watch::Receiver<u64>,
}

struct Shared {
    job: Mutex<Job>,
    wake: Condvar,
    done: tokio::sync::watch::Sender<u64>,
}

struct Job {
    /// Tickets handed out; the thread owes writes up to this one.
    requested: u64,
    /// The write function until the thread takes it (it starts lazily).
    write: Option<WriteFn>,
    closed: bool,
}

impl Writer {
    /// A writer calling `write` for each (coalesced) request.
    pub fn new(write: impl Fn() + Send + 'static) -> Writer {
        let (done, written) = tokio::sync::watch::channel(0);
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
            written,
        }
    }

    /// Asks for a write of the state as it is from now on; returns at once.
    /// The ticket is done when [`Writer::written`] reaches it.
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

    /// The highest ticket written so far.
    pub fn written(&self) -> u64 {
        *self.written.borrow()
    }

    /// Waits (without blocking a thread) until `ticket` is written, at most
    /// [`WAIT_AT_MOST`]; false if it was not.
    pub async fn wait(&self, ticket: u64) -> bool {
        let mut rx = self.written.clone();
        tokio::time::timeout(WAIT_AT_MOST, rx.wait_for(|w| *w >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Blocks the calling thread until `ticket` is written (at most
    /// [`WAIT_AT_MOST`]). For tests and synchronous callers only.
    pub fn wait_blocking(&self, ticket: u64) -> bool {
        let deadline = std::time::Instant::now() + WAIT_AT_MOST;
        while self.written() < ticket {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
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
        write();
        done = target;
        shared.done.send_replace(done);
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
        assert!(writer.wait_blocking(last));
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
        assert!(writer.wait(t).await);
    }
}

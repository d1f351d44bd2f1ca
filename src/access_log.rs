//! The access log's own formatter: one line per request, written straight into
//! the non-blocking log queue.
//!
//! Going through `tracing`'s fmt layer cost ~4 µs per request on the proxy
//! thread (field visitors, a `String` per event, the timestamp) — a fifth of
//! a request's whole CPU budget (`make bench-peers`). This writes the same line
//! (text: `field=value` pairs; JSON: one flat object with `target`) into a
//! per-thread batch handed to the log writer thread at 32 KiB or 100 ms after
//! its first line, whichever comes first (so a line may trail lb's other log
//! lines by up to 100 ms).
//! `RUST_LOG` still decides: the event is written only when the `access`
//! target is enabled at `info`. Without an installed writer (lb used as a
//! library, in-process tests) events go through `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::config::LogFormat;

/// A sink for finished lines (the non-blocking writer).
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

static SINK: OnceLock<(Sink, LogFormat)> = OnceLock::new();
/// Set once lb is stopping: every line is handed over at once.
static UNBATCHED: AtomicBool = AtomicBool::new(false);
/// Flushes the log writer before the process exits (installed by `main`).
static EXIT_HOOK: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Lines are handed over at once from now on (lb is stopping). A line written
/// before waits at most [`BATCH_DELAY`] in its thread's batch.
pub fn stop_batching() {
    UNBATCHED.store(true, Ordering::Relaxed);
}

/// Installs what [`before_exit`] runs.
pub fn on_exit(hook: impl Fn() + Send + Sync + 'static) {
    let _ = EXIT_HOOK.set(Box::new(hook));
}

/// Flushes the log writer; call right before `std::process::exit`.
pub fn before_exit() {
    if let Some(hook) = EXIT_HOOK.get() {
        hook();
    }
}

/// Installs the sink lines go to and the format (done once by `main`).
pub fn install(sink: impl Fn(&[u8]) + Send + Sync + 'static, format: LogFormat) {
    let _ = SINK.set((Box::new(sink), format));
}

/// One request's access-log fields.
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub backend: &'a str,
    pub attempts: u32,
    pub upstream_ms: f64,
    pub total_ms: f64,
    pub bytes: u64,
    pub request_id: &'a str,
    pub error: Option<&'a str>,
}

/// A thread hands its batch to the writer at this size...
const BATCH_BYTES: usize = 32 * 1024;
/// ...or this long after the batch's first line, whichever comes first.
pub const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// This thread's lines not yet handed to the writer, and whether a flush
    /// is scheduled for them.
    static BATCH: RefCell<Batch> = const { RefCell::new(Batch(Vec::new(), false)) };
}

/// A thread's pending lines; whatever is left when the thread ends (a proxy
/// runtime shutting down) is handed over then, so a stop loses no line.
struct Batch(Vec<u8>, bool);

impl Drop for Batch {
    fn drop(&mut self) {
        if let (Some((sink, _)), false) = (SINK.get(), self.0.is_empty()) {
            sink(&self.0);
        }
    }
}

/// Writes `e` if the `access` target is enabled; `false` when no sink is
/// installed (the caller logs through `tracing` instead).
pub fn write(e: &Entry<'_>) -> bool {
    let Some((sink, format)) = SINK.get() else {
        return false;
    };
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return true;
    }
    // Lines are batched per thread (like nginx's `access_log ... buffer=`):
    // one hand-over to the writer thread per batch instead of one wake-up of
    // it per request.
    let schedule = BATCH.with_borrow_mut(|Batch(batch, scheduled)| {
        match format {
            LogFormat::Text => text(batch, e),
            LogFormat::Json => json(batch, e),
        }
        if batch.len() >= BATCH_BYTES || UNBATCHED.load(Ordering::Relaxed) {
            sink(batch);
            batch.clear();
            false
        } else {
            !std::mem::replace(scheduled, true)
        }
    });
    if schedule {
        match tokio::runtime::Handle::try_current() {
            // Proxy threads run single-threaded runtimes: the task runs here.
            Ok(rt) => {
                rt.spawn(async {
                    tokio::time::sleep(BATCH_DELAY).await;
                    flush();
                });
            }
            Err(_) => flush(),
        }
    }
    true
}

/// Hands this thread's batch to the writer.
fn flush() {
    let Some((sink, _)) = SINK.get() else {
        return;
    };
    BATCH.with_borrow_mut(|Batch(batch, scheduled)| {
        if !batch.is_empty() {
            sink(batch);
            batch.clear();
        }
        *scheduled = false;
    });
}

fn text(out: &mut Vec<u8>, e: &Entry<'_>) {
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    let _ = write!(out, "{now}  INFO access: client=");
    match e.client {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    let _ = write!(
        out,
        " method={} path={} status={} backend={} attempts={} upstream_ms={} total_ms={} bytes={} request_id={}",
        e.method, e.path, e.status, e.backend, e.attempts, e.upstream_ms, e.total_ms, e.bytes, e.request_id
    );
    if let Some(err) = e.error {
        let _ = write!(out, " error={err:?}");
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, e: &Entry<'_>) {
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    let _ = write!(
        out,
        "{{\"timestamp\":\"{now}\",\"level\":\"INFO\",\"client\":"
    );
    match e.client {
        Some(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
        None => out.extend_from_slice(b"\"-\""),
    }
    out.extend_from_slice(b",\"method\":");
    let _ = serde_json::to_writer(&mut *out, e.method);
    out.extend_from_slice(b",\"path\":");
    let _ = serde_json::to_writer(&mut *out, e.path);
    let _ = write!(out, ",\"status\":{},\"backend\":", e.status);
    let _ = serde_json::to_writer(&mut *out, e.backend);
    let _ = write!(
        out,
        ",\"attempts\":{},\"upstream_ms\":{},\"total_ms\":{},\"bytes\":{},\"request_id\":",
        e.attempts, e.upstream_ms, e.total_ms, e.bytes
    );
    let _ = serde_json::to_writer(&mut *out, e.request_id);
    if let Some(err) = e.error {
        out.extend_from_slice(b",\"error\":");
        let _ = serde_json::to_writer(&mut *out, err);
    }
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: Some("127.0.0.1".parse().unwrap()),
            method: "GET",
            path: "/a\"b",
            status: 200,
            backend: "app-1",
            attempts: 1,
            upstream_ms: 0.25,
            total_ms: 0.5,
            bytes: 12,
            request_id: "rid",
            error: Some("ConnectRefused"),
        }
    }

    #[test]
    fn json_line_is_one_valid_object_with_every_field() {
        let mut out = Vec::new();
        json(&mut out, &entry());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["target"], "access");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_ms"], 0.25);
        assert_eq!(v["error"], "ConnectRefused");
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn text_line_has_field_pairs() {
        let mut out = Vec::new();
        text(&mut out, &entry());
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("  INFO access: client=127.0.0.1 method=GET path=/a\"b status=200 backend=app-1 attempts=1 upstream_ms=0.25 total_ms=0.5 bytes=12 request_id=rid error=\"ConnectRefused\"\n"), "{s}");
    }
}

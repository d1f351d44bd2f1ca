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
use std::time::{Duration, SystemTime};

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
    /// `http/1.0`, `http/1.1` or `h2`.
    pub proto: &'a str,
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
    timestamp(out);
    out.extend_from_slice(b"  INFO access: client=");
    client(out, e.client);
    field(out, b" method=", e.method);
    field(out, b" path=", e.path);
    out.extend_from_slice(b" status=");
    int(out, e.status);
    field(out, b" backend=", e.backend);
    out.extend_from_slice(b" attempts=");
    int(out, e.attempts);
    out.extend_from_slice(b" upstream_ms=");
    millis(out, e.upstream_ms);
    out.extend_from_slice(b" total_ms=");
    millis(out, e.total_ms);
    out.extend_from_slice(b" bytes=");
    int(out, e.bytes);
    field(out, b" request_id=", e.request_id);
    field(out, b" proto=", e.proto);
    if let Some(err) = e.error {
        let _ = write!(out, " error={err:?}");
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, e: &Entry<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"client\":\"");
    // An address or "-": nothing in either needs escaping.
    client(out, e.client);
    out.extend_from_slice(b"\",\"method\":");
    let _ = serde_json::to_writer(&mut *out, e.method);
    out.extend_from_slice(b",\"path\":");
    let _ = serde_json::to_writer(&mut *out, e.path);
    out.extend_from_slice(b",\"status\":");
    int(out, e.status);
    out.extend_from_slice(b",\"backend\":");
    let _ = serde_json::to_writer(&mut *out, e.backend);
    out.extend_from_slice(b",\"attempts\":");
    int(out, e.attempts);
    out.extend_from_slice(b",\"upstream_ms\":");
    millis(out, e.upstream_ms);
    out.extend_from_slice(b",\"total_ms\":");
    millis(out, e.total_ms);
    out.extend_from_slice(b",\"bytes\":");
    int(out, e.bytes);
    out.extend_from_slice(b",\"request_id\":");
    let _ = serde_json::to_writer(&mut *out, e.request_id);
    out.extend_from_slice(b",\"proto\":");
    let _ = serde_json::to_writer(&mut *out, e.proto);
    if let Some(err) = e.error {
        out.extend_from_slice(b",\"error\":");
        let _ = serde_json::to_writer(&mut *out, err);
    }
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

// The pieces of a line, written without `fmt` machinery: `write!` with nine
// arguments and a fresh RFC 3339 timestamp per line was most of the access
// log's cost on the proxy thread (`make bench-peers`, lb as shipped vs access
// log off). Each writes exactly what `Display` would (see the tests).

fn field(out: &mut Vec<u8>, name: &[u8], value: &str) {
    out.extend_from_slice(name);
    out.extend_from_slice(value.as_bytes());
}

fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn client(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        Some(IpAddr::V4(v4)) => {
            let [a, b, c, d] = v4.octets();
            int(out, a);
            for o in [b, c, d] {
                out.push(b'.');
                int(out, o);
            }
        }
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
}

/// A duration in milliseconds as `Display` prints `f64`, for the values lb
/// logs: whole microseconds ÷ 1000 (`1.25`, `3`, `0.007`), or `-1` for "none".
/// Anything else (never produced; kept correct) falls back to `Display`.
fn millis(out: &mut Vec<u8>, ms: f64) {
    let us = (ms * 1e3).round();
    if !(0.0..1e15).contains(&us) || us / 1e3 != ms {
        let _ = write!(out, "{ms}");
        return;
    }
    let us = us as u64;
    int(out, us / 1000);
    let frac = us % 1000;
    if frac != 0 {
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let len = if !frac.is_multiple_of(10) {
            4
        } else if !frac.is_multiple_of(100) {
            3
        } else {
            2
        };
        out.extend_from_slice(&digits[..len]);
    }
}

thread_local! {
    /// This thread's last second and its formatted `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// Now as RFC 3339 UTC with microseconds (`2026-12-02T01:02:03.456789Z`, as
/// `humantime::format_rfc3339_micros`), the date and time of day formatted
/// once per second per thread.
fn timestamp(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    timestamp_at(out, now);
}

fn timestamp_at(out: &mut Vec<u8>, now: Duration) {
    let (secs, micros) = (now.as_secs(), now.subsec_micros());
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            let full = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            )
            .to_string();
            // "YYYY-MM-DDTHH:MM:SSZ": keep all but the 'Z', add the dot.
            if full.len() == 20 {
                prefix[..19].copy_from_slice(&full.as_bytes()[..19]);
                prefix[19] = b'.';
                *cached = secs;
            } else {
                // Years past 9999: not cached, written as humantime does.
                let _ = write!(
                    out,
                    "{}",
                    humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + now)
                );
                return;
            }
        }
        out.extend_from_slice(prefix);
        let mut digits = [b'0'; 7];
        let mut m = micros;
        for d in digits[..6].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        digits[6] = b'Z';
        out.extend_from_slice(&digits);
    });
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
            proto: "http/1.1",
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
        assert_eq!(v["proto"], "http/1.1");
        assert_eq!(v["level"], "INFO");
    }

    /// The formatter as it was, through `fmt` (the reference for the fast one).
    fn reference_text(e: &Entry<'_>) -> String {
        let client = e.client.map_or("-".to_string(), |ip| ip.to_string());
        let mut s = format!(
            "  INFO access: client={client} method={} path={} status={} backend={} attempts={} upstream_ms={} total_ms={} bytes={} request_id={} proto={}",
            e.method, e.path, e.status, e.backend, e.attempts, e.upstream_ms, e.total_ms, e.bytes, e.request_id, e.proto
        );
        if let Some(err) = e.error {
            s.push_str(&format!(" error={err:?}"));
        }
        s + "\n"
    }

    #[test]
    fn fast_formatter_writes_what_display_wrote() {
        let ips: [Option<IpAddr>; 5] = [
            None,
            Some("0.0.0.0".parse().unwrap()),
            Some("203.0.113.255".parse().unwrap()),
            Some("::1".parse().unwrap()),
            Some("2001:db8::8a2e:370:7334".parse().unwrap()),
        ];
        let mut n = 0;
        for (i, client) in ips.into_iter().enumerate() {
            for us in [
                0u64,
                1,
                7,
                10,
                100,
                999,
                1000,
                1001,
                1010,
                1100,
                12_345,
                60_000_000,
                3_600_000_007,
            ] {
                let mut e = entry();
                e.client = client;
                e.upstream_ms = if i == 0 { -1.0 } else { us as f64 / 1e3 };
                e.total_ms = (us * 3 + 1) as f64 / 1e3;
                e.status = [0, 200, 499, 503, 65535][i];
                e.bytes = us * 1_000_003;
                e.error = (i % 2 == 0).then_some("Downstream \"closed\"");
                let mut out = Vec::new();
                text(&mut out, &e);
                let line = String::from_utf8(out).unwrap();
                // The timestamp is the only part that differs: 27 bytes.
                assert_eq!(&line[27..], reference_text(&e), "{line}");
                let mut js = Vec::new();
                json(&mut js, &e);
                let v: serde_json::Value = serde_json::from_slice(&js).unwrap();
                assert_eq!(v["upstream_ms"].as_f64(), Some(e.upstream_ms));
                assert_eq!(v["total_ms"].as_f64(), Some(e.total_ms));
                assert_eq!(v["bytes"].as_u64(), Some(e.bytes));
                assert_eq!(
                    v["client"],
                    client.map_or("-".to_string(), |ip| ip.to_string())
                );
                n += 1;
            }
        }
        assert_eq!(n, 65);
    }

    #[test]
    fn millis_matches_display_for_every_microsecond_value() {
        // Every third microsecond value of the first 10 s, then sparse beyond.
        let mut out = Vec::new();
        for us in (0..10_000_000u64)
            .step_by(3)
            .chain([u32::MAX as u64, 1 << 40])
        {
            let ms = us as f64 / 1e3;
            out.clear();
            millis(&mut out, ms);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                ms.to_string(),
                "{us} µs"
            );
        }
        for odd in [-1.0, 0.0001, 1.23456, f64::NAN, 1e300] {
            out.clear();
            millis(&mut out, odd);
            assert_eq!(std::str::from_utf8(&out).unwrap(), odd.to_string());
        }
    }

    #[test]
    fn timestamps_are_humantime_rfc3339_micros() {
        let mut out = Vec::new();
        // Within one second (cached prefix), across a second, a day, a year.
        for (s, us) in [
            (0u64, 0u32),
            (1_764_633_600, 5),
            (1_764_633_600, 999_999),
            (1_764_633_601, 0),
            (1_767_225_599, 123_456),
            (1_767_225_600, 1),
            (253_402_300_799, 42),
        ] {
            out.clear();
            let at = Duration::from_secs(s) + Duration::from_micros(us as u64);
            timestamp_at(&mut out, at);
            let want = humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + at).to_string();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
    }

    #[test]
    fn text_line_has_field_pairs() {
        let mut out = Vec::new();
        text(&mut out, &entry());
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("  INFO access: client=127.0.0.1 method=GET path=/a\"b status=200 backend=app-1 attempts=1 upstream_ms=0.25 total_ms=0.5 bytes=12 request_id=rid proto=http/1.1 error=\"ConnectRefused\"\n"), "{s}");
    }
}

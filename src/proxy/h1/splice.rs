//! A long response body moved from the backend's socket to the client's
//! through a pipe with `splice(2)`, never copied through user space: the
//! kernel passes the received pages on (on loopback and most NICs the copy
//! is most of a bulk transfer's CPU). Only for a plain-TCP client (TLS must
//! encrypt in user space) and a body of known length passed on as it is.
//!
//! Each step moves what one call can: up to a pipe's worth from the
//! backend, then all of it to the client, so the pipe is empty whenever a
//! read waits and full data never waits on a read. A pipe is two
//! descriptors: each thread keeps one spare, and at most [`MAX_PIPES`] in
//! use, beyond which bodies take the copying loop.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::relay::FAIR_SHARE;

/// Bodies with at least this much left after the head's first read are
/// spliced (below it the pipe and the client's registration cost more than
/// the copies they save).
pub const SPLICE_MIN: u64 = 256 * 1024;

/// Pipes one thread has in use at most (two descriptors each).
const MAX_PIPES: usize = 32;

thread_local! {
    /// A spare pipe, empty.
    static SPARE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
    /// Pipes in use on this thread.
    static IN_USE: Cell<usize> = const { Cell::new(0) };
}

/// A pipe: its read and write ends, non-blocking.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors this function owns.
        Ok(unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// A pipe lent to one body; an empty one goes back to the thread's spare.
struct Lent {
    pipe: Option<Pipe>,
    empty: bool,
}

impl Lent {
    /// The spare pipe or a new one; `None` when this thread has
    /// [`MAX_PIPES`] in use or no descriptor is left.
    fn take() -> Option<Lent> {
        if IN_USE.with(Cell::get) >= MAX_PIPES {
            return None;
        }
        let pipe = match SPARE.with(|s| s.borrow_mut().take()) {
            Some(p) => p,
            None => Pipe::new().ok()?,
        };
        IN_USE.with(|n| n.set(n.get() + 1));
        Some(Lent {
            pipe: Some(pipe),
            empty: true,
        })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("lent until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        IN_USE.with(|n| n.set(n.get().saturating_sub(1)));
        // A pipe with bytes left in it (a body cut off) is closed.
        if self.empty {
            let pipe = self.pipe.take();
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.is_none() {
                    *s = pipe;
                }
            });
        }
    }
}

/// `splice(2)` of up to `len` bytes from `from` to `to`, non-blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, no offsets (sockets and pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// How a spliced body ended.
pub enum Spliced {
    /// Every byte reached the client.
    Done,
    /// The backend or the client failed mid-body.
    Broken,
    /// Not spliced (no pipe to be had): nothing was moved.
    Declined,
}

/// Moves the body's next `remaining` bytes from `upc` to the client's socket
/// `client` (a plain TCP socket with nothing buffered in front of it),
/// counting them in `bytes`. Each wait for the backend is bounded by
/// `read_timeout`, each for the client to take bytes by `send_timeout`.
pub async fn body(
    upc: &TcpStream,
    client: RawFd,
    mut remaining: u64,
    read_timeout: Duration,
    send_timeout: Duration,
    bytes: &mut u64,
) -> Spliced {
    let Some(mut lent) = Lent::take() else {
        return Spliced::Declined;
    };
    // The client's socket registered with this thread's reactor through a
    // duplicate (its stream's own registration is inside Pingora's `Stream`).
    // SAFETY: `client` is open for this call (its connection owns it).
    let dup = unsafe { libc::fcntl(client, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Spliced::Declined;
    }
    // SAFETY: a fresh descriptor this function owns.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: an `OwnedFd` keeps its descriptor open and the same until
    // dropped, which the `AsyncFd` owning it does last.
    let Ok(out) = (unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }) else {
        return Spliced::Declined;
    };
    let (pr, pw) = (lent.pipe().r.as_raw_fd(), lent.pipe().w.as_raw_fd());
    let from = upc.as_raw_fd();
    let mut since_yield = 0;
    while remaining > 0 {
        let want = remaining.min(1 << 30) as usize;
        // Into the (empty) pipe: EAGAIN can only mean nothing to read.
        let filled = timeout(read_timeout, async {
            loop {
                upc.readable().await?;
                match upc.try_io(Interest::READABLE, || splice(from, pw, want)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        })
        .await;
        let mut in_pipe = match filled {
            Ok(Ok(n)) if n > 0 => n,
            // Closed early, failed or late.
            _ => return Spliced::Broken,
        };
        lent.empty = false;
        remaining -= in_pipe as u64;
        // All of it on to the client: EAGAIN can only mean its socket is full.
        while in_pipe > 0 {
            let sent = timeout(send_timeout, async {
                loop {
                    let mut ready = out.writable().await?;
                    match ready.try_io(|o| splice(pr, o.as_raw_fd(), in_pipe)) {
                        Ok(r) => return r,
                        Err(_would_block) => continue,
                    }
                }
            })
            .await;
            match sent {
                Ok(Ok(n)) if n > 0 => {
                    in_pipe -= n;
                    *bytes += n as u64;
                    since_yield += n;
                }
                _ => return Spliced::Broken,
            }
        }
        lent.empty = true;
        if since_yield >= FAIR_SHARE {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    Spliced::Done
}

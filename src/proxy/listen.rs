//! lb's listeners: `server.listen` and `[tls] listen`, accepted on every
//! worker thread.
//!
//! Each of the `server.threads` workers is a single-threaded tokio runtime
//! that accepts from every listening socket (each through its own
//! duplicate of the descriptor, registered with its own reactor) and serves
//! what it accepted, start to end, on itself: a connection never changes
//! thread and its I/O is never woken through another thread's reactor. An
//! idle worker is the one that returns to `accept` first, so new
//! connections go where there is time for them (nginx's model without
//! `reuseport`; no socket per thread, so nothing waiting in a closed
//! socket's queue is lost at an upgrade).
//!
//! The accept loop is lb's own rather than Pingora's so that:
//! - at `server.max_connections` it stops accepting (new clients wait in the
//!   kernel's backlog, as with HAProxy's `maxconn`) instead of accepting and
//!   closing;
//! - out of descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) it
//!   pauses until a connection closes (100 ms at most), logging at most one
//!   line per second; Pingora's loop sleeps on EMFILE only and spins,
//!   logging every turn, on ENFILE.
//!
//! The sockets are kept in Pingora's table of listening descriptors, bound
//! here or taken from it when this process is an upgrade's successor, so an
//! upgrade hands them over as it does the admin API's
//! ([`crate::upgrade::AdminService`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};

use super::FrontDoor;

/// Pingora's listen backlog (`LISTENER_BACKLOG`), kept: connections that
/// arrive while accepting is paused wait here.
const BACKLOG: i32 = 65535;

/// How long an accept loop out of descriptors waits at most for a
/// connection to close before it tries again (descriptors also free when
/// upstream connections close, which wakes nobody).
const SHORTAGE_RECHECK: Duration = Duration::from_millis(100);

/// One listening address and the door its connections enter by.
struct Door {
    addr: SocketAddr,
    door: Arc<FrontDoor>,
}

/// The proxy's listeners as a Pingora service: started by Pingora's server
/// (so they are in its table of listening fds), served by lb's workers.
pub struct Listening {
    doors: Vec<Door>,
    threads: usize,
}

impl Listening {
    /// `server.threads` workers, each accepting on every `(addr, door)`.
    pub fn new(threads: usize, doors: Vec<(SocketAddr, Arc<FrontDoor>)>) -> Self {
        Listening {
            doors: doors
                .into_iter()
                .map(|(addr, door)| Door { addr, door })
                .collect(),
            threads: threads.max(1),
        }
    }
}

#[async_trait]
impl ServiceWithDependents for Listening {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let mut sockets = Vec::with_capacity(self.doors.len());
        for d in &self.doors {
            match listener(d.addr, fds.as_ref()) {
                Ok(l) => sockets.push((l, d.door.clone())),
                Err(e) => {
                    // Checked free at start (`check_free`): another process
                    // took the port since. Nothing to serve without it.
                    tracing::error!(listen = %d.addr, error = %e, "cannot listen");
                    std::process::exit(1);
                }
            }
        }
        ready.notify_ready();
        // Workers 1.. on threads of their own; worker 0 is this one, the
        // service's own runtime thread.
        for i in 1..self.threads {
            let sockets = match dup_all(&sockets) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, workers = i, "cannot start every worker thread");
                    break;
                }
            };
            let shutdown = shutdown.clone();
            let workers = self.threads;
            let spawned = std::thread::Builder::new()
                .name("lb".into())
                .spawn(move || {
                    crate::metrics::set_worker(i);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a worker's runtime");
                    rt.block_on(async {
                        worker(sockets, workers, shutdown).await;
                        // What this thread accepted is served until the
                        // drain (`GracefulOnSignal`) ends the process.
                        std::future::pending::<()>().await
                    });
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, workers = i, "cannot start every worker thread");
                break;
            }
        }
        crate::metrics::set_worker(0);
        match dup_all(&sockets) {
            Ok(mine) => worker(mine, self.threads, shutdown).await,
            Err(e) => tracing::error!(error = %e, "worker 0 cannot listen"),
        }
        // Accepting has stopped (a successor holds its own copies of the
        // sockets): closing them now refuses new connections at once.
        drop(sockets);
    }

    fn name(&self) -> &str {
        "lb"
    }

    /// Worker 0 runs on the service's thread; the others on their own.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    /// Their keys in the table: Pingora closes inherited sockets no service claims.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.doors.iter().map(|d| d.addr.to_string()).collect())
    }
}

/// The socket listening on `addr`: the one handed over by the old process
/// (in `fds`), else a new one, added to `fds` for the next upgrade.
pub(crate) fn listener(
    addr: SocketAddr,
    fds: Option<&ListenFds>,
) -> std::io::Result<std::net::TcpListener> {
    let key = addr.to_string();
    if let Some(fd) = fds.and_then(|f| f.lock().get(&key).copied()) {
        // SAFETY: the fd arrived from the old process over SCM_RIGHTS and
        // nothing else in this process owns it; the table only records its
        // number (for the next upgrade), as for Pingora's listeners.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // On Linux `listen` again updates the backlog, as Pingora does.
        // SAFETY: a valid listening socket.
        unsafe { libc::listen(l.as_raw_fd(), BACKLOG) };
        tracing::info!(listen = %addr, "listening on the socket handed over");
        return Ok(l);
    }
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As Pingora's (and std's) listeners: a restart can bind while the old
    // process's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let l = socket.listen(BACKLOG as u32)?.into_std()?;
    if let Some(fds) = fds {
        fds.lock().add(key, l.as_raw_fd());
    }
    Ok(l)
}

/// A duplicate of each socket, for one worker's reactor.
fn dup_all(
    sockets: &[(std::net::TcpListener, Arc<FrontDoor>)],
) -> std::io::Result<Vec<(std::net::TcpListener, Arc<FrontDoor>)>> {
    sockets
        .iter()
        .map(|(l, door)| Ok((l.try_clone()?, door.clone())))
        .collect()
}

/// One worker: an accept loop per listening socket, each serving what it
/// accepts on this thread; returns when accepting stops (shutdown).
async fn worker(
    sockets: Vec<(std::net::TcpListener, Arc<FrontDoor>)>,
    workers: usize,
    shutdown: ShutdownWatch,
) {
    let mut loops = tokio::task::JoinSet::new();
    for (l, door) in sockets {
        let l = l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l));
        match l {
            Ok(l) => {
                loops.spawn(accept_loop(l, door, workers, shutdown.clone()));
            }
            Err(e) => tracing::error!(error = %e, "a worker cannot listen"),
        }
    }
    // Until shutdown: then accepting stops.
    while loops.join_next().await.is_some() {}
}

/// Accepts on `l` until shutdown, serving each connection through `door` on
/// this thread.
async fn accept_loop(
    l: tokio::net::TcpListener,
    door: Arc<FrontDoor>,
    workers: usize,
    mut shutdown: ShutdownWatch,
) {
    loop {
        // At `server.max_connections`: new clients wait in the backlog.
        door.room().await;
        // Every worker is woken for each new connection and the first to
        // accept takes it, so a burst can land mostly on one. A worker more
        // than one connection past its share leaves new ones to the others
        // (one of them is always under its share) and looks again shortly.
        if over_share(SERVING.with(Cell::get), door.open(), workers) {
            tokio::select! {
                _ = tokio::time::sleep(BALANCE_RECHECK) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return }
                continue;
            }
            a = l.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Another worker may have taken the last place meanwhile:
                // this connection waits for one (never closed for it).
                let place = door.place().await;
                let serving = Serving::start();
                let fd = tcp.as_raw_fd();
                let stream = stream(tcp, peer);
                let door = door.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    door.serve(stream, fd, place, &shutdown).await;
                    drop(serving);
                });
            }
            Err(e) => accept_failed(&door, &e).await,
        }
    }
}

/// How often a worker past its share of connections looks again.
const BALANCE_RECHECK: Duration = Duration::from_millis(10);

thread_local! {
    /// Connections this worker serves now (both listeners): they never
    /// leave the thread, so a plain cell counts them.
    static SERVING: Cell<usize> = const { Cell::new(0) };
}

/// One connection of this worker's, counted in [`SERVING`] while it lives.
struct Serving;

impl Serving {
    fn start() -> Serving {
        SERVING.with(|s| s.set(s.get() + 1));
        Serving
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.with(|s| s.set(s.get().saturating_sub(1)));
    }
}

/// Whether a worker serving `mine` of the `open` connections of `workers`
/// is more than one past its share. Not all of them can be: summed,
/// `mine × workers > open + workers` would give `open × workers > open ×
/// workers + workers²`.
fn over_share(mine: usize, open: usize, workers: usize) -> bool {
    workers > 1 && mine * workers > open + workers
}

/// When an accept loop last logged a failure: at most one line per second
/// for all of them ([`crate::clock::once_a_second`]).
static FAILURE_LOGGED: AtomicU64 = AtomicU64::new(0);

/// After a failed `accept`: a connection that died in the backlog
/// (ECONNABORTED, EPROTO…) is skipped; anything else (out of descriptors or
/// kernel memory, above all) pauses until a connection closes or
/// [`SHORTAGE_RECHECK`] passes, so a failure that repeats is never a busy
/// loop.
async fn accept_failed(door: &FrontDoor, e: &std::io::Error) {
    if matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR)
    ) {
        return;
    }
    if crate::clock::once_a_second(&FAILURE_LOGGED) {
        tracing::warn!(error = %e, "accept failed: accepting paused until a descriptor frees");
    }
    door.until_a_close(SHORTAGE_RECHECK).await;
}

/// The accepted socket as Pingora's stream, unbuffered (lb's paths read
/// into buffers of their own), its peer known without a syscall.
fn stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> Stream {
    // As Pingora's listener: responses leave as soon as they are written.
    let _ = tcp.set_nodelay(true);
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    let mut s = L4Stream::from(tcp);
    s.set_socket_digest(digest);
    Box::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_past_its_share_by_more_than_one_leaves_connections_to_others() {
        // One worker: always accepts.
        assert!(!over_share(100, 100, 1));
        // 2 workers, 64 connections: a share of 32, 33 is within one.
        assert!(!over_share(33, 64, 2));
        assert!(over_share(34, 64, 2));
        // Small counts: 2 of 2 is one past a share of 1.
        assert!(!over_share(2, 2, 2));
        assert!(over_share(3, 3, 2));
        // 4 workers, 10 connections: 2.5 each; 3 is within one, 4 is past.
        assert!(!over_share(3, 10, 4));
        assert!(over_share(4, 10, 4));
        // Never all of them: for every split of 0..=40 connections over 3
        // workers, one worker at least may accept.
        for a in 0..=40usize {
            for b in 0..=(40 - a) {
                let c = 40 - a - b;
                assert!(
                    [a, b, c].iter().any(|&m| !over_share(m, 40, 3)),
                    "{a} {b} {c}"
                );
            }
        }
    }
}

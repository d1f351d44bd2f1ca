//! lb's listeners: `server.listen` and `[tls] listen`, accepted on every
//! worker thread.
//!
//! Each of the `server.threads` workers is a single-threaded tokio runtime
//! that accepts from every listening socket (each through its own
//! duplicate of the descriptor, registered with its own reactor) and serves
//! what it accepted, start to end, on itself: its I/O is never woken
//! through another thread's reactor. An idle worker is the one that returns
//! to `accept` first, so new connections go where there is time for them
//! (nginx's model without `reuseport`; no socket per thread, so nothing
//! waiting in a closed socket's queue is lost at an upgrade). Every worker
//! is woken for each new connection and the first to accept takes it, so a
//! burst can land mostly on one: a worker more than one connection past its
//! share hands what it accepts to the lightest worker instead, the one time
//! a connection changes thread.
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

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::mpsc;

use super::front::Accepted;
use super::policy::limits::ConnGuard;
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
        let (crew, mut inboxes) = Crew::new(self.threads);
        let inbox0 = inboxes.remove(0);
        // Workers 1.. on threads of their own; worker 0 is this one, the
        // service's own runtime thread.
        for (i, inbox) in (1..self.threads).zip(inboxes) {
            let sockets = match dup_all(&sockets) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, workers = i, "cannot start every worker thread");
                    break;
                }
            };
            let shutdown = shutdown.clone();
            let crew = crew.clone();
            let spawned = std::thread::Builder::new()
                .name("lb".into())
                .spawn(move || {
                    crate::metrics::set_worker(i);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a worker's runtime");
                    rt.block_on(async {
                        worker(i, sockets, crew, inbox, shutdown).await;
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
            Ok(mine) => worker(0, mine, crew, inbox0, shutdown).await,
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
        // Connections already queued (an old binary's socket without it)
        // keep Nagle: a one-off at that upgrade, bounded by the backlog.
        nodelay(&l);
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
    // Before `listen`, so every connection accepted from it inherits it.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let l = socket.listen(BACKLOG as u32)?.into_std()?;
    if let Some(fds) = fds {
        fds.lock().add(key, l.as_raw_fd());
    }
    Ok(l)
}

/// `TCP_NODELAY` on a listening socket: Linux gives it to every connection
/// accepted from it, so responses leave as soon as they are written (as from
/// Pingora's listener) without a `setsockopt` per connection. Failing only
/// costs latency: warned, not fatal (the socket is already this process's).
fn nodelay(l: &std::net::TcpListener) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on a listening socket");
    }
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

/// The workers as each sees the others: how many connections each serves,
/// and where to hand one a connection.
struct Crew {
    serving: Box<[Count]>,
    inboxes: Box<[mpsc::UnboundedSender<HandOff>]>,
}

/// One worker's connection count, on a cache line of its own (only its
/// worker writes it).
#[repr(align(128))]
#[derive(Default)]
struct Count(AtomicUsize);

/// An accepted connection handed to another worker, its place taken.
struct HandOff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    door: Arc<FrontDoor>,
    place: ConnGuard,
}

impl Crew {
    /// `n` workers, and each one's inbox.
    fn new(n: usize) -> (Arc<Crew>, Vec<mpsc::UnboundedReceiver<HandOff>>) {
        let (inboxes, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let crew = Crew {
            serving: (0..n).map(|_| Count::default()).collect(),
            inboxes: inboxes.into(),
        };
        (Arc::new(crew), rxs)
    }

    /// The worker serving the fewest connections.
    fn lightest(&self) -> usize {
        (0..self.serving.len())
            .min_by_key(|&i| self.serving[i].0.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Worker `me`: an accept loop per listening socket, and its inbox of
/// connections other workers hand it; returns when accepting stops
/// (shutdown).
async fn worker(
    me: usize,
    sockets: Vec<(std::net::TcpListener, Arc<FrontDoor>)>,
    crew: Arc<Crew>,
    mut inbox: mpsc::UnboundedReceiver<HandOff>,
    shutdown: ShutdownWatch,
) {
    let mut loops = tokio::task::JoinSet::new();
    for (l, door) in sockets {
        let l = l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l));
        match l {
            Ok(l) => {
                loops.spawn(accept_loop(me, l, door, crew.clone(), shutdown.clone()));
            }
            Err(e) => tracing::error!(error = %e, "a worker cannot listen"),
        }
    }
    let mut stop = shutdown.clone();
    let handed = crew.clone();
    loops.spawn(async move {
        loop {
            let h = tokio::select! {
                h = inbox.recv() => h,
                changed = stop.changed() => {
                    if changed.is_ok() && !*stop.borrow() { continue }
                    // Those already handed over are served, then no more.
                    inbox.close();
                    inbox.recv().await
                }
            };
            let Some(h) = h else { return };
            // Registered with this worker's reactor; counted in its share
            // by the worker that handed it over.
            match tokio::net::TcpStream::from_std(h.tcp) {
                Ok(tcp) => {
                    let accepted = Accepted {
                        tcp,
                        peer: h.peer,
                        place: h.place,
                    };
                    serve_counted(me, &handed, h.door, accepted, &stop);
                }
                Err(e) => {
                    handed.serving[me].0.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "a handed-over connection lost");
                }
            }
        }
    });
    // Until shutdown: then accepting stops.
    while loops.join_next().await.is_some() {}
}

/// Serves a connection on this worker, counted in its share while it lives.
fn serve_here(
    me: usize,
    crew: &Arc<Crew>,
    door: Arc<FrontDoor>,
    accepted: Accepted,
    shutdown: &ShutdownWatch,
) {
    crew.serving[me].0.fetch_add(1, Ordering::Relaxed);
    serve_counted(me, crew, door, accepted, shutdown);
}

/// [`serve_here`] for a connection already counted in this worker's share.
fn serve_counted(
    me: usize,
    crew: &Arc<Crew>,
    door: Arc<FrontDoor>,
    accepted: Accepted,
    shutdown: &ShutdownWatch,
) {
    let accepted = Box::new(accepted);
    let crew = crew.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        door.serve(accepted, &shutdown).await;
        crew.serving[me].0.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Accepts on `l` until shutdown, serving each connection through `door`:
/// on this worker, unless it is more than one connection past its share
/// (every worker is woken for each new connection and the first to accept
/// takes it, so a burst can land mostly on one). Then the connection goes
/// to the lightest worker, the only time one changes thread.
async fn accept_loop(
    me: usize,
    l: tokio::net::TcpListener,
    door: Arc<FrontDoor>,
    crew: Arc<Crew>,
    mut shutdown: ShutdownWatch,
) {
    let workers = crew.serving.len();
    loop {
        // At `server.max_connections`: new clients wait in the backlog.
        door.room().await;
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return }
                continue;
            }
            a = l.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(&door, &e).await;
                continue;
            }
        };
        // Another worker may have taken the last place meanwhile: this
        // connection waits for one (never closed for it).
        let place = door.place().await;
        let mine = crew.serving[me].0.load(Ordering::Relaxed);
        if over_share(mine, door.open(), workers) {
            let to = crew.lightest();
            if to != me {
                // Out of this reactor, into the other's.
                match tcp.into_std() {
                    Ok(tcp) => {
                        let h = HandOff {
                            tcp,
                            peer,
                            door: door.clone(),
                            place,
                        };
                        // Counted in its share from now: a burst handed
                        // over before that worker runs spreads, instead of
                        // all going to the one that looked lightest.
                        crew.serving[to].0.fetch_add(1, Ordering::Relaxed);
                        if let Err(mpsc::error::SendError(h)) = crew.inboxes[to].send(h) {
                            crew.serving[to].0.fetch_sub(1, Ordering::Relaxed);
                            // That worker is gone: served here after all.
                            if let Ok(tcp) = tokio::net::TcpStream::from_std(h.tcp) {
                                let accepted = Accepted {
                                    tcp,
                                    peer,
                                    place: h.place,
                                };
                                serve_here(me, &crew, h.door, accepted, &shutdown);
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "a connection lost handing it over"),
                }
                continue;
            }
        }
        let accepted = Accepted { tcp, peer, place };
        serve_here(me, &crew, door.clone(), accepted, &shutdown);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted connections inherit `TCP_NODELAY` from the listening
    /// socket (lb sets it nowhere else); a bound socket handed over by an
    /// old process gets it too.
    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let accepted_nodelay = |l: &std::net::TcpListener| {
            l.set_nonblocking(false).unwrap();
            let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            a.nodelay().unwrap()
        };
        let l = listener("127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert!(accepted_nodelay(&l));
        // An inherited socket (from the table), bound without the option.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        assert!(!accepted_nodelay(&plain));
        let fds: ListenFds = Arc::new(pingora::server::Fds::new().into());
        use std::os::fd::IntoRawFd;
        fds.lock().add(addr.to_string(), plain.into_raw_fd());
        let l = listener(addr, Some(&fds)).unwrap();
        assert!(accepted_nodelay(&l));
    }

    #[test]
    fn a_hand_off_goes_to_the_lightest_worker() {
        let (crew, _inboxes) = Crew::new(3);
        for (i, n) in [5, 2, 4].into_iter().enumerate() {
            crew.serving[i].0.store(n, Ordering::Relaxed);
        }
        assert_eq!(crew.lightest(), 1);
        crew.serving[2].0.store(0, Ordering::Relaxed);
        assert_eq!(crew.lightest(), 2);
        // Each count on a cache line of its own.
        assert_eq!(std::mem::align_of::<Count>(), 128);
    }

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

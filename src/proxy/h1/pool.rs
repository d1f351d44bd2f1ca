//! Upstream connections: opened fresh, or idle ones kept per proxy thread.
//!
//! Each worker thread runs its own single-threaded runtime (`work_stealing =
//! false`), so a connection parked here is only ever used by the thread whose
//! reactor it is registered with: no lock, no cross-thread wake-up, no watcher
//! task per connection. Liveness is checked when a connection is taken out (a
//! non-blocking read that costs no syscall while the socket is quiet), and a
//! per-thread sweeper closes connections idle longer than
//! `timeouts.upstream_idle` so backends never wait on a socket lb forgot.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::proxy::policy::Failure;

/// Idle connections kept per backend per thread (nginx `keepalive 128`-like).
pub const MAX_IDLE_PER_BACKEND: usize = 128;

struct Idle {
    conn: TcpStream,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    sweeper: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// Takes the most recently parked live connection to `addr`, if any.
pub fn take(addr: SocketAddr, max_idle: Duration) -> Option<TcpStream> {
    POOL.with_borrow_mut(|p| {
        let list = p.idle.get_mut(&addr)?;
        while let Some(Idle { conn, since }) = list.pop() {
            if since.elapsed() < max_idle && alive(&conn) {
                return Some(conn);
            }
        }
        None
    })
}

/// Parks `conn` for reuse (dropped instead when the pool for `addr` is full or
/// reuse is off).
pub fn put(addr: SocketAddr, conn: TcpStream, max_idle: Duration) {
    if max_idle.is_zero() {
        return;
    }
    let start_sweeper = POOL.with_borrow_mut(|p| {
        let list = p.idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        !std::mem::replace(&mut p.sweeper, true)
    });
    if start_sweeper {
        tokio::spawn(sweep(max_idle));
    }
}

/// Whether a parked connection still looks usable: no EOF, no unexpected
/// bytes, no error. Readiness is tracked by the reactor, so a quiet socket
/// answers `WouldBlock` without a syscall.
fn alive(conn: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Closes this thread's connections idle longer than `max_idle`, forever (the
/// task ends with the thread's runtime).
async fn sweep(max_idle: Duration) {
    let tick = (max_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        POOL.with_borrow_mut(|p| {
            for list in p.idle.values_mut() {
                // Parked in time order: the stale ones are at the front.
                let stale = list.partition_point(|i| now.duration_since(i.since) >= max_idle);
                list.drain(..stale);
            }
            p.idle.retain(|_, l| !l.is_empty());
        });
    }
}

/// Opens a fresh upstream connection.
pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(c)) => {
            let _ = c.set_nodelay(true);
            Ok(c)
        }
        Ok(Err(e)) => Err(Failure::of_connect(&e)),
        Err(_) => Err(Failure::ConnectTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reuses_live_connections_and_drops_closed_or_stale_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = Duration::from_secs(5);

        let a = TcpStream::connect(addr).await.unwrap();
        let (mut server_a, _) = listener.accept().await.unwrap();
        let a_port = a.local_addr().unwrap().port();
        put(addr, a, idle);
        let a = take(addr, idle).expect("a live parked connection is reused");
        assert_eq!(a.local_addr().unwrap().port(), a_port);
        assert!(
            take(addr, idle).is_none(),
            "taken connections leave the pool"
        );

        // The backend closes a parked connection: it is not handed out.
        put(addr, a, idle);
        server_a.shutdown().await.unwrap();
        drop(server_a);
        // Let the reactor see the FIN.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(addr, idle).is_none(), "a closed connection is dropped");

        // Older than the idle limit: dropped.
        let b = TcpStream::connect(addr).await.unwrap();
        let _server_b = listener.accept().await.unwrap();
        put(addr, b, idle);
        assert!(take(addr, Duration::ZERO).is_none());
    }
}

//! The old process's side of an upgrade: start the successor (SIGUSR2), send
//! it the listening sockets over `server.upgrade_sock`, wait for its
//! confirmation on `<upgrade_sock>.ready`. Blocking code, run on a thread of
//! its own: every wait is a short poll against a deadline, and a successor
//! this process started is watched for an early exit.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pingora::server::ListenFds;

use super::{ready_path, CONFIRM_LIMIT, STARTUP_LIMIT};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Pingora's receiver reads the addresses into 2048 bytes and at most 32 fds.
const MAX_PAYLOAD: usize = 2048;
const MAX_FDS: usize = 32;

/// What asked for the hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGUSR2: start the successor, then hand over.
    Usr2,
    /// SIGQUIT: hand over to a successor already waiting, if any.
    Quit,
}

/// How a hand-over ended.
#[derive(Debug)]
pub enum Outcome {
    /// The successor (this pid) serves: stop accepting and drain.
    TookOver(u32),
    /// SIGQUIT and nobody listens on `upgrade_sock`: a graceful stop.
    NoSuccessor,
    /// Keep serving; why the upgrade failed.
    Failed(String),
}

/// Hands this process's listening sockets (`fds`) over through `sock`.
pub fn run(trigger: Trigger, sock: &Path, fds: &ListenFds) -> Outcome {
    let ready = match ReadySocket::bind(sock) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    let mut child = None;
    if trigger == Trigger::Usr2 {
        match start_successor() {
            Ok(c) => child = Some(c),
            Err(e) => return Outcome::Failed(e),
        }
    }
    let outcome = hand_over(trigger, sock, fds, &ready, child.as_mut());
    if let (Outcome::Failed(_), Some(c)) = (&outcome, child.as_mut()) {
        // Never leave a successor of ours half-started (or a zombie).
        let _ = c.kill();
        let _ = c.wait();
    }
    outcome
}

fn hand_over(
    trigger: Trigger,
    sock: &Path,
    fds: &ListenFds,
    ready: &ReadySocket,
    mut child: Option<&mut Child>,
) -> Outcome {
    let deadline = Instant::now() + STARTUP_LIMIT;
    let stream = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            // Nobody waiting (no file, or a stale one).
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                if trigger == Trigger::Quit {
                    return Outcome::NoSuccessor;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return fail(format!("cannot connect to {}: {e}", sock.display())),
        }
        if let Some(why) = child.as_deref_mut().and_then(exited) {
            return fail(format!("the successor {why} before taking the sockets"));
        }
        if Instant::now() >= deadline {
            return fail(format!(
                "the successor did not open {} within {STARTUP_LIMIT:?}",
                sock.display()
            ));
        }
        std::thread::sleep(POLL);
    };
    let (peer, uid) = peer_cred(&stream).unzip();
    // A default `upgrade_sock` sits in /tmp: only a process of this user
    // gets the sockets.
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid != Some(me) {
        return fail(format!(
            "{} is held by a process of another user ({uid:?}, not {me}); nothing sent",
            sock.display()
        ));
    }
    if let Err(e) = send(&stream, fds) {
        return fail(format!(
            "cannot send the sockets to {}: {e}",
            sock.display()
        ));
    }
    drop(stream);
    tracing::info!(successor = ?peer, "upgrade: listening sockets sent");
    match ready.wait(child, peer) {
        Ok(pid) => Outcome::TookOver(pid),
        Err(why) => {
            // It holds our sockets and may accept on them: stop it.
            if let Some(pid) = peer.and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: kill(2) of the process on the other end of the
                // upgrade socket, which took the sockets and never confirmed.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            fail(format!("{why}; the successor ({peer:?}) was killed"))
        }
    }
}

fn fail(why: String) -> Outcome {
    Outcome::Failed(why)
}

/// `Some("exited with ...")` once `child` has exited.
fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("exited ({status})")),
        Ok(None) => None,
        Err(e) => Some(format!("cannot be watched ({e})")),
    }
}

/// Starts the binary now at this process's path with its arguments and
/// `--upgrade`. `/proc/self/exe` names the file this process was started
/// from, with " (deleted)" once a new binary was moved over it: the path
/// without that suffix is where the new binary is.
fn start_successor() -> Result<Child, String> {
    let exe = own_path().map_err(|e| format!("cannot find this binary's path: {e}"))?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if !args.iter().any(|a| a == "--upgrade") {
        args.push("--upgrade".into());
    }
    let child = Command::new(&exe)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    tracing::info!(successor = child.id(), binary = %exe.display(), "SIGUSR2: started a successor");
    Ok(child)
}

fn own_path() -> io::Result<PathBuf> {
    let link = std::fs::read_link("/proc/self/exe")?;
    let s = link.as_os_str().to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => link,
    })
}

/// The (pid, uid) of the process on the other end, if the kernel says.
fn peer_cred(s: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writing at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
}

/// Sends the table in Pingora's format (`Fds::send_to_sock`'s): the keys
/// joined by spaces as the payload, the fds in the same order as one
/// `SCM_RIGHTS` message. Pingora's own sender retries connecting for 6 s
/// and gives no peer: lb connects itself, and needs one sendmsg.
fn send(stream: &UnixStream, fds: &ListenFds) -> io::Result<()> {
    let (keys, fds): (Vec<String>, Vec<RawFd>) = fds.lock().serialize();
    let payload = keys.join(" ");
    if fds.is_empty() || fds.len() > MAX_FDS || payload.len() > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "{} sockets ({} bytes of addresses): Pingora takes 1 to {MAX_FDS} ({MAX_PAYLOAD} bytes)",
            fds.len(),
            payload.len()
        )));
    }
    let data_len = std::mem::size_of_val(fds.as_slice());
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(data_len as u32),
            libc::CMSG_LEN(data_len as u32),
        )
    };
    // u64s: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the
    // sendmsg(2) call, and the one cmsghdr written fits `control` (CMSG_SPACE).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    match sent {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != payload.len() => Err(io::Error::other("short write")),
        _ => Ok(()),
    }
}

/// `<upgrade_sock>.ready`, where the successor confirms; removed on drop.
struct ReadySocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ReadySocket {
    fn bind(sock: &Path) -> Result<ReadySocket, String> {
        let path = ready_path(sock);
        // A file left by an earlier upgrade that died.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                format!(
                    "cannot create {} (server.upgrade_sock): {e}",
                    path.display()
                )
            })?;
        Ok(ReadySocket { path, listener })
    }

    /// The successor's pid once it confirms (within [`CONFIRM_LIMIT`]).
    fn wait(&self, mut child: Option<&mut Child>, peer: Option<u32>) -> Result<u32, String> {
        let deadline = Instant::now() + CONFIRM_LIMIT;
        loop {
            match self.listener.accept() {
                // Anyone may connect to a socket in /tmp: the confirmation
                // counts from the process that took the sockets only.
                Ok((s, _)) if peer.is_some() && peer_cred(&s).map(|c| c.0) != peer => {
                    tracing::warn!(from = ?peer_cred(&s), "upgrade: a confirmation from another process; ignored");
                }
                Ok((s, _)) => return read_pid(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("cannot read the confirmation: {e}")),
            }
            if let Some(why) = child.as_deref_mut().and_then(exited) {
                return Err(format!("the successor {why} after taking the sockets"));
            }
            if peer.is_some_and(|p| !alive(p)) {
                return Err("the successor exited after taking the sockets".into());
            }
            if Instant::now() >= deadline {
                return Err(format!("no confirmation within {CONFIRM_LIMIT:?}"));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ReadySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_pid(s: UnixStream) -> Result<u32, String> {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the confirmation: {e}"))?;
    line.trim()
        .parse()
        .map_err(|_| format!("a confirmation that is not a pid: {line:?}"))
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

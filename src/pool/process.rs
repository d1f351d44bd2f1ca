//! The `process` provider: members are child processes of lb, reached at
//! `127.0.0.1:<port>` with a port from `pool.ports`.
//!
//! No orphans, whatever happens to lb:
//! - each member runs in its own process group (a terminal's Ctrl-C reaches
//!   lb only, which then stops members in order), and stopping signals the
//!   whole group, so a wrapper script's children go too;
//! - `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills a member when lb dies, even
//!   by `kill -9`. (It fires when the *thread* that forked exits: the pool's
//!   driver thread lives as long as lb.)
//! - every member carries `LB_POOL=<pool name>` and `LB_POOL_OWNER=<lb pid>.<lb
//!   start time>` in its environment. At start lb scans `/proc/*/environ` and
//!   kills processes of its pool whose owner is gone (a grandchild that
//!   outlived a killed lb); a live lb with the same pool name is left alone.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::{Child, Command};

use super::provider::{Provider, ProviderError, Spec};

/// The environment variable naming a member's pool.
pub const POOL_ENV: &str = "LB_POOL";
/// The environment variable naming the lb that started a member.
pub const OWNER_ENV: &str = "LB_POOL_OWNER";

struct Running {
    child: Child,
    port: u16,
}

/// Members as child processes.
pub struct ProcessProvider {
    pool: String,
    ports: RangeInclusive<u16>,
    next_port: Mutex<u16>,
    children: Mutex<HashMap<String, Running>>,
    owner: String,
}

impl ProcessProvider {
    /// A provider for pool `pool` handing out `ports`.
    pub fn new(pool: &str, ports: RangeInclusive<u16>) -> Self {
        let me = std::process::id();
        ProcessProvider {
            pool: pool.to_string(),
            next_port: Mutex::new(*ports.start()),
            ports,
            children: Mutex::new(HashMap::new()),
            owner: owner_id(me).unwrap_or_else(|| me.to_string()),
        }
    }

    /// The next port of the range, after the last one handed out, that no
    /// member holds and nothing else is bound to. Going round the range
    /// (rather than always from its start) keeps a just-freed port unused for
    /// as long as possible.
    fn pick_port(&self) -> Result<u16, ProviderError> {
        let held: HashSet<u16> = lock(&self.children).values().map(|r| r.port).collect();
        let (lo, hi) = (*self.ports.start(), *self.ports.end());
        let mut next = lock(&self.next_port);
        let span = u32::from(hi - lo) + 1;
        for i in 0..span {
            let p = (u32::from(*next - lo) + i) % span + u32::from(lo);
            let p = p as u16;
            // 0.0.0.0 collides with a listener on any local address.
            if !held.contains(&p) && TcpListener::bind(("0.0.0.0", p)).is_ok() {
                *next = if p == hi { lo } else { p + 1 };
                return Ok(p);
            }
        }
        Err(ProviderError(format!(
            "no free port in pool.ports {lo}-{hi} ({} held by members)",
            held.len()
        )))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `{name}` and `{port}` substituted in every argument.
pub fn argv(template: &[String], name: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    template
        .iter()
        .map(|a| a.replace("{name}", name).replace("{port}", &port))
        .collect()
}

#[async_trait]
impl Provider for ProcessProvider {
    async fn clean_leftovers(&self) -> Result<usize, ProviderError> {
        let mut killed = 0;
        for (pid, owner) in processes_of_pool(&self.pool) {
            let alive = owner
                .split_once('.')
                .and_then(|(p, _)| p.parse::<u32>().ok())
                .and_then(owner_id)
                .is_some_and(|now| now == owner);
            if alive {
                continue; // another running lb's member
            }
            tracing::info!(pid, pool = %self.pool, owner = %owner,
                "pool: killing a member left by an earlier lb");
            // The process itself (an orphan is rarely its group's leader),
            // then the group it may lead.
            if let Ok(p) = libc::pid_t::try_from(pid) {
                // SAFETY: plain kill(2) of a process found by its marker.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
            signal_group(pid, libc::SIGKILL);
            killed += 1;
        }
        Ok(killed)
    }

    async fn start(&self, name: &str, spec: &Spec) -> Result<SocketAddr, ProviderError> {
        let Spec::Command(template) = spec else {
            return Err(ProviderError(
                "the process provider runs commands, not images".into(),
            ));
        };
        let port = self.pick_port()?;
        let args = argv(template, name, port);
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..])
            .env(POOL_ENV, &self.pool)
            .env(OWNER_ENV, &self.owner)
            .env("LB_POOL_MEMBER", name)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // lb died between fork and prctl: do not outlive it.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("lb exited"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| ProviderError::new(&format!("spawn {:?}", args[0]), e))?;
        tracing::info!(member = name, pid = child.id(), port, command = ?args, "pool: process spawned");
        lock(&self.children).insert(name.to_string(), Running { child, port });
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    async fn exited(&self, name: &str) -> Option<String> {
        let mut children = lock(&self.children);
        let r = children.get_mut(name)?;
        match r.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    fn cheap_liveness(&self) -> bool {
        true
    }

    async fn memory(&self, name: &str) -> Option<u64> {
        let pid = lock(&self.children).get(name)?.child.id()?;
        rss_bytes(pid)
    }

    async fn stop(&self, name: &str, grace: Duration) {
        let Some(mut r) = lock(&self.children).remove(name) else {
            return;
        };
        let Some(pid) = r.child.id() else {
            return; // already reaped
        };
        signal_group(pid, libc::SIGTERM);
        let how = match tokio::time::timeout(grace, r.child.wait()).await {
            Ok(status) => status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            Err(_) => {
                tracing::warn!(
                    member = name,
                    pid,
                    grace_ms = grace.as_millis() as u64,
                    "pool: member ignored SIGTERM; SIGKILL"
                );
                signal_group(pid, libc::SIGKILL);
                let _ = r.child.wait().await;
                "killed".to_string()
            }
        };
        // Whatever else is left in its group (a wrapper's children).
        signal_group(pid, libc::SIGKILL);
        tracing::debug!(member = name, pid, exit = %how, "pool: process stopped");
    }
}

/// Signals the process group led by `pid` (each member leads its own).
fn signal_group(pid: u32, sig: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a negative pid signals that process group; an
        // empty group is ESRCH, which is fine.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// `<pid>.<start time in clock ticks since boot>`: names one process
/// incarnation, so a reused pid is not mistaken for the lb that started a member.
fn owner_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command (which may contain spaces);
    // starttime is field 22 of the whole line, 20th after ")".
    let rest = stat.rsplit_once(')')?.1;
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid}.{start}"))
}

/// (pid, owner) of every process whose environment says it belongs to `pool`.
fn processes_of_pool(pool: &str) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = format!("{POOL_ENV}={pool}");
    let owner_key = format!("{OWNER_ENV}=");
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue; // gone, or not ours to read
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if !vars.contains(&want.as_bytes()) {
            continue;
        }
        let owner = vars
            .iter()
            .find_map(|v| v.strip_prefix(owner_key.as_bytes()))
            .map(|o| String::from_utf8_lossy(o).into_owned())
            .unwrap_or_default();
        out.push((pid, owner));
    }
    out
}

/// `VmRSS` of `pid` from `/proc/<pid>/status`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted_everywhere() {
        let t: Vec<String> = [
            "app",
            "--id",
            "{name}",
            "--listen",
            "127.0.0.1:{port}",
            "x{name}{port}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            argv(&t, "app-3", 3102),
            [
                "app",
                "--id",
                "app-3",
                "--listen",
                "127.0.0.1:3102",
                "xapp-33102"
            ]
        );
    }

    #[test]
    fn rss_and_owner_of_this_process() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let me = owner_id(std::process::id()).unwrap();
        assert!(me.starts_with(&format!("{}.", std::process::id())));
        assert_eq!(
            owner_id(std::process::id()),
            Some(me),
            "stable for one process"
        );
    }

    #[test]
    fn ports_go_round_the_range_and_skip_bound_ones() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = taken.local_addr().unwrap().port();
        let prov = ProcessProvider::new("t", p..=p);
        assert!(prov.pick_port().is_err(), "the only port is bound");
        drop(taken);
        assert_eq!(prov.pick_port().ok(), Some(p));
    }
}

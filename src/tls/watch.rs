//! Certificate files watched for changes: a changed certificate or key
//! (rewritten, replaced, or a symlink swapped, as Kubernetes Secrets and
//! certbot do) reloads the config, as SIGHUP does, within about a second.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::control::Control;

/// How often the files are looked at (SPEC: a change is noticed within 2 s).
const EVERY: Duration = Duration::from_secs(1);

/// What identifies one file's content without reading it: the target's
/// device, inode, size and mtime, and the link's own inode and mtime (a
/// symlink swapped to a new target).
type Stamp = Option<(u64, u64, u64, i64, i64, u64, i64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let t = std::fs::metadata(path).ok()?;
    let l = std::fs::symlink_metadata(path).ok()?;
    Some((
        t.dev(),
        t.ino(),
        t.size(),
        t.mtime(),
        t.mtime_nsec(),
        l.ino(),
        l.mtime(),
    ))
}

type Stamps = Vec<(std::path::PathBuf, Stamp)>;

/// The configured certificate and key files and what they hold now.
fn stamps(s: &crate::state::Snapshot) -> Stamps {
    s.config.tls.as_ref().map_or_else(Vec::new, |t| {
        t.certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect()
    })
}

/// The background task (a no-op without `[tls]`).
pub struct CertWatch {
    control: Arc<Control>,
    /// The files as they were when the watch was built, before any listener
    /// accepted: a change made before the task first runs (its thread may
    /// start late on a loaded machine) is still a change.
    first: std::sync::Mutex<Stamps>,
}

impl CertWatch {
    pub fn new(control: Arc<Control>) -> Self {
        let first = stamps(&control.state.load());
        Self {
            control,
            first: std::sync::Mutex::new(first),
        }
    }
}

#[async_trait]
impl BackgroundService for CertWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = self.control.state.clone();
        let mut seen = std::mem::take(&mut *self.first.lock().unwrap_or_else(|e| e.into_inner()));
        loop {
            let now = stamps(&state.load());
            // A changed list (a reload changed the files) is not a change of
            // the files themselves.
            let same_files =
                seen.len() == now.len() && seen.iter().zip(&now).all(|(a, b)| a.0 == b.0);
            if same_files && seen != now {
                tracing::info!("a certificate or key file changed: reloading");
                if let Err(e) = self.control.reload("certificate files").await {
                    tracing::warn!(error = %e, "certificate reload failed; the old certificates keep serving");
                }
            }
            seen = now;
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

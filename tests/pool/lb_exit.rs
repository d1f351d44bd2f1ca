//! lb's exit and its members: SIGTERM stops every one, and those a
//! `kill -9`ed lb leaves behind are killed by the next start.

use std::time::Duration;

use crate::common::*;
use crate::support::*;

/// A member command whose app is a grandchild of lb (`sh` in between): on a
/// `kill -9` of lb the kernel kills `sh` (parent-death signal) but the app
/// survives it, reparented; the next lb must find and kill it.
fn wrapped_app_args(name: &str, range: (u16, u16)) -> String {
    let app = app_bin().display().to_string();
    format!(
        "[health]\ninterval = \"100ms\"\nrise = 1\n[pool]\nname = \"{name}\"\nsize = 2\n\
         ports = \"{}-{}\"\ndrain_timeout = \"2s\"\n\
         command = [\"sh\", \"-c\", \"\\\"$0\\\" --id \\\"$1\\\" --listen \\\"$2\\\" & wait\", {app:?}, \"{{name}}\", \"127.0.0.1:{{port}}\"]\n",
        range.0, range.1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_lb_stops_every_member() {
    serial("pool sigterm", LIMIT, async {
        let (name, lo, hi) = unique_pool();
        let _guard = PoolGuard(name.clone());
        let mut lb = Lb::start(&wrapped_app_args(&name, (lo, hi))).await;
        let pids = pool_pids(&name);
        assert_eq!(pids.len(), 4, "2 × (sh + app): {pids:?}");
        let status = lb.stop().await;
        assert_eq!(status.code(), Some(0));
        let gone = eventually(Duration::from_secs(3), || pids.iter().all(|p| !alive(*p))).await;
        assert!(
            gone,
            "left running after SIGTERM: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        assert!(lb.log_text().contains("pool: every member stopped"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_lb_leaves_no_member_after_the_next_start() {
    serial("pool kill -9 lb", LIMIT, async {
        let (name, lo, hi) = unique_pool();
        let _guard = PoolGuard(name.clone());
        let mut lb = Lb::start(&wrapped_app_args(&name, (lo, hi))).await;
        let before = pool_pids(&name);
        assert_eq!(before.len(), 4);
        lb.signal(libc::SIGKILL);
        let _ = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(5)));
        // The direct children die with lb (PR_SET_PDEATHSIG); the apps behind
        // `sh` are orphans now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let orphans: Vec<u32> = before.iter().copied().filter(|p| alive(*p)).collect();
        println!(
            "after kill -9 of lb: {} of {} member processes still running",
            orphans.len(),
            before.len()
        );
        assert_eq!(
            orphans.len(),
            2,
            "the two wrapped apps outlive lb: {orphans:?}"
        );
        lb.restart().await;
        let cleaned = eventually(Duration::from_secs(3), || {
            orphans.iter().all(|p| !alive(*p))
        })
        .await;
        assert!(cleaned, "leftovers still running: {orphans:?}");
        assert!(lb
            .log_text()
            .contains("killing a member left by an earlier lb"));
        // The new lb has its own members again.
        assert_eq!(ready(&lb.pool().await), 2);
    })
    .await;
}

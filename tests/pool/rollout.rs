//! `POST /admin/pool/rollout` (through the CLI too) under load: every member
//! moved to the new command, or, when the new one never turns healthy, the
//! rollout failed and the old members kept.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_moves_every_member_to_the_new_command() {
    serial("pool rollout", LIMIT, async {
        // Command rollouts are off unless the file allows them (SPEC
        // "Admin hardening"; tests/admin_hardening.rs checks the 403).
        let p = start("size = 3\nallow_rollout_command = true", &[]).await;
        let load = load(&p.lb, 100, 12);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Through the CLI, as an operator would.
        let app = app_bin().display().to_string();
        let out = std::process::Command::new(lb_bin())
            .args([
                "admin",
                "--url",
                &format!("http://{}", p.lb.admin),
                "pool",
                "rollout",
                "--command",
            ])
            .args([
                app.as_str(),
                "--id",
                "v2-{name}",
                "--listen",
                "127.0.0.1:{port}",
            ])
            .env("LB_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let accepted: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(accepted["rollout"]["state"], "running");
        assert_eq!(accepted["rollout"]["total"], 3);
        let again =
            p.lb.admin_call(
                reqwest::Method::POST,
                "/admin/pool/rollout",
                Some(&json!({"command": ["x"]})),
            )
            .await;
        assert_eq!(again.status, 409, "one rollout at a time: {}", again.text);
        let done =
            p.lb.wait_pool(Duration::from_secs(20), |v| v["rollout"]["state"] == "done")
                .await
                .expect("rollout done");
        let samples = load.stop().await;
        assert_no_failures(&samples, "rollout");
        assert_eq!(
            done["rollout"],
            json!({"state": "done", "done": 3, "total": 3})
        );
        let n = &p.name;
        assert_eq!(
            members_in(&done, "ready"),
            [format!("{n}-4"), format!("{n}-5"), format!("{n}-6")]
        );
        // Every answer now comes from the new version.
        let c = client();
        for _ in 0..9 {
            let body: Value = c
                .get(p.lb.url("/api/whoami"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(
                body["container"].as_str().unwrap().starts_with("v2-"),
                "{body}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_never_turns_healthy_fails_and_keeps_the_old_members() {
    serial("pool failed rollout", LIMIT, async {
        let p = start(
            "size = 2\nstart_timeout = \"1s\"\nallow_rollout_command = true",
            &[],
        )
        .await;
        let before = members_in(&p.lb.pool().await, "ready");
        let load = load(&p.lb, 50, 10);
        // Runs, but listens on a port of its own choosing, not the one lb
        // probes: never healthy, so each new member times out.
        let app = app_bin().display().to_string();
        let body = json!({"command": [app, "--id", "{name}", "--listen", "127.0.0.1:0"]});
        let r =
            p.lb.admin_call(reqwest::Method::POST, "/admin/pool/rollout", Some(&body))
                .await;
        assert_eq!(r.status, 202, "{}", r.text);
        let wrong =
            p.lb.admin_call(
                reqwest::Method::POST,
                "/admin/pool/rollout",
                Some(&json!({"image": "x"})),
            )
            .await;
        assert!(matches!(wrong.status, 409 | 422), "{}", wrong.text);
        let failed =
            p.lb.wait_pool(Duration::from_secs(15), |v| {
                v["rollout"]["state"] == "failed"
            })
            .await
            .expect("rollout failed");
        let samples = load.stop().await;
        assert_no_failures(&samples, "failed rollout");
        assert_eq!(failed["rollout"]["done"], 0);
        assert_eq!(
            members_in(&failed, "ready"),
            before,
            "the old members keep serving"
        );
        assert!(
            p.lb.scrape()
                .await
                .value("lb_pool_starts_total", &[("result", "failed")])
                >= 1.0
        );
    })
    .await;
}

//! `lb healthcheck` and `lb admin`: the container HEALTHCHECK and the operator
//! client for images without curl.

mod common;

use std::process::Command;

use common::*;

fn lb(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(lb_bin());
    cmd.args(args).env_remove("LB_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("LB_ADMIN_TOKEN", t);
    }
    let out = cmd.output().expect("run lb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_and_admin_client() {
    let apps = Apps::plain(2).await;
    let running = Lb::start(&apps.backends_toml(&[1, 1])).await;
    let admin = format!("http://{}", running.admin);
    let dead = dead_port();
    let (lb_admin, closed) = (
        admin.clone(),
        format!("http://127.0.0.1:{}/health", dead.port),
    );
    tokio::task::spawn_blocking(move || {
        // healthcheck: 0 against a live admin /health, 1 (with a reason) otherwise.
        assert_eq!(
            lb(&["healthcheck", &format!("{lb_admin}/health")], None).0,
            0
        );
        let (code, _, err) = lb(&["healthcheck", &closed], None);
        assert_eq!(code, 1);
        assert!(err.contains("unhealthy"), "{err}");

        // admin: token from LB_ADMIN_TOKEN; the body is printed; 2xx → exit 0.
        let (code, out, _) = lb(
            &["admin", "--url", &lb_admin, "GET", "/admin/weights"],
            Some(ADMIN_TOKEN),
        );
        assert_eq!(code, 0);
        assert_eq!(out.trim(), r#"{"app-1":1,"app-2":1}"#);
        let (code, out, _) = lb(
            &[
                "admin",
                "--url",
                &lb_admin,
                "PUT",
                "/admin/weights",
                r#"{"app-2": 0}"#,
            ],
            Some(ADMIN_TOKEN),
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.trim(), r#"{"app-1":1,"app-2":0}"#);
        // Wrong token or bad body: the API's JSON error is shown, exit 1.
        let (code, out, err) = lb(
            &["admin", "--url", &lb_admin, "GET", "/admin/weights"],
            Some("nope"),
        );
        assert_eq!(code, 1);
        assert!(out.contains("error") && err.contains("401"), "{out} {err}");
        let (code, _, err) = lb(
            &[
                "admin",
                "--url",
                &lb_admin,
                "PUT",
                "/admin/weights",
                r#"{"app-2": 5000}"#,
            ],
            Some(ADMIN_TOKEN),
        );
        assert_eq!(code, 1);
        assert!(err.contains("422"), "{err}");
    })
    .await
    .unwrap();
    // The CLI's PUT took effect.
    let picks: Vec<String> = {
        let c = client();
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(get_backend(&c, &running.url("/api/whoami")).await.1);
        }
        v
    };
    assert!(picks.iter().all(|b| b == "app-1"), "{picks:?}");
}

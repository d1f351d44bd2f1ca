//! The status page in a real headless browser (Chromium over the DevTools
//! protocol): it loads, refreshes itself, shows what `/admin/backends` says,
//! and its weight and mode controls change lb through the admin API with a
//! token typed into the page. A screenshot is kept as `target/status-page.png`.
//!
//! Ignored by a plain `cargo test` (it needs Chromium); `make test` installs
//! Chromium when missing and runs it with `--ignored` where Chromium can
//! start, so where it cannot the test shows as ignored, never as passed.

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdp::Browser;
use common::*;
use serde_json::{json, Value};

/// What the page's table shows, one object per row.
const ROWS_JS: &str = r#"JSON.stringify([...document.querySelectorAll('#rows tr')].map(tr => {
  const f = (n) => tr.querySelector('[data-field="' + n + '"]');
  const first = (n) => f(n).querySelector('span').textContent;
  return {
    name: tr.dataset.backend, health: first('health'), circuit: first('circuit'),
    mode: first('mode'), weight: Number(first('weight')),
    effective_weight: Number(f('effective_weight').textContent),
    in_flight: Number(f('in_flight').textContent.split(' / ')[0]),
    rps: Number(f('rps').textContent),
    since: f('health').querySelector('.since').textContent,
    spark: f('spark').querySelectorAll('polyline').length,
  };
}))"#;

fn admin_get(admin: &str, path: &str) -> Value {
    ureq::get(&format!("{admin}{path}"))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .into_json()
        .expect("json")
}

fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `target/` (the test binary is `target/debug/deps/status_page-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn refreshes(b: &mut Browser) -> u64 {
    b.eval("Number((document.body && document.body.dataset.refreshes) || 0)")
        .as_u64()
        .unwrap_or(0)
}

/// Waits for `n` more refreshes of the page.
fn wait_refreshes(b: &mut Browser, n: u64) {
    let start = refreshes(b);
    b.wait_for(
        &format!(
            "Number((document.body && document.body.dataset.refreshes) || 0) >= {}",
            start + n
        ),
        Duration::from_secs(10),
    );
}

fn click_set(b: &mut Browser, backend: &str, kind: &str, value: &str) {
    let js = format!(
        r#"(() => {{
          const tr = document.querySelector('tr[data-backend="{backend}"]');
          const input = tr.querySelector('{sel}');
          input.value = '{value}';
          input.dispatchEvent(new Event('input'));
          tr.querySelector('button.{kind}-set').click();
          return true;
        }})()"#,
        sel = if kind == "weight" {
            "input.weight"
        } else {
            "select.mode"
        },
    );
    b.eval(&js);
}

fn browser_checks(chromium: &str, admin: &str, traffic: &AtomicBool) {
    let page = ureq::get(&format!("{admin}/")).call().expect("GET /");
    let csp = page
        .header("content-security-policy")
        .unwrap_or("")
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !page.into_string().unwrap().contains("<script>"),
        "no inline script"
    );

    let mut b = Browser::start(chromium);
    b.navigate(&format!("{admin}/"));
    wait_refreshes(&mut b, 2);
    // Quiet lb down so in-flight counts are settled, then compare a fresh
    // rendering with /admin/backends.
    traffic.store(false, Ordering::SeqCst);
    poll("no request in flight", Duration::from_secs(5), || {
        let v = admin_get(admin, "/admin/backends");
        v.as_array()?
            .iter()
            .all(|b| b["in_flight"] == 0)
            .then_some(())
    });
    wait_refreshes(&mut b, 1);
    let rows: Vec<Value> = serde_json::from_str(b.eval(ROWS_JS).as_str().unwrap()).unwrap();
    let backends = admin_get(admin, "/admin/backends");
    let backends = backends.as_array().unwrap();
    assert_eq!(rows.len(), backends.len());
    for (row, want) in rows.iter().zip(backends) {
        for key in [
            "name",
            "health",
            "circuit",
            "mode",
            "weight",
            "effective_weight",
            "in_flight",
        ] {
            assert_eq!(row[key], want[key], "{key} of {}: page {row}", want["name"]);
        }
        // Traffic reached every backend in the last 10 s, and the sparkline has
        // its two lines (req/s and p99).
        assert!(row["rps"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["spark"], 2, "{row}");
        assert!(row["since"].as_str().unwrap().starts_with("for "), "{row}");
    }

    // A weight through the page's control: it asks for the token first.
    click_set(&mut b, "app-2", "weight", "7");
    b.wait_for(
        "!document.getElementById('token-box').hidden",
        Duration::from_secs(5),
    );
    b.eval(&format!(
        "(() => {{ document.getElementById('token-input').value = '{ADMIN_TOKEN}'; \
         document.getElementById('token-ok').click(); return true; }})()"
    ));
    poll("weight 7 in /admin/weights", Duration::from_secs(5), || {
        (admin_get(admin, "/admin/weights")["app-2"] == 7).then_some(())
    });
    b.wait_for(
        r#"document.querySelector('tr[data-backend="app-2"] [data-field="weight"] span').textContent === '7'"#,
        Duration::from_secs(5),
    );
    // The change shows in the list of changes once the sampler has seen it.
    b.wait_for(
        "[...document.querySelectorAll('#events li')].some(li => \
         li.textContent.includes('weight') && li.textContent.includes('app-2') \
         && li.textContent.includes('7'))",
        Duration::from_secs(5),
    );
    // The token stays in the tab: the mode control does not ask again.
    assert_eq!(
        b.eval("sessionStorage.getItem('lb-admin-token')"),
        json!(ADMIN_TOKEN)
    );
    click_set(&mut b, "app-3", "mode", "drain");
    poll("app-3 draining", Duration::from_secs(5), || {
        let v = admin_get(admin, "/admin/backends");
        v.as_array()?
            .iter()
            .any(|b| b["name"] == "app-3" && b["mode"] == "drain")
            .then_some(())
    });
    assert_eq!(
        b.eval("document.getElementById('token-box').hidden"),
        json!(true)
    );
    wait_refreshes(&mut b, 1);

    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = target_dir().join("status-page.png");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
    assert!(
        b.problems.is_empty(),
        "page problems (CSP, exceptions): {:?}",
        b.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a headless Chromium: `make test` runs it with --ignored where one can start"]
async fn status_page_in_a_real_browser() {
    let chromium = cdp::chromium().expect("no Chromium: install chromium or set LB_CHROMIUM");
    let apps = Apps::plain(3).await;
    let lb = Lb::start(&format!(
        "[health]\ninterval = \"200ms\"\n\n{}",
        apps.backends_toml(&[10, 10, 10])
    ))
    .await;
    let traffic = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let (traffic, url, c) = (traffic.clone(), lb.url("/api/whoami"), client());
        async move {
            while traffic.load(Ordering::SeqCst) {
                let _ = c.get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let admin = format!("http://{}", lb.admin);
    let t = traffic.clone();
    let checks = tokio::task::spawn_blocking(move || browser_checks(&chromium, &admin, &t)).await;
    traffic.store(false, Ordering::SeqCst);
    let _ = load.await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
}

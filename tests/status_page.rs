//! The status page in a real headless browser (Chromium over the DevTools
//! protocol): it loads, refreshes itself, shows what `/admin/backends` says
//! (a slow-starting backend marked "ramping") and each `[tls]` certificate
//! with its days left as `/admin/tls` says, and its weight and mode controls
//! change lb through the admin API with a token typed into the page. A
//! screenshot is kept as `target/status-page.png`.
//!
//! Ignored by a plain `cargo test` (it needs Chromium); `make test` installs
//! Chromium when missing and runs it with `--ignored` where Chromium can
//! start, so where it cannot the test shows as ignored, never as passed.

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// `balancer.slow_start`: long enough for the page to catch a ramp (it
/// refreshes once a second), short enough not to slow the test down much.
const SLOW_START: Duration = Duration::from_secs(4);

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

/// What the page's certificates section shows, one object per row.
const CERTS_JS: &str = r#"JSON.stringify({
  hidden: document.getElementById('certs').hidden,
  rows: [...document.querySelectorAll('#cert-rows tr')].map(tr => ({
    names: tr.cells[0].firstChild.textContent, expires: tr.cells[1].textContent,
    days: tr.cells[2].textContent, expiring: tr.classList.contains('expiring'),
  })),
})"#;

/// The "ramping 35 %" mark next to `backend` ("" when hidden).
fn ramp_js(backend: &str) -> String {
    format!(
        r#"(() => {{ const r = document.querySelector('tr[data-backend="{backend}"] .ramp');
          return r && !r.hidden ? r.textContent : ''; }})()"#
    )
}

/// Two certificates in `dir`: `localhost` (rcgen's default validity, years)
/// and `soon.localhost`, expiring in 10.5 days (under the page's 14).
fn certificates(dir: &Path) -> String {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.key_pair.serialize_pem()).unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["soon.localhost".to_string()]).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    p.not_after = rcgen::date_time_ymd(1970, 1, 1) + now + Duration::from_secs(21 * 43_200);
    let key = rcgen::KeyPair::generate().unwrap();
    let soon = p.self_signed(&key).unwrap();
    std::fs::write(dir.join("soon.pem"), soon.pem()).unwrap();
    std::fs::write(dir.join("soon-key.pem"), key.serialize_pem()).unwrap();
    let d = dir.display();
    format!(
        "[tls]\nlisten = \"127.0.0.1:{}\"\ncertificates = [\n  \
         {{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }},\n  \
         {{ cert = \"{d}/soon.pem\", key = \"{d}/soon-key.pem\" }},\n]\n",
        free_port()
    )
}

/// The certificates section against `GET /admin/tls`.
fn check_certificates(b: &mut Browser, admin: &str) {
    let tls = admin_get(admin, "/admin/tls");
    let tls = tls.as_array().unwrap();
    assert_eq!(tls.len(), 2, "{tls:?}");
    let shown: Value = serde_json::from_str(b.eval(CERTS_JS).as_str().unwrap()).unwrap();
    assert_eq!(shown["hidden"], false, "{shown}");
    let rows = shown["rows"].as_array().unwrap();
    assert_eq!(rows.len(), tls.len(), "{shown}");
    for (row, want) in rows.iter().zip(tls) {
        assert_eq!(row["names"], want["names"][0], "{shown}");
        assert_eq!(row["expires"], want["not_after"], "{shown}");
        let days = want["days_left"].as_i64().unwrap();
        assert_eq!(row["days"], format!("{days} days"), "{shown}");
        assert_eq!(row["expiring"], days < 14, "{shown}");
    }
    assert_eq!(tls[1]["days_left"], 10, "{tls:?}");
}

/// Takes `backend` through maintenance back to active: it starts its slow
/// start again, and the page marks it "ramping".
fn check_ramp(b: &mut Browser, admin: &str, backend: &str) {
    for mode in ["maintenance", "active"] {
        let r = ureq::put(&format!("{admin}/admin/backends/{backend}/mode"))
            .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .send_json(json!({ "mode": mode }));
        assert!(r.is_ok(), "mode {mode}: {r:?}");
    }
    let ratio = admin_get(admin, "/admin/backends")
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .map(|b| b["slow_start_ratio"].as_f64().unwrap())
        .unwrap();
    assert!(ratio < 1.0, "{backend} ramps: {ratio}");
    let shown = b.wait_for(&ramp_js(backend), SLOW_START);
    let pct: f64 = shown
        .as_str()
        .and_then(|t| t.strip_prefix("ramping "))
        .and_then(|t| t.strip_suffix(" %"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    assert!((10.0..100.0).contains(&pct), "{shown}");
    // Only that one ramps.
    assert_eq!(b.eval(&ramp_js("app-1")), json!(""));
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
    check_certificates(&mut b, admin);
    // Every backend joined at start and ramps for SLOW_START; compare the
    // table once they are at their full share (effective weights settled).
    poll("slow start over", SLOW_START * 2, || {
        let v = admin_get(admin, "/admin/backends");
        v.as_array()?
            .iter()
            .all(|b| b["slow_start_ratio"] == 1.0)
            .then_some(())
    });
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
    check_ramp(&mut b, admin, "app-2");

    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = target_dir().join("status-page.png");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
    // The mark goes once the ramp is done.
    b.wait_for(&format!("{} === ''", ramp_js("app-2")), SLOW_START * 2);
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
    let certs = tempfile::tempdir().unwrap();
    let lb = Lb::start(&format!(
        "[health]\ninterval = \"200ms\"\n\n[balancer]\nslow_start = \"{}s\"\n\n{}\n{}",
        SLOW_START.as_secs(),
        certificates(certs.path()),
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

//! `make scenarios`' machinery, once, on tiny numbers: `scripts/scenarios.py
//! --smoke` against the debug `lb` and `app` binaries (a few seconds per
//! experiment, small worker pools), then `scripts/scenarios-report.py` on its
//! results. Checks the shape of what they write — every key issue 12 lists, one
//! criteria line per criterion — never the measured values: a smoke run's
//! numbers mean nothing, and no assertion here depends on timing.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn sorted(mut k: Vec<&str>) -> Vec<&str> {
    k.sort_unstable();
    k
}

fn assert_shape(r: &Value) {
    assert_eq!(keys(r), ["dual_apps", "quad_apps", "single_app"]);
    assert_eq!(
        keys(&r["single_app"]),
        sorted(vec![
            "clients",
            "rps",
            "p95_ms",
            "p99_ms",
            "error_rate",
            "lb_cpu_pct",
            "lb_rss_mib",
            "lb_fds",
            "jitter_pct",
            "second_half_vs_first",
            "recovery_s",
        ])
    );
    assert_eq!(
        keys(&r["dual_apps"]),
        sorted(vec![
            "shares",
            "chi2",
            "failover_error_rate",
            "failover_min_rps",
            "post_recovery_share",
            "sticky_pct",
            "scaling_vs_single",
            "rolling_update_failed",
        ])
    );
    let q = &r["quad_apps"];
    assert_eq!(
        keys(q),
        sorted(vec![
            "rps",
            "algorithms",
            "dynamic_vs_round_robin",
            "least_time_vs_round_robin",
            "weights_over_time",
            "chaos",
        ])
    );
    assert_eq!(
        keys(&q["algorithms"]),
        ["dynamic", "least_conn", "least_time", "round_robin"]
    );
    for (name, a) in q["algorithms"].as_object().unwrap() {
        assert_eq!(
            keys(a),
            sorted(vec![
                "rps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "error_rate",
                "shares",
                "jain"
            ]),
            "{name}"
        );
        assert_eq!(keys(&a["shares"]), ["app-1", "app-2", "app-3", "app-4"]);
    }
    assert_eq!(
        keys(&q["chaos"]),
        ["cascading", "kill_one", "kill_two", "memory_pressure"]
    );
    for k in ["availability", "p99_increase"] {
        assert!(q["chaos"]["kill_one"][k].is_number(), "kill_one.{k}");
        assert!(q["chaos"]["kill_two"][k].is_number(), "kill_two.{k}");
    }
    for k in ["share_during", "others_p99_ratio", "affected_slowdown"] {
        assert!(
            q["chaos"]["memory_pressure"][k].is_number(),
            "memory_pressure.{k}"
        );
    }
    // recovery_s is null when the restored apps did not serve again before the
    // run ended (a smoke run is shorter than a circuit's open period).
    let cascading = q["chaos"]["cascading"].as_object().unwrap();
    for k in ["recovery_s", "requests_lost"] {
        assert!(cascading.contains_key(k), "cascading.{k}");
    }
    let w = &q["weights_over_time"];
    assert!(w["samples"].as_array().is_some_and(|s| !s.is_empty()));
    assert!(w["app-3"]["change_pct"].is_number() && w["app-4"]["change_pct"].is_number());
}

#[test]
fn smoke_run_writes_every_key_and_the_report_reads_it() {
    let bin = Path::new(common::lb_bin()).parent().unwrap();
    assert!(
        bin.join("app").exists(),
        "{}/app is missing: cargo build -p app",
        bin.display()
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new("python3")
        .arg(format!("{ROOT}/scripts/scenarios.py"))
        .arg("--smoke")
        .arg("--bin")
        .arg(bin)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "scenarios.py --smoke failed:\n{stderr}"
    );

    let text = std::fs::read_to_string(out.path().join("results.json")).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    assert_shape(&results);
    let doc = std::fs::read_to_string(out.path().join("scenarios.md")).unwrap();
    for heading in [
        "## How capacity is modelled",
        "## The seeds' criteria",
        "(seed 004)",
    ] {
        assert!(doc.contains(heading), "scenarios.md lacks {heading:?}");
    }
    for chart in ["quad-algorithms.svg", "dual-failover.svg", "quad-chaos.svg"] {
        let svg = std::fs::read_to_string(out.path().join("scenarios").join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
    }

    let report = Command::new("python3")
        .arg(format!("{ROOT}/scripts/scenarios-report.py"))
        .arg(out.path().join("results.json"))
        .output()
        .expect("python3 runs");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&report.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let (summary, criteria) = lines.split_last().expect("report output");
    assert!(summary.ends_with("criteria met"), "{summary}");
    assert!(criteria.len() >= 30, "one line per criterion: {lines:#?}");
    for l in criteria {
        assert!(
            ["met ", "not met ", "n/a "]
                .iter()
                .any(|p| l.starts_with(p)),
            "{l}"
        );
        assert!(
            l.contains(" 001 ") || l.contains(" 003 ") || l.contains(" 004 "),
            "{l}"
        );
    }
}

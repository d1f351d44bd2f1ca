//! `lb check`: the shipped configs pass with a summary; a broken one exits 2
//! with one line naming the key (every rule: src/config/validate.rs's tests).

mod common;

fn check(path: &std::path::Path) -> (i32, String, String) {
    common::lb_check(path)
}

fn check_text(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lb.toml");
    std::fs::write(&p, text).unwrap();
    check(&p)
}

#[test]
fn shipped_configs_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("lb.toml")];
    for e in std::fs::read_dir(root.join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            files.push(p);
        }
    }
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        let (code, out, err) = check(f);
        assert_eq!(code, 0, "{}: {err}", f.display());
        assert!(out.trim_end().ends_with(": ok"), "{out}");
    }
    for f in ["lb.toml", "examples/local.toml"] {
        let (_, out, _) = check(&root.join(f));
        assert!(out.contains("backends      4"), "{f} summary: {out}");
        assert!(out.contains("head within 10s"), "{f} summary: {out}");
        assert!(out.contains("upstream idle 4s"), "{f} summary: {out}");
    }
}

const B: &str = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:3000\"\n";

/// Each rule's case is a unit test (src/config/validate.rs); here, one of each
/// kind of error: exit 2 and one line, `lb: <path>: <key>: <value> <rule>`.
#[test]
fn broken_configs_exit_2_with_one_line_naming_key_value_and_rule() {
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{B}[[backends]]\nname = \"b\"\naddr = \"x:1\"\nweight = 5000\n"),
            "backends[1].weight: 5000 is out of range 0..=1000",
        ),
        (
            format!("[server]\nlisen = 1\n{B}"),
            "server.lisen: unknown field `lisen`",
        ),
        (
            "[[backends]\nname = \"a\"\n".into(),
            "(line 1): invalid table header",
        ),
    ];
    for (text, want) in &cases {
        let (code, out, err) = check_text(text);
        assert_eq!(code, 2, "{want}: stdout {out} stderr {err}");
        assert!(out.is_empty(), "{want}: {out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let line = err.trim_end();
        let named = line.starts_with("lb: ") && line.contains(&format!("/lb.toml: {want}"));
        assert!(named, "{line}");
    }
}

#[test]
fn health_timeout_may_exceed_interval_and_host_is_shown() {
    // Docker, Kubernetes, HAProxy and Envoy accept a timeout above the
    // interval; so does lb (a probe in flight delays that backend's next).
    let (code, out, err) = check_text(&format!(
        "[health]\ntimeout = \"2s\"\ninterval = \"1s\"\nhost = \"status.internal:8080\"\n{B}"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("health        GET /health (Host: status.internal:8080) every 1s, timeout 2s"),
        "{out}"
    );
    let (code, out, _) = check_text(B);
    assert_eq!(code, 0);
    assert!(out.contains("(Host: each backend's host)"), "{out}");
}

#[test]
fn missing_file_is_exit_2() {
    let (code, _, err) = check(std::path::Path::new("/nonexistent/lb.toml"));
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/lb.toml"), "{err}");
}

#[test]
fn summary_shows_capacity_and_queue() {
    let text = format!("[queue]\nsize = 8\ntimeout = \"250ms\"\n{B}max_in_flight = 50\n");
    let (code, out, err) = check_text(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("queue         8 requests, timeout 250ms"),
        "{out}"
    );
    assert!(out.contains("weight 1, max_in_flight 50"), "{out}");
    let (code, out, _) = check_text(&format!("[queue]\nsize = 0\n{B}resolve = \"all\"\n"));
    assert_eq!(code, 0);
    assert!(out.contains("queue         off"), "{out}");
    assert!(
        out.contains("resolve all (one member per address)"),
        "{out}"
    );
}

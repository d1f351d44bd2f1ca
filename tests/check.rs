//! `lb check`: the shipped configs pass; broken ones exit 2 naming the key.

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
    for f in ["lb.toml", "examples/local.toml"] {
        let (code, out, err) = check(&root.join(f));
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.contains("backends      4"), "{f} summary: {out}");
        assert!(out.contains("head within 10s"), "{f} summary: {out}");
        assert!(out.contains("upstream idle 4s"), "{f} summary: {out}");
        assert!(out.trim_end().ends_with(": ok"));
    }
}

const B: &str = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:3000\"\n";

#[test]
fn broken_configs_exit_2_naming_key_value_and_rule() {
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("[server]\nlisten = \"0.0.0.0:80\"\nlisen = 1\n{B}"), "server.lisen", "unknown field"),
        (format!("bogus = 1\n{B}"), "bogus", "unknown field"),
        (format!("[health]\ninterval = \"5 parsecs\"\n{B}"), "health.interval", "\"5 parsecs\" is not a duration"),
        (format!("[timeouts]\nconnect = \"0s\"\n{B}"), "timeouts.connect", "is out of range"),
        (format!("[timeouts]\nupstream_idle = \"soon\"\n{B}"), "timeouts.upstream_idle", "\"soon\" is not a duration"),
        (format!("[timeouts]\nupstream_idle = \"2h\"\n{B}"), "timeouts.upstream_idle", "is out of range"),
        (format!("[server]\nheader_timeout = \"0s\"\n{B}"), "server.header_timeout", "is out of range"),
        (format!("[server]\nlisten = \"localhost:80\"\n{B}"), "server.listen", "is not an ip:port"),
        (format!("{B}[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:3001\"\n"), "backends[1].name", "duplicate"),
        (format!("{B}[[backends]]\nname = \"b\"\naddr = \"x:1\"\n[[backends]]\nname = \"c\"\naddr = \"x:2\"\nweight = 5000\n"),
            "backends[2].weight", "5000 is out of range 0..=1000"),
        (format!("{B}weight = -1\n"), "backends[0].weight", "-1 is out of range"),
        ("[[backends]]\nname = \"a\"\naddr = \"x:1\"\nweight = 0\n[[backends]]\nname = \"b\"\naddr = \"x:2\"\nweight = 0\n".into(),
            "backends[*].weight", "at least one weight"),
        ("[server]\nthreads = 2\n".into(), "backends", "at least one"),
        (format!("[balancer]\nalgorithm = \"fastest\"\n{B}"), "balancer.algorithm", "unknown variant `fastest`"),
        (format!("[balancer]\nsticky = \"ip\"\n{B}"), "balancer.sticky", "unknown variant"),
        ("[[backends]]\nname = \"has space\"\naddr = \"x:1\"\n".into(), "backends[0].name", "[A-Za-z0-9_.-]{1,64}"),
        ("[[backends]]\nname = \"a\"\naddr = \"no-port\"\n".into(), "backends[0].addr", "is not host:port"),
        ("[[backends]]\nname = \"a\"\naddr = \"x:99999\"\n".into(), "backends[0].addr", "is not host:port"),
        (format!("[health]\nhost = \"a b\"\n{B}"), "health.host", "\"a b\" is not a host or host:port"),
        (format!("[health]\nhost = \"\"\n{B}"), "health.host", "is not a host"),
        (format!("[circuit_breaker]\nopen_for = \"10s\"\nmax_open_for = \"5s\"\n{B}"), "circuit_breaker.max_open_for", "at least"),
        (format!("[retry]\nstatuses = [404]\n{B}"), "retry.statuses[0]", "404 is out of range 500..=599"),
        (format!("[retry]\nattempts = 0\n{B}"), "retry.attempts", "0 is out of range 1..=10"),
        (format!("[log]\nformat = \"xml\"\n{B}"), "log.format", "unknown variant"),
        (format!("[balancer]\nsticky_cookie = \"a b\"\n{B}"), "balancer.sticky_cookie", "not a cookie name"),
        (format!("[health]\npath = \"health\"\n{B}"), "health.path", "must be an absolute request path"),
        (format!("[health]\nrise = 0\n{B}"), "health.rise", "0 is out of range 1..=100"),
        (format!("[server]\nthreads = \"two\"\n{B}"), "server.threads", "invalid type"),
        ("[[backends]\nname = \"a\"\n".into(), "(line 1)", "invalid table header"),
        (format!("[queue]\nsize = -1\n{B}"), "queue.size", "-1 is out of range 0..=1000000"),
        (format!("[queue]\ntimeout = \"0s\"\n{B}"), "queue.timeout", "is out of range"),
        (format!("[queue]\nlength = 5\n{B}"), "queue.length", "unknown field"),
        (format!("{B}max_in_flight = -3\n"), "backends[0].max_in_flight", "-3 is out of range 0..=1000000"),
        (format!("{B}resolve = \"many\"\n"), "backends[0].resolve", "unknown variant `many`, expected `one` or `all`"),
    ];
    for (text, key, rule) in &cases {
        let (code, out, err) = check_text(text);
        assert_eq!(
            code, 2,
            "expected exit 2 for {key}; stdout {out} stderr {err}"
        );
        let line = err.trim();
        assert_eq!(line.lines().count(), 1, "one line for {key}: {line}");
        assert!(
            line.contains(&format!("{key}: ")),
            "key {key} not named: {line}"
        );
        assert!(line.contains(rule), "rule {rule:?} not in: {line}");
    }
    println!("{} broken configs rejected with exit 2", cases.len());
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

//! Operating a running lb from tests: the admin API (with [`ADMIN_TOKEN`]),
//! `/metrics` parsed into series, signals, config rewrites for reloads, and a
//! graceful stop + restart on the same ports and config (state-file tests).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{client, spawn_lb, Lb, ADMIN_TOKEN};

/// One admin API answer.
#[derive(Debug)]
pub struct AdminReply {
    pub status: u16,
    /// `ETag` header, "" if absent.
    pub etag: String,
    /// The body as JSON (`Null` if it is not JSON).
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Lb {
    /// `http://admin{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `method path` on the admin API with the bearer token and an optional
    /// JSON body.
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> AdminReply {
        let mut req = client()
            .request(method.clone(), self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        let etag = super::header(&r, "etag");
        let text = r.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        AdminReply {
            status,
            etag,
            json,
            text,
        }
    }

    /// `GET path` on the admin API.
    pub async fn admin_get(&self, path: &str) -> AdminReply {
        self.admin_call(reqwest::Method::GET, path, None).await
    }

    /// `PUT path` with a JSON body on the admin API.
    pub async fn admin_put(&self, path: &str, body: &Value) -> AdminReply {
        self.admin_call(reqwest::Method::PUT, path, Some(body))
            .await
    }

    /// `POST /admin/reload`.
    pub async fn reload(&self) -> AdminReply {
        self.admin_call(reqwest::Method::POST, "/admin/reload", None)
            .await
    }

    /// `GET /admin/weights` (asserted 200).
    pub async fn weights(&self) -> BTreeMap<String, u64> {
        let r = self.admin_get("/admin/weights").await;
        assert_eq!(r.status, 200, "GET /admin/weights: {}", r.text);
        serde_json::from_value(r.json).expect("weights map")
    }

    /// `PUT /admin/weights` with `changes` (asserted 200); the full new map.
    pub async fn set_weights(&self, changes: &Value) -> BTreeMap<String, u64> {
        let r = self.admin_put("/admin/weights", changes).await;
        assert_eq!(r.status, 200, "PUT /admin/weights {changes}: {}", r.text);
        serde_json::from_value(r.json).expect("weights map")
    }

    /// `PUT /admin/backends/{name}/mode` (asserted 200).
    pub async fn set_mode(&self, name: &str, mode: &str) {
        let path = format!("/admin/backends/{name}/mode");
        let r = self
            .admin_put(&path, &serde_json::json!({ "mode": mode }))
            .await;
        assert_eq!(r.status, 200, "PUT {path} {mode}: {}", r.text);
    }

    /// `GET /admin/backends` (asserted 200), by name.
    pub async fn backends(&self) -> BTreeMap<String, Value> {
        let r = self.admin_get("/admin/backends").await;
        assert_eq!(r.status, 200, "GET /admin/backends: {}", r.text);
        r.json
            .as_array()
            .expect("a list of backends")
            .iter()
            .map(|b| (b["name"].as_str().expect("name").to_string(), b.clone()))
            .collect()
    }

    /// `GET /metrics` (no token), parsed.
    pub async fn scrape(&self) -> Scrape {
        let r = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200, "GET /metrics");
        Scrape::parse(&r.text().await.expect("read /metrics"))
    }

    /// Sends `sig` to lb.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, not yet reaped (reaping only
        // happens through `child`, which this borrow keeps alive).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// `SIGHUP`: reload the config file.
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Replaces the config file with the generated `[server]`/`[admin]`
    /// sections plus `body`, atomically (temp file + rename), so a reload
    /// never reads half a file.
    pub fn write_config(&self, body: &str) {
        let path = self.config_path();
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, format!("{}{body}", self.head)).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    }

    /// SIGTERM, then waits (at most 5 s) for the exit and reaps it.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "lb did not exit within 5 s of SIGTERM:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts lb again (after [`Lb::stop`]) with the same config file and
    /// ports, its log appended to the previous run's; waits until both ports
    /// accept connections. A port taken meanwhile by another process is
    /// retried for up to 5 s, then the test fails.
    pub async fn restart(&mut self) {
        assert!(!self.is_running(), "restart: lb is still running");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let from = self.log_len();
            self.child = spawn_lb(&self.config_path(), &self.log, true, &self.rust_log);
            match self.wait_listening(from, Duration::from_secs(20)).await {
                Ok(()) => return,
                Err(log) if log.contains("cannot listen") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(log) => panic!("lb exited at restart:\n{log}"),
            }
        }
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The raw text.
    pub text: String,
    /// Every sample, in exposition order.
    pub series: Vec<Series>,
}

impl Scrape {
    /// Parses the text format (comments skipped); panics on a line it cannot
    /// read, which is itself a finding.
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparsable metrics line: {l:?}")))
            .collect();
        Scrape {
            text: text.to_string(),
            series,
        }
    }

    /// The value of `name` whose label set is exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], panicking (with the family's lines) when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let family: Vec<&str> = self
                .text
                .lines()
                .filter(|l| l.starts_with(name))
                .take(20)
                .collect();
            panic!(
                "metric {name}{labels:?} missing; lines of that name:\n{}",
                family.join("\n")
            )
        })
    }

    /// `value(name, {backend, extra...})`.
    pub fn backend(&self, name: &str, backend: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels = vec![("backend", backend)];
        labels.extend_from_slice(extra);
        self.value(name, &labels)
    }

    /// Values of label `key` over every sample of `name`.
    pub fn label_values(&self, name: &str, key: &str) -> BTreeSet<String> {
        self.series
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(key).cloned())
            .collect()
    }

    /// Samples carrying `key="value"`, whatever their name.
    pub fn with_label(&self, key: &str, value: &str) -> Vec<&Series> {
        self.series
            .iter()
            .filter(|s| s.labels.get(key).is_some_and(|v| v == value))
            .collect()
    }

    /// Names of the metric families present (from the samples).
    pub fn names(&self) -> BTreeSet<String> {
        self.series.iter().map(|s| s.name.clone()).collect()
    }
}

/// `name{k="v",...} value [timestamp]`.
fn parse_line(line: &str) -> Option<Series> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([' ', ',']);
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (key, after_key) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after_key.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            r = &after_key[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Series {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `[[backends]]` entries for `(name, addr, weight)`.
pub fn backend_entries(list: &[(&str, std::net::SocketAddr, u32)]) -> String {
    list.iter()
        .map(|(name, addr, w)| {
            format!("[[backends]]\nname = \"{name}\"\naddr = \"{addr}\"\nweight = {w}\n\n")
        })
        .collect()
}

/// `X-Backend` of `n` sequential `GET /api/whoami` through lb, each asserted 200.
pub async fn route_seq(lb: &Lb, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, b) = super::get_backend(&c, &lb.url("/api/whoami")).await;
        assert_eq!(status, 200, "GET /api/whoami through lb");
        out.push(b);
    }
    out
}

/// `lb check -c path`: (exit code, stdout, stderr).
pub fn lb_check(path: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(super::lb_bin())
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .expect("run lb check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `s` without ANSI colour sequences (lb's text logs are coloured).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

//! A small blocking HTTP client for the CLI: `lb healthcheck` (a container
//! HEALTHCHECK in a `scratch` image, where there is no curl) and `lb admin`
//! (admin API calls from inside a container or a host shell).

use std::time::Duration;

/// Default admin base URL, matching `admin.listen`'s default.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
}

/// `GET url`: Ok when the status is 2xx.
pub fn healthcheck(url: &str) -> Result<(), String> {
    match agent().get(url).call() {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => Err(format!("{url}: status {}", r.status())),
        Err(ureq::Error::Status(code, _)) => Err(format!("{url}: status {code}")),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// One admin API call; returns (status, body). Transport errors are `Err`.
pub fn admin(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let mut req = agent().request(&method.to_ascii_uppercase(), &url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(format!("{url}: {e}")),
    };
    let status = resp.status();
    let text = resp.into_string().map_err(|e| format!("{url}: {e}"))?;
    Ok((status, text))
}

//! Chaos: real `app` processes behind a real lb are killed, frozen, made to
//! fail or slow down and restarted under open-loop load, and the clients must
//! not notice beyond what SPEC's "Failure handling" allows. Every test prints
//! its figures (sent, failed, time until lb stops using a bad backend, time
//! until it is readmitted) and asserts them with tolerances derived below.
//!
//! The tests run one at a time (`common::serial`): each runs lb, four apps and 200
//! requests/s, and on a 2-core machine two of them at once would turn
//! scheduling noise into latency failures.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;

/// Health checks: every 200 ms, 100 ms timeout, 2 to rise, 2 to fall.
const INTERVAL: Duration = Duration::from_millis(200);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(100);
const RISE: u32 = 2;
const FALL: u32 = 2;
/// Circuit breaker: 5 consecutive failures open it for 1 s (doubling, max 4 s).
const CB_FAILURES: usize = 5;
const OPEN_FOR: Duration = Duration::from_secs(1);
const MAX_OPEN_FOR: Duration = Duration::from_secs(4);
const ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Open-loop client load: 200 requests/s, i.e. 50/s per backend over four.
const RATE: u32 = 200;
/// Scheduling slack on top of every timing bound derived from the config: the
/// test, lb and four apps share 2 cores, and a descheduled health-check task,
/// app or load sender can add a few hundred ms to any one event. 1 s is well
/// above what we observe and still far below the failure it would hide (a
/// backend never dropped or never readmitted).
const SLACK: Duration = Duration::from_secs(1);
/// Hard limit on one test (each is designed to take 10–20 s).
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs one chaos test alone and bounded in time.
async fn chaos(test: impl Future<Output = ()>) {
    common::serial("chaos", TEST_LIMIT, test).await;
}

/// lb's config body for `apps` with the failure-handling settings above.
fn lb_body(algorithm: &str, response_timeout: Duration, apps: &[AppProcess]) -> String {
    let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
    format!(
        "[balancer]\nalgorithm = \"{algorithm}\"\n\n\
         [health]\npath = \"/health\"\ninterval = {}\ntimeout = {}\nrise = {RISE}\nfall = {FALL}\n\n\
         [circuit_breaker]\nfailures = {CB_FAILURES}\nopen_for = {}\nmax_open_for = {}\n\
         half_open_requests = 1\n\n\
         [retry]\nattempts = {ATTEMPTS}\nstatuses = [502, 503, 504]\n\n\
         [timeouts]\nconnect = {}\nresponse = {}\n\n{}",
        ms(INTERVAL),
        ms(HEALTH_TIMEOUT),
        ms(OPEN_FOR),
        ms(MAX_OPEN_FOR),
        ms(CONNECT_TIMEOUT),
        ms(response_timeout),
        process_backends_toml(apps)
    )
}

/// Four plain apps and lb over them.
async fn rig(algorithm: &str, args: impl Fn(usize) -> Vec<String>) -> (Vec<AppProcess>, Lb) {
    let apps = AppProcess::fleet(4, args).await;
    let lb = Lb::start(&lb_body(algorithm, RESPONSE_TIMEOUT, &apps)).await;
    (apps, lb)
}

/// GET /api/whoami at [`RATE`] for at most `max`.
fn whoami_load(lb: &Lb, max: Duration) -> Load {
    let max_requests = (RATE as f64 * max.as_secs_f64()) as usize;
    Load::start(&lb.url("/api/whoami"), RATE, max_requests, max, Method::GET)
}

/// Waits until every backend has answered through lb, then 0.5 s more of
/// steady load, so pools and EWMAs are warm before the fault.
async fn warm_up(load: &Load, backends: usize) {
    let all = load
        .wait_for(Duration::from_secs(5), |s| {
            (s.per_backend().len() >= backends).then_some(())
        })
        .await;
    assert!(
        all.is_some(),
        "warm-up: not every backend answered: {:?}",
        load.with_samples(|s| s.outcomes())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn after(t: Option<Instant>, t0: Instant) -> String {
    t.map_or("never".into(), |t| secs(t.saturating_duration_since(t0)))
}

/// `t - t0` in seconds, negative when `t` is earlier.
fn signed_secs(t: Instant, t0: Instant) -> f64 {
    match t.checked_duration_since(t0) {
        Some(d) => d.as_secs_f64(),
        None => -(t0 - t).as_secs_f64(),
    }
}

/// The first few failed samples, for assertion messages.
fn show_failed(samples: &[Sample], t0: Instant) -> String {
    samples
        .failed()
        .iter()
        .take(10)
        .map(|s| {
            format!(
                "\n  due {:+.3} s: {} in {} from {:?}",
                signed_secs(s.sent, t0),
                s.outcome(),
                secs(s.latency()),
                s.backend
            )
        })
        .collect()
}

/// Prints the common figures of one run.
fn report(name: &str, samples: &[Sample]) {
    println!(
        "[{name}] sent {}, failed {}, outcomes {:?}, 2xx per backend {:?}",
        samples.len(),
        samples.failed().len(),
        samples.outcomes(),
        samples.per_backend()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_backend_loses_no_request() {
    chaos(async {
        let (mut apps, lb) = rig("round_robin", |_| vec![]).await;
        let load = whoami_load(&lb, Duration::from_secs(10));
        warm_up(&load, 4).await;

        let log_at = lb.log_len();
        let t_kill = Instant::now();
        apps[1].kill9();
        let marked = lb
            .wait_log(log_at, &["marked down", "app-2"], Duration::from_secs(3))
            .await;
        tokio::time::sleep(
            (t_kill + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
        )
        .await;
        let samples = load.stop().await;

        let settled = t_kill + Duration::from_secs(1);
        let far = settled + Duration::from_secs(60);
        let lat_first_s = samples.max_latency(t_kill, settled);
        let lat_after = samples.max_latency(settled, far);
        report("kill9", &samples);
        println!(
            "[kill9] app-2 killed; lb log 'marked down' after {}; last answer from app-2 {} \
             before the kill; max latency: first second {}, after it {} ({} requests)",
            after(marked, t_kill),
            secs(
                t_kill.saturating_duration_since(samples.last_served_by("app-2").unwrap_or(t_kill))
            ),
            secs(lat_first_s),
            secs(lat_after),
            samples.sent_between(settled, far).len()
        );

        // Connection refused is retried on another backend for every method:
        // no client may see the death.
        assert!(
            samples.failed().is_empty(),
            "failed:{}",
            show_failed(&samples, t_kill)
        );
        // A dead process cannot answer; this only guards against mislabelled answers.
        assert!(samples.last_served_by("app-2").is_none_or(|t| t <= settled));
        // Health must take it out: the next check starts within one interval and
        // a refused connect fails at once, so FALL checks take at most
        // FALL × INTERVAL = 0.4 s; 1 s leaves 0.6 s of scheduling slack.
        let down = marked.map(|t| t - t_kill);
        assert!(
            down.is_some_and(|d| d <= Duration::from_secs(1)),
            "lb did not log app-2 'marked down' within 1 s: {down:?}"
        );
        // Once it is out, requests never pay for a connect attempt or a retry
        // to it. On loopback a refused connect costs microseconds, so this is
        // mainly a check that nothing waits on a connect timeout (200 ms) or
        // a response timeout (500 ms); a healthy request takes ~1-5 ms here.
        assert!(
            lat_after < Duration::from_millis(100),
            "a request after kill+1s took {}",
            secs(lat_after)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_black_hole_is_bypassed_then_readmitted() {
    chaos(async {
        let (apps, lb) = rig("round_robin", |_| vec![]).await;
        let load = whoami_load(&lb, Duration::from_secs(12));
        warm_up(&load, 4).await;

        let t_stop = Instant::now();
        apps[1].sigstop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t_cont = Instant::now();
        apps[1].sigcont();
        // Health needs RISE checks INTERVAL apart, the first up to one INTERVAL
        // away; the circuit, if the timeouts opened it, admits a probe after
        // OPEN_FOR. It opened at the earliest ~0.5 s after SIGSTOP (first
        // response timeouts), so by SIGCONT (2 s) its first period has ended;
        // one re-open (2 s) from a probe sent just before SIGCONT also fits.
        let bound = INTERVAL * (RISE + 1) + OPEN_FOR + SLACK;
        let readmit = load
            .wait_for(bound + Duration::from_secs(1), |s| {
                s.first_served_by_after("app-2", t_cont)
            })
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = load.stop().await;

        // A request first sent to the frozen app waits RESPONSE_TIMEOUT, then is
        // retried: latency ≥ 500 ms marks "lb still tried app-2" (others ~ms).
        let stalled: Vec<&Sample> = samples
            .sent_between(t_stop, t_cont)
            .into_iter()
            .filter(|s| s.latency() >= RESPONSE_TIMEOUT - Duration::from_millis(100))
            .collect();
        let last_tried = stalled.iter().map(|s| s.sent).max();
        report("sigstop", &samples);
        println!(
            "[sigstop] app-2 frozen 2 s: {} requests paid a response timeout, the last \
             sent {} after SIGSTOP; max latency {}; served again {} after SIGCONT (bound {})",
            stalled.len(),
            after(last_tried, t_stop),
            secs(samples.max_latency(t_stop, t_stop + Duration::from_secs(60))),
            after(readmit, t_cont),
            secs(bound)
        );

        // GETs stuck on the frozen app time out and are retried elsewhere.
        assert!(
            samples.failed().is_empty(),
            "failed:{}",
            show_failed(&samples, t_stop)
        );
        // lb stops sending to it once health (timeouts, FALL × INTERVAL +
        // HEALTH_TIMEOUT + one INTERVAL of phase = 0.7 s) or the breaker
        // (CB_FAILURES timeouts, ~0.6 s) takes it out; 1 s allows 0.3 s slack.
        let stop_after = last_tried.map_or(Duration::ZERO, |t| t - t_stop);
        assert!(
            stop_after <= Duration::from_secs(1),
            "lb kept sending to the frozen app for {}",
            secs(stop_after)
        );
        let back = readmit.map(|t| t - t_cont);
        assert!(
            back.is_some_and(|d| d <= bound),
            "app-2 not back in rotation within {} of SIGCONT: {back:?}",
            secs(bound)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_500s_open_the_circuit_then_it_closes() {
    chaos(async {
        let (apps, lb) = rig("round_robin", |_| vec![]).await;
        let load = whoami_load(&lb, Duration::from_secs(10));
        warm_up(&load, 4).await;

        let t_fault = Instant::now();
        set_fault(apps[1].addr, None, Some(1.0)).await;
        // 0.8 s of 500s: app-2 gets RATE/4 = 50 requests/s, so CB_FAILURES are
        // reached after ~0.1 s, and the fix lands inside the first OPEN_FOR
        // period (a later fix would wait for doubled periods, another test).
        tokio::time::sleep(Duration::from_millis(800)).await;
        let t_fix = Instant::now();
        set_fault(apps[1].addr, None, Some(0.0)).await;
        let bound = OPEN_FOR + SLACK;
        let readmit = load
            .wait_for(bound + Duration::from_secs(1), |s| {
                s.first_served_by_after("app-2", t_fix)
            })
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let samples = load.stop().await;

        let five: Vec<&Sample> = samples.iter().filter(|s| s.status == Some(500)).collect();
        let other_failed = samples.failed().len() - five.len();
        let last_500 = five.iter().map(|s| s.sent).max();
        // 500 is not a retry status, so each failure counted by the breaker is
        // a client-visible 500 until it opens. Plus requests already on their way
        // to app-2 when the 5th failure is recorded: 50/s × ~2 ms per request ≈
        // 0.1 in flight; allow 3 because the open-loop sender catches up on missed
        // ticks back to back after a stall (a 40 ms stall sends 8 at once, 2 of
        // them to app-2 under round robin).
        const IN_FLIGHT_ALLOWANCE: usize = 3;
        report("error500", &samples);
        println!(
            "[error500] app-2 answered 500 for 0.8 s: clients saw {} 500s (allowed {} + {}), \
             the last sent {} after the fault; served again {} after the fix (bound {})",
            five.len(),
            CB_FAILURES,
            IN_FLIGHT_ALLOWANCE,
            after(last_500, t_fault),
            after(readmit, t_fix),
            secs(bound)
        );

        assert_eq!(other_failed, 0, "failed:{}", show_failed(&samples, t_fault));
        assert!(
            !five.is_empty(),
            "the fault never showed: is /fault working?"
        );
        assert!(
            five.len() <= CB_FAILURES + IN_FLIGHT_ALLOWANCE,
            "{} client-visible 500s; the circuit should open after {CB_FAILURES}",
            five.len()
        );
        let back = readmit.map(|t| t - t_fix);
        assert!(
            back.is_some_and(|d| d <= bound),
            "app-2 not readmitted within {} of the fix: {back:?}",
            secs(bound)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_moves_traffic_off_a_slow_backend() {
    chaos(async {
        // Every app adds 5 ms, so latencies are dominated by the app rather
        // than by scheduling noise; then app-4 becomes 10× slower (50 ms).
        let (apps, lb) = rig("least_time", |_| vec!["--delay-ms".into(), "5".into()]).await;
        let load = whoami_load(&lb, Duration::from_secs(12));
        warm_up(&load, 4).await;

        let t_slow = Instant::now();
        set_fault(apps[3].addr, Some(50), None).await;
        let (from, to) = (
            t_slow + Duration::from_secs(5),
            t_slow + Duration::from_secs(8),
        );
        tokio::time::sleep(to.saturating_duration_since(Instant::now())).await;
        let samples = load.stop().await;

        let (before_n, before_all) = samples.share("app-4", load_start(&samples), t_slow);
        let (n, all) = samples.share("app-4", from, to);
        let share = n as f64 / all.max(1) as f64;
        report("least_time", &samples);
        println!(
            "[least_time] app-4 share before the slowdown {before_n}/{before_all}; \
             in [t+5 s, t+8 s): {n}/{all} = {:.2}%",
            share * 100.0
        );

        assert!(
            samples.failed().is_empty(),
            "failed:{}",
            show_failed(&samples, t_slow)
        );
        // 3 s at 200/s = 600 requests expected; fewer than 400 means the load
        // itself stalled and the share would mean little.
        assert!(all >= 400, "only {all} answers in the window");
        // Peak-EWMA × (in-flight + 1): at 50 ms vs ~6 ms app-4 scores ~8× worse
        // at equal load, so it is only chosen when the others are ~8 deep in
        // flight (rare at 200/s) or to refresh a decayed estimate. Below 10%
        // (a quarter of its fair 25%) is the SPEC-level claim.
        assert!(share < 0.10, "app-4 still got {:.2}%", share * 100.0);
    })
    .await;
}

/// Due time of the first sample (the load's start).
fn load_start(samples: &[Sample]) -> Instant {
    samples.first().map_or_else(Instant::now, |s| s.sent)
}

/// Moments of the all-down scenario.
struct Phases {
    /// Two of four killed.
    half: Instant,
    /// The other two killed.
    all: Instant,
    /// lb has logged the last two 'marked down'.
    down: Instant,
    /// All four restarted (spawned).
    restart: Instant,
    /// All four answer /health.
    healthy: Instant,
    /// Due time of the first 200 after the restart.
    resumed: Option<Instant>,
}

/// Health marks each restarted app up after RISE checks (the first within one
/// INTERVAL); the circuits opened by refused connects are past OPEN_FOR by then
/// (≥ 3 s), so the first request is the closing probe. OPEN_FOR is still
/// allowed for in case a probe re-opened one just before the restart.
const RESUME_BOUND: Duration = Duration::from_millis(
    INTERVAL.as_millis() as u64 * (RISE as u64 + 1)
        + OPEN_FOR.as_millis() as u64
        + SLACK.as_millis() as u64,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_then_all_backends_down_then_back() {
    chaos(async {
        let (mut apps, lb) = rig("round_robin", |_| vec![]).await;
        let load = whoami_load(&lb, Duration::from_secs(25));
        warm_up(&load, 4).await;

        let half = Instant::now();
        apps[0].kill9();
        apps[1].kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log_at = lb.log_len();
        let all = Instant::now();
        apps[2].kill9();
        apps[3].kill9();
        // Wait (bounded) for health to mark the last two down: from then on no
        // backend is eligible. FALL × INTERVAL + one INTERVAL of phase ≈ 0.6 s.
        for id in ["app-3", "app-4"] {
            let seen = lb
                .wait_log(log_at, &["marked down", id], Duration::from_secs(3))
                .await;
            assert!(seen.is_some(), "lb never logged {id} 'marked down'");
        }
        let down = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let restart = Instant::now();
        for a in apps.iter_mut() {
            a.restart();
        }
        for a in apps.iter_mut() {
            a.wait_healthy().await;
        }
        let healthy = Instant::now();
        let resumed = load
            .wait_for(RESUME_BOUND + Duration::from_secs(1), |s| {
                s.iter()
                    .filter(|s| s.ok() && s.sent >= restart)
                    .map(|s| s.sent)
                    .min()
            })
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let samples = load.stop().await;
        check_all_down(
            &samples,
            &Phases {
                half,
                all,
                down,
                restart,
                healthy,
                resumed,
            },
        );
    })
    .await;
}

/// Figures and assertions of `two_then_all_backends_down_then_back`.
fn check_all_down(samples: &[Sample], p: &Phases) {
    let owned = |v: Vec<&Sample>| v.into_iter().cloned().collect::<Vec<Sample>>();
    // Requests still in flight when the last two died may have seen all four
    // dead (then 502 is right); the 2-of-4 phase is the ones answered before.
    let half: Vec<Sample> = samples
        .iter()
        .filter(|s| s.sent >= p.half && s.done < p.all)
        .cloned()
        .collect();
    let gap = owned(samples.sent_between(p.all, p.down));
    let none = owned(samples.sent_between(p.down, p.restart));
    let none_max = none.max_latency(p.down, p.restart);
    let not_503: Vec<&Sample> = none
        .iter()
        .filter(|s| s.status != Some(503) || s.retry_after != "1")
        .collect();
    let steady_from = p.resumed.unwrap_or(p.restart) + Duration::from_secs(1);
    let steady = owned(samples.sent_between(steady_from, steady_from + Duration::from_secs(60)));
    report("all_down", samples);
    println!(
        "[all_down] 2 of 4 killed: {} requests, {} failed; all 4 killed: {} requests until \
         health marked them down ({} after the kill), outcomes {:?}; then {} requests, {} not \
         503 + Retry-After: 1, max latency {}; restarted: all healthy {} after restart, first \
         200 {} after that (bound {}); from 1 s later {} requests, {} failed",
        half.len(),
        half.failed().len(),
        gap.len(),
        secs(p.down - p.all),
        gap.outcomes(),
        none.len(),
        not_503.len(),
        secs(none_max),
        secs(p.healthy - p.restart),
        after(p.resumed, p.healthy),
        secs(RESUME_BOUND),
        steady.len(),
        steady.failed().len()
    );

    assert!(
        half.failed().is_empty(),
        "with 2 of 4 down:{}",
        show_failed(&half, p.half)
    );
    // 1 s at 200/s: 200 expected.
    assert!(
        none.len() >= 100,
        "only {} requests while all were down",
        none.len()
    );
    assert!(
        not_503.is_empty(),
        "all down must answer 503 + Retry-After: 1:{}",
        show_failed(&owned(not_503.clone()), p.down)
    );
    // No backend is tried: the 503 is lb's own answer, ~1 ms on loopback.
    assert!(
        none_max < Duration::from_millis(100),
        "a 503 took {}",
        secs(none_max)
    );
    let back = p.resumed.map(|t| t.saturating_duration_since(p.healthy));
    assert!(
        back.is_some_and(|d| d <= RESUME_BOUND),
        "no 200 within {} of all apps healthy: {back:?}",
        secs(RESUME_BOUND)
    );
    assert!(
        steady.failed().is_empty(),
        "after service resumed:{}",
        show_failed(&steady, steady_from)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_whose_backend_dies_is_not_retried() {
    chaos(async {
        // app-1 holds every /api request for 2 s, so a POST routed to it is
        // surely in flight when it dies. The response timeout is raised to 10 s
        // for this test so that the failure is the death, not a timeout (500 ms
        // would fire first and a POST is not retried on timeout either, but the
        // client would get 504 for a different reason).
        let mut apps = AppProcess::fleet(4, |i| {
            if i == 1 {
                vec!["--delay-ms".into(), "2000".into()]
            } else {
                vec![]
            }
        })
        .await;
        let lb = Lb::start(&lb_body("round_robin", Duration::from_secs(10), &apps)).await;
        let c = client();
        let victim = apps[0].addr;

        let pending = post_until_held(&c, &lb.url("/api/session"), victim).await;
        let victim_in_flight = held_in_flight(victim, 5).await;
        let before = posts_completed(&apps[1..]).await;

        let t_kill = Instant::now();
        apps[0].kill9();
        let (status, backend, body) = tokio::time::timeout(Duration::from_secs(15), pending)
            .await
            .expect("POST answered within 15 s")
            .unwrap();
        let answered = t_kill.elapsed();
        // A wrongful retry would be done before lb answered; 300 ms more is for
        // an /metrics read racing its completion.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_kill = posts_completed(&apps[1..]).await;
        println!(
            "[post] POST in flight on app-1 (its long-lived in-flight requests: \
             {victim_in_flight}); killed; client got {status} (X-Backend {backend:?}) {} after \
             the kill: {body}; POSTs completed by app-2..4: {before} before, {after_kill} after",
            secs(answered)
        );

        assert_eq!(victim_in_flight, 1, "app-1 should hold exactly our POST");
        assert_eq!(status, 502, "a POST that reached a dead backend: {body}");
        assert_eq!(
            after_kill, before,
            "the POST was sent to another backend too"
        );
    })
    .await;
}

/// `(status, X-Backend, body)` of one POST through lb.
type PostResult = (u16, String, String);

/// Sends POSTs one at a time to `url` until one is held by the app at
/// `victim` (round robin reaches it within one rotation; the fast apps answer
/// theirs at once) and returns that still-pending request.
async fn post_until_held(
    c: &reqwest::Client,
    url: &str,
    victim: std::net::SocketAddr,
) -> tokio::task::JoinHandle<PostResult> {
    for _ in 0..8 {
        let (c, url) = (c.clone(), url.to_string());
        let h = tokio::spawn(async move {
            let r = c
                .post(url)
                .body("{}")
                .send()
                .await
                .expect("POST through lb");
            let st = r.status().as_u16();
            let b = header(&r, "x-backend");
            (st, b, r.text().await.unwrap_or_default())
        });
        // Well under the victim's 2 s delay, so a POST it holds is still held.
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if h.is_finished() {
                break;
            }
            if held_in_flight(victim, 3).await >= 1 {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (st, b, body) = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("a POST neither held by app-1 nor answered")
            .unwrap();
        assert_eq!(st, 200, "POST via {b}: {body}");
    }
    panic!("no POST reached app-1 in 8 tries");
}

/// Long-lived requests in flight on the app at `addr`: `app_in_flight` also
/// counts lb's health probes, which last ~1 ms, so the minimum over `reads`
/// reads 20 ms apart counts only the requests being held.
async fn held_in_flight(addr: std::net::SocketAddr, reads: usize) -> u64 {
    let mut min = u64::MAX;
    for i in 0..reads {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        min = min.min(app_in_flight(addr).await);
    }
    min
}

/// POSTs completed by `apps`, from their /metrics.
async fn posts_completed(apps: &[AppProcess]) -> u64 {
    let mut n = 0;
    for a in apps {
        n += app_posts_total(a.addr).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_no_request() {
    chaos(async {
        // On SIGTERM each app answers /health 503 for 500 ms before closing its
        // listener, like a preStop hook, so health can drain it first.
        let (mut apps, lb) = rig("round_robin", |_| {
            vec!["--shutdown-delay-ms".into(), "500".into()]
        })
        .await;
        let load = whoami_load(&lb, Duration::from_secs(25));
        warm_up(&load, 4).await;
        let t0 = Instant::now();

        // After a restart, health needs RISE checks (first within one INTERVAL);
        // a circuit opened by refused connects in the gap between listener close
        // and mark-down delays it by at most OPEN_FOR.
        let bound = INTERVAL * (RISE + 1) + OPEN_FOR + SLACK;
        let mut figures = Vec::new();
        for a in apps.iter_mut() {
            let t_term = Instant::now();
            a.sigterm();
            let st = a.wait_exit(Duration::from_secs(5)).await;
            assert!(
                st.is_some_and(|s| s.success()),
                "{} exit after SIGTERM: {st:?}",
                a.id
            );
            let exited = t_term.elapsed();
            a.restart();
            a.wait_healthy().await;
            let t_up = Instant::now();
            let id = a.id.clone();
            let back = load
                .wait_for(bound + Duration::from_secs(1), |s| {
                    s.first_served_by_after(&id, t_up)
                })
                .await;
            figures.push((id, exited, back.map(|t| t.saturating_duration_since(t_up))));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = load.stop().await;

        report("rolling", &samples);
        for (id, exited, back) in &figures {
            println!(
                "[rolling] {id}: exited {} after SIGTERM; served again {} after healthy (bound {})",
                secs(*exited),
                back.map_or("never".into(), secs),
                secs(bound)
            );
        }
        assert!(
            samples.failed().is_empty(),
            "failed:{}",
            show_failed(&samples, t0)
        );
        for (id, _, back) in &figures {
            assert!(
                back.is_some_and(|d| d <= bound),
                "{id} not readmitted within {}: {back:?}",
                secs(bound)
            );
        }
    })
    .await;
}

//! Slow start (SPEC "Slow start"): a backend back from maintenance ramps
//! from 10 % to 100 % of its share over `balancer.slow_start`, counted at
//! the backends over the window.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_backend_ramps_up_over_the_window() {
    let apps = Apps::plain(2).await;
    let lb = Lb::start(&format!(
        "[balancer]\nslow_start = \"4s\"\n\n{}",
        apps.backends_toml(&[1, 1])
    ))
    .await;
    lb.set_mode("app-2", "maintenance").await;
    // Let the start-up ramp (every backend joins ramping) end first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    lb.set_mode("app-2", "active").await;
    let back = Instant::now();
    let ratio = lb.backends().await["app-2"]["slow_start_ratio"]
        .as_f64()
        .unwrap();
    assert!(
        (0.1..0.3).contains(&ratio),
        "slow_start_ratio just after: {ratio}"
    );
    // Requests one after another over the window and one second after it,
    // tallied per second by which app answered.
    let c = client();
    let mut per_second = [[0u32; 2]; 5];
    while back.elapsed() < Duration::from_secs(5) {
        let (status, name) = get_backend(&c, &lb.url("/api/whoami")).await;
        assert_eq!(status, 200);
        let s = (back.elapsed().as_secs() as usize).min(4);
        per_second[s][usize::from(name == "app-2")] += 1;
    }
    let share: Vec<f64> = per_second
        .iter()
        .map(|[a, b]| f64::from(*b) / f64::from(a + b).max(1.0))
        .collect();
    println!("app-2's share per second after maintenance (slow_start 4 s): {share:.3?}");
    // The ramp r(t) = 0.1 + 0.9 t / 4 gives app-2 r / (1 + r) of the requests
    // against app-1's full share: 0.18 at 0.5 s, 0.30 at 1.5 s, 0.40 at 2.5 s,
    // 0.47 at 3.5 s, then 0.5. Smooth round robin makes the split exact up to
    // the ramp's 5 % steps and the second boundaries; ±0.08 covers both and a
    // slow first request.
    let want = [0.175, 0.304, 0.398, 0.470, 0.5];
    for (s, (got, want)) in share.iter().zip(want).enumerate() {
        assert!(
            (got - want).abs() <= 0.08,
            "second {s}: share {got:.3}, expected {want:.3} ± 0.08 ({share:.3?})"
        );
    }
    assert!(share[0] < share[2] && share[2] < share[4], "{share:.3?}");
    let ratio = lb.backends().await["app-2"]["slow_start_ratio"]
        .as_f64()
        .unwrap();
    assert_eq!(ratio, 1.0, "after the window");
    let scrape = lb.scrape().await;
    assert_eq!(
        scrape.value("lb_backend_slow_start_ratio", &[("backend", "app-2")]),
        1.0
    );
}

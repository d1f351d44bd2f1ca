//! Reloads reaching the core ([`Core::reconfigure`], [`Core::supersede_rollout`])
//! in the same simulation: the pool converges to the new policy without ever
//! dropping below its ready count.

use super::*;

/// A full `[pool]` (the simulation's base keys with other sizes).
fn sized(size: u32, min: u32, max: u32, extra: &str) -> PoolConfig {
    let text = format!(
        "[pool]\ncommand = [\"app\", \"{{port}}\"]\nsize = {size}\nmin_size = {min}\n\
         max_size = {max}\nstart_timeout = \"2s\"\ndrain_timeout = \"1s\"\n{extra}\n"
    );
    Config::from_toml(&text).unwrap().pool.unwrap()
}

#[test]
fn a_new_size_grows_then_shrinks_the_pool() {
    let mut s = Sim::booted("");
    s.core.reconfigure(sized(5, 2, 6, ""));
    assert_eq!(s.core.target, 5, "the file changed size: it wins");
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-1", "app-2", "app-3", "app-4", "app-5"]);
    assert_eq!(s.min_ready, 3, "growing never drains anyone");
    s.watch_from = Some(s.now + Duration::from_millis(200));
    s.set("app-2", |x| x.in_flight = 2);
    s.core.reconfigure(sized(2, 2, 6, ""));
    s.run(Duration::from_millis(300));
    // The three least busy drain at once (nothing to wait for: scale down);
    // the two kept stay ready throughout.
    assert_eq!(s.names().len(), 2);
    assert!(
        s.names().contains(&"app-2".to_string()),
        "the busy one stays"
    );
    assert_eq!(s.min_ready, 2);
    s.run(Duration::from_secs(1));
    assert_eq!(s.core.members.len(), 2, "the surplus stopped");
    let c = &s.core.counters;
    assert_eq!((c.scaled_up, c.scaled_down, c.starts_ok), (1, 1, 5));
}

#[test]
fn a_runtime_size_stays_unless_the_file_changes_size_and_moves_into_new_bounds() {
    let mut s = Sim::booted("");
    s.core.set_size(5).unwrap();
    s.run(Duration::from_secs(1));
    // Same file size (3), another key changed: the operator's 5 stays.
    s.core.reconfigure(sized(3, 2, 5, "max_age = \"1h\""));
    assert_eq!(s.core.target, 5);
    assert_eq!(s.core.config().max_age, Some(Duration::from_secs(3600)));
    // A lower max_size moves it down to the new bound.
    s.core.reconfigure(sized(3, 2, 4, ""));
    assert_eq!(s.core.target, 4);
    s.run(Duration::from_secs(1));
    assert_eq!(s.names().len(), 4);
    // Out of the new range the other way: a higher min_size raises it.
    s.core.set_size(2).unwrap();
    s.run(Duration::from_secs(1));
    s.core.reconfigure(sized(3, 3, 4, ""));
    assert_eq!(s.core.target, 3);
    // The file's size changed: it wins over whatever the target was.
    s.core.set_size(4).unwrap();
    s.core.reconfigure(sized(2, 2, 4, ""));
    assert_eq!(s.core.target, 2);
    s.run(Duration::from_secs(1));
    assert_eq!(s.names().len(), 2);
    assert!(s.min_ready >= 2, "never below min_size: {}", s.min_ready);
}

#[test]
fn new_recycling_limits_apply_to_running_members() {
    let mut s = Sim::booted("");
    s.core.set_memory("app-2", Some(150 << 20));
    s.run(Duration::from_secs(1));
    assert_eq!(s.names(), ["app-1", "app-2", "app-3"], "no limit yet");
    s.core
        .reconfigure(sized(3, 2, 5, "max_memory = \"100MiB\""));
    s.run(Duration::from_secs(2));
    assert_eq!(s.names(), ["app-1", "app-3", "app-4"]);
    let served = s.when(serve_of("app-4")).unwrap();
    let drained = s.when(drain_of("app-2")).unwrap();
    assert!(served <= drained, "{served} ms / {drained} ms");
    assert_eq!(s.min_ready, 3);
    // max_age from a reload counts from each member's own start: at 4 s,
    // app-1 and app-3 (started at 0.1 s) are due, app-4 (2.1 s) is not yet.
    s.core.reconfigure(sized(3, 2, 5, "max_age = \"4s\""));
    s.run(Duration::from_secs(2));
    assert_eq!(s.core.counters.recycles[Reason::Age as usize], 2);
    s.run(Duration::from_millis(500));
    assert_eq!(s.core.counters.recycles[Reason::Age as usize], 3);
    assert_eq!(s.min_ready, 3, "one at a time");
}

#[test]
fn a_reload_rollout_supersedes_one_under_way() {
    let mut s = Sim::booted("");
    s.core.start_rollout(1).unwrap();
    s.run(Duration::from_millis(500));
    assert_eq!(s.core.rollout.as_ref().unwrap().done, 1);
    s.core.supersede_rollout(2);
    let r = s.core.rollout.clone().unwrap();
    assert_eq!(
        (r.state, r.done, r.total, r.previous),
        (RolloutState::Running, 0, 3, 1)
    );
    s.run(Duration::from_secs(4));
    let r = s.core.rollout.clone().unwrap();
    assert_eq!((r.state, r.done), (RolloutState::Done, 3));
    assert!(s.core.members.iter().all(|m| m.generation == 2));
    assert_eq!(s.names().len(), 3);
    assert_eq!(s.min_ready, 3);
    // A broken template from a reload fails like an operator's: the members
    // of generation 2 keep serving and new starts use it again.
    s.broken = Some(3);
    s.core.supersede_rollout(3);
    s.run(Duration::from_secs(3));
    let r = s.core.rollout.clone().unwrap();
    assert_eq!(r.state, RolloutState::Failed);
    assert_eq!(s.core.generation, 2);
    assert_eq!(s.min_ready, 3);
}

#[test]
fn a_new_capacity_changes_when_the_pool_counts_as_saturated() {
    let mut s = Sim::booted("max_in_flight = 4\nscale_up_after = \"1s\"");
    for n in s.names() {
        s.set(&n, |x| x.in_flight = 3);
    }
    s.run(Duration::from_secs(2));
    assert_eq!(s.core.target, 3, "below capacity 4");
    s.core.reconfigure(sized(
        3,
        2,
        5,
        "max_in_flight = 3\nscale_up_after = \"500ms\"",
    ));
    s.run(Duration::from_millis(400));
    assert_eq!(s.core.target, 3, "not before the new scale_up_after");
    s.run(Duration::from_millis(200));
    assert_eq!(s.core.target, 4);
}

"""single_app (seed 001): one app behind lb, 100 clients.

- rps: closed loop, `clients` connections each waiting for its answer (wrk).
- p95/p99, error rate, jitter, halves, lb CPU/RSS/fds: one long open-loop run at
  `single_rate` over `clients` keep-alive connections (latency from each
  request's due time), lb's /proc sampled every second.
- recovery_s: a steady background load, then a burst that pushes the app 10 %
  past its capacity (so a queue builds), then the burst stops; how long until
  the background load's latency is back to what it was before the burst.
"""
import statistics
import threading
import time

from .load import openloop, wrk
from .procs import Stack


def sample_lb(lb, stop, out):
    """Appends (monotonic time, cpu s, rss MiB, fds) of lb every second."""
    while not stop.is_set():
        s = lb.stats()
        if s:
            out.append((time.monotonic(), *s))
        stop.wait(1.0)


def resources(samples):
    if len(samples) < 2:
        return 0.0, 0.0, 0
    (t0, c0, *_), (t1, c1, *_) = samples[0], samples[-1]
    cpu_pct = 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
    return cpu_pct, max(s[2] for s in samples), max(s[3] for s in samples)


def steady(plan, ol, stack, work):
    samples, stop = [], threading.Event()
    t = threading.Thread(target=sample_lb, args=(stack.lb, stop, samples))
    t.start()
    try:
        _, tl, _ = openloop(ol, stack.lb.port, "/api/whoami", plan.single_rate,
                            plan.steady_s, plan.clients, f"{work}/single-steady.log")
    finally:
        stop.set()
        t.join()
    secs = plan.steady_s
    means = [m for m in tl.per_second(secs, lambda w: w.mean_ms()) if m > 0]
    half = secs / 2
    first, second = tl.window(0, half).mean_ms(), tl.window(half, secs).mean_ms()
    cpu, rss, fds = resources(samples)
    return tl, {
        "p95_ms": round(tl.pct(0.95), 2),
        "p99_ms": round(tl.pct(0.99), 2),
        "error_rate": tl.error_rate(),
        "lb_cpu_pct": round(cpu, 1),
        "lb_rss_mib": round(rss, 1),
        "lb_fds": fds,
        "jitter_pct": round(100 * statistics.pstdev(means) / statistics.mean(means), 1)
        if means else 0.0,
        "second_half_vs_first": round(second / first, 3) if first else 0.0,
    }


def recovery(plan, ol, stack, work, capacity):
    before, burst, after = plan.recovery
    total = before + burst + after
    bg_rate = 0.2 * capacity
    burst_rate = 1.1 * capacity - bg_rate
    result = {}

    def start_burst():
        result["burst"] = openloop(ol, stack.lb.port, "/api/whoami", burst_rate, burst,
                                   plan.clients, f"{work}/single-burst.log")

    runner = threading.Thread(target=start_burst)
    _, tl, reached = openloop(ol, stack.lb.port, "/api/whoami", bg_rate, total, 20,
                              f"{work}/single-background.log",
                              actions=[(before, "burst", runner.start)])
    runner.join()
    end = reached["burst"] + burst
    base = tl.window(0.5, before).mean_ms()
    # 100 ms windows of the background load after the burst: recovered from
    # the first window after which every window's mean stays within 20 %.
    step, windows = 0.1, []
    t = end
    while t + step <= total:
        windows.append((t, tl.window(t, t + step).mean_ms()))
        t += step
    recovered_at = end
    for t, m in windows:
        if m > 1.2 * base:
            recovered_at = t + step
    return tl, {"recovery_s": round(max(0.0, recovered_at - end), 2),
                "baseline_ms": round(base, 2), "burst_end_s": round(end, 2)}


def run(plan, ol, work):
    workers = {"app-1": plan.single_workers}
    with Stack(plan, work, workers) as stack:
        capacity = stack.apps["app-1"].capacity
        rps, _ = wrk(stack.lb.port, "/api/whoami", plan.clients, plan.closed_s)
        tl, res = steady(plan, ol, stack, work)
        rtl, rec = recovery(plan, ol, stack, work, capacity)
    result = {"clients": plan.clients, "rps": round(rps, 1)}
    result.update(res)
    result["recovery_s"] = rec["recovery_s"]
    raw = {
        "capacity": capacity,
        "rate": plan.single_rate,
        "per_second_mean_ms": tl.per_second(plan.steady_s, lambda w: round(w.mean_ms(), 2)),
        "per_second_p99_ms": tl.per_second(plan.steady_s, lambda w: round(w.pct(0.99), 2)),
        "recovery": rec,
        "failures": [r for r in tl.records if not tl.ok(r)][:20],
        "recovery_mean_ms": [round(rtl.window(i / 10, (i + 1) / 10).mean_ms(), 2)
                             for i in range(int(sum(plan.recovery) * 10))],
    }
    return result, raw

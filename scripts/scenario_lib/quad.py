"""quad_apps (seed 004): four apps of capacity 1 : 1 : 0.5 : 1.5 (app-3 "low",
app-4 "high"), every operator weight 10 — lb is not told the capacities.

- calibration: each app alone under a closed loop, to show its measured
  capacity matches workers / service time.
- algorithms: for each of round_robin, least_conn, least_time, dynamic, a fresh
  stack under the seed's benchmark, a fixed `quad_rate` (3,000 req/s) for
  `algo_s`: achieved req/s, latency from due time, errors, shares, Jain's index
  of utilisation ÷ capacity; for dynamic the effective weights every second.
  Then another fresh stack under a closed loop (wrk) for the most it serves.
- chaos (algorithm `chaos_algorithm`, fixed `chaos_rate`): kill_one (app-2),
  kill_two (app-1, app-3), memory_pressure (app-4's service time × 5),
  cascading (all but app-4 killed, then restored).
"""
import threading
import time

from .load import Timeline, openloop, wrk
from .procs import App, Stack, free_ports

ALGORITHMS = ["round_robin", "least_conn", "least_time", "dynamic"]


def calibrate(plan, work):
    out = {}
    for (name, n), port in zip(plan.quad_workers.items(), free_ports(4)):
        app = App(plan.bin, work, f"calib-{name}", port, n, plan.service_ms)
        try:
            rps, _ = wrk(port, "/api/whoami", 4 * n, plan.calib_s, threads=1)
        finally:
            app.kill()
        out[name] = {"nominal": app.capacity, "measured": round(rps, 1)}
    return out


def poll_weights(lb, load_t0, stop, out):
    while not stop.is_set():
        try:
            b = lb.backends()
            out.append({"t": round(time.monotonic() - load_t0(), 2),
                        "effective_weight": {n: v["effective_weight"] for n, v in b.items()}})
        except RuntimeError:
            pass
        stop.wait(1.0)


def jain(shares, cap_share):
    x = [shares[n] / cap_share[n] for n in shares]
    s, s2 = sum(x), sum(v * v for v in x)
    return round(s * s / (len(x) * s2), 4) if s2 else 0.0


def one_algorithm(plan, ol, work, algo, cap_share):
    names = list(plan.quad_workers)
    weights, stop = [], threading.Event()
    with Stack(plan, work, plan.quad_workers, algorithm=algo) as stack:
        started = time.monotonic()
        poller = threading.Thread(target=poll_weights,
                                  args=(stack.lb, lambda: started, stop, weights))
        poller.start()
        try:
            _, tl, _ = openloop(ol, stack.lb.port, "/api/whoami", plan.quad_rate,
                                plan.algo_s, plan.quad_conns, f"{work}/quad-{algo}.log")
        finally:
            stop.set()
            poller.join()
    with Stack(plan, work, plan.quad_workers, algorithm=algo) as stack:
        closed, _ = wrk(stack.lb.port, "/api/whoami", plan.quad_conns, plan.quad_closed_s)
    shares = tl.shares(names)
    res = {
        "rps": round(tl.ok_rate(plan.algo_s), 1),
        "p50_ms": round(tl.pct(0.50), 2),
        "p95_ms": round(tl.pct(0.95), 2),
        "p99_ms": round(tl.pct(0.99), 2),
        "error_rate": tl.error_rate(),
        "shares": {n: round(v, 4) for n, v in shares.items()},
        "jain": jain(shares, cap_share),
    }
    raw = {"closed_rps": round(closed, 1), "weights": weights, "unfinished": tl.unfinished(),
           "per_second_p99_ms": tl.per_second(plan.algo_s, lambda w: round(w.pct(0.99), 2)),
           "per_second_ok": tl.ok_per_second(plan.algo_s)}
    return res, raw


def weight_evolution(samples, names, cap_share):
    """Each backend's share of the total effective weight: first sample vs the
    mean over the last quarter of the run."""
    if not samples:
        return {"samples": []}
    def share(s, n):
        total = sum(s["effective_weight"].values()) or 1
        return s["effective_weight"][n] / total
    tail = samples[-max(1, len(samples) // 4):]
    out = {"samples": samples}
    for n in names:
        initial = share(samples[0], n)
        final = sum(share(s, n) for s in tail) / len(tail)
        out[n] = {"initial_share": round(initial, 4), "final_share": round(final, 4),
                  "change_pct": round(100 * (final / initial - 1), 1) if initial else 0.0,
                  "capacity_share": round(cap_share[n], 4)}
    return out


def chaos_run(plan, ol, work, tag, begin, end):
    base, during, after = plan.chaos
    with Stack(plan, work, plan.quad_workers, algorithm=plan.chaos_algorithm) as stack:
        _, tl, reached = openloop(
            ol, stack.lb.port, "/api/whoami", plan.chaos_rate, base + during + after,
            plan.chaos_conns, f"{work}/chaos-{tag}.log",
            actions=[(base, "chaos", lambda: begin(stack)),
                     (base + during, "restore", lambda: end(stack))])
    # The first half second is warm-up (fresh connections, fresh estimates).
    return tl, tl.window(0.5, reached["chaos"]), tl.window(reached["chaos"], reached["restore"]), reached


def ratio(a, b):
    return round(a / b, 3) if b else 0.0


def kill(plan, ol, work, tag, victims):
    def begin(stack):
        for v in victims:
            stack.apps[v].kill()

    def end(stack):
        for v in victims:
            stack.apps[v].start()

    tl, before, during, reached = chaos_run(plan, ol, work, tag, begin, end)
    return {"killed": victims, "availability": round(1 - during.error_rate(), 5),
            "p99_before_ms": round(before.pct(0.99), 2),
            "p99_during_ms": round(during.pct(0.99), 2),
            "p99_increase": ratio(during.pct(0.99), before.pct(0.99)),
            "failed": tl.lost()}, tl, reached


def others(tl, victim):
    return Timeline([r for r in tl.records if r[3] != victim])


def memory_pressure(plan, ol, work, victim="app-4"):
    slow = plan.service_ms * plan.slowdown
    tl, before, during, reached = chaos_run(
        plan, ol, work, "memory",
        lambda s: s.apps[victim].set_service_ms(slow),
        lambda s: s.apps[victim].set_service_ms(plan.service_ms))
    names = list(plan.quad_workers)
    return {"slowed": victim, "service_time_factor": plan.slowdown,
            "share_before": round(before.shares(names)[victim], 4),
            "share_during": round(during.shares(names)[victim], 4),
            "affected_slowdown": ratio(during.mean_ms(victim), before.mean_ms(victim)),
            "others_p99_before_ms": round(others(before, victim).pct(0.99), 2),
            "others_p99_during_ms": round(others(during, victim).pct(0.99), 2),
            "others_p99_ratio": ratio(others(during, victim).pct(0.99),
                                      others(before, victim).pct(0.99)),
            "failed": tl.lost()}, tl, reached


def cascading(plan, ol, work):
    victims = [n for n in plan.quad_workers if n != "app-4"]
    res, tl, reached = kill(plan, ol, work, "cascading", victims)
    restore = reached["restore"]
    # Serving again: the first answer from each restored app after the restore.
    first = {}
    for due, lat, status, b in tl.window(restore).records:
        if 200 <= status < 300 and b in victims and b not in first:
            first[b] = due + lat - restore
    serving = max(first.values()) if len(first) == len(victims) else float("inf")
    # Latency back: from the first second after which every second's p99 is
    # within 2 × the baseline p99.
    base = tl.window(0.5, reached["chaos"]).pct(0.99)
    secs = sum(plan.chaos)
    back, t = 0.0, restore
    while t + 1 <= secs:
        if tl.window(t, t + 1).pct(0.99) > 2 * base:
            back = t + 1 - restore
        t += 1
    recovered = max(serving, back)
    # null: not every restored app served again before the run ended.
    return {"killed": victims, "availability": res["availability"],
            "recovery_s": round(recovered, 2) if recovered != float("inf") else None,
            "serving_again_s": round(serving, 2) if serving != float("inf") else None,
            "requests_lost": tl.lost()}, tl, reached


def chaos_raw(tl, reached, secs):
    return {"reached": reached,
            "per_second_p99_ms": tl.per_second(secs, lambda w: round(w.pct(0.99), 2)),
            "per_second_ok": tl.ok_per_second(secs),
            "per_second_lost": tl.per_second(secs, lambda w: w.lost())}


def run(plan, ol, work):
    names = list(plan.quad_workers)
    total = sum(plan.quad_workers.values())
    cap_share = {n: w / total for n, w in plan.quad_workers.items()}
    calib = calibrate(plan, work)
    algos, raw_algos = {}, {}
    for algo in ALGORITHMS:
        algos[algo], raw_algos[algo] = one_algorithm(plan, ol, work, algo, cap_share)
    rr = algos["round_robin"]["rps"]
    secs = sum(plan.chaos)
    chaos, raw_chaos = {}, {}
    for key, fn in [("kill_one", lambda: kill(plan, ol, work, "kill-one", ["app-2"])),
                    ("kill_two", lambda: kill(plan, ol, work, "kill-two", ["app-1", "app-3"])),
                    ("memory_pressure", lambda: memory_pressure(plan, ol, work)),
                    ("cascading", lambda: cascading(plan, ol, work))]:
        chaos[key], tl, reached = fn()
        raw_chaos[key] = chaos_raw(tl, reached, secs)
    result = {
        "rps": max(r["closed_rps"] for r in raw_algos.values()),
        "algorithms": algos,
        "dynamic_vs_round_robin": ratio(algos["dynamic"]["rps"], rr),
        "least_time_vs_round_robin": ratio(algos["least_time"]["rps"], rr),
        "weights_over_time": weight_evolution(raw_algos["dynamic"]["weights"], names,
                                              cap_share),
        "chaos": chaos,
    }
    raw = {"calibration": calib, "capacity_share": cap_share, "algorithms": raw_algos,
           "chaos": raw_chaos}
    return result, raw

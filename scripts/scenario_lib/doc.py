"""Writes docs/scenarios.md and its SVG charts from results and raw series."""
import os

from . import svg
from .criteria import evaluate
from .quad import ALGORITHMS


def pct(v):
    return f"{100 * v:.3g} %"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def charts(results, raw, meta):
    """{file name: svg text}."""
    out = {}
    s = raw["single_app"]
    out["single-latency.svg"] = svg.line_chart(
        f"One app, {meta['plan']['single_rate']} req/s fixed rate, "
        f"{meta['plan']['clients']} connections: latency per second",
        [("mean", s["per_second_mean_ms"]), ("p99", s["per_second_p99_ms"])], "ms")
    f = raw["dual_apps"]["failover"]
    out["dual-failover.svg"] = svg.line_chart(
        "Two apps, 100 req/s: answers per second while app-1 is stopped and restarted",
        [(n, v) for n, v in f["per_second"].items()], "2xx answers / s",
        markers=[(f["reached"]["stop"], "app-1 stopped"),
                 (f["reached"]["start"], "app-1 started")])
    q = results["quad_apps"]["algorithms"]
    out["quad-algorithms.svg"] = svg.bar_chart(
        f"Four apps (capacity 1 : 1 : 0.5 : 1.5), {meta['plan']['quad_rate']} req/s offered",
        ALGORITHMS, [("answered req/s", [q[a]["rps"] for a in ALGORITHMS]),
                     ("closed loop req/s",
                      [raw["quad_apps"]["algorithms"][a]["closed_rps"] for a in ALGORITHMS])],
        "requests / s",
        labels=[[f"{q[a]['rps']:.0f}" for a in ALGORITHMS],
                [f"{raw['quad_apps']['algorithms'][a]['closed_rps']:.0f}" for a in ALGORITHMS]])
    out["quad-p99.svg"] = svg.bar_chart(
        "Four apps: p99 latency at the fixed rate (log scale)", ALGORITHMS,
        [("p99", [max(q[a]["p99_ms"], 0.1) for a in ALGORITHMS])], "ms", log=True,
        labels=[[f"{q[a]['p99_ms']:.0f} ms" for a in ALGORITHMS]])
    w = results["quad_apps"]["weights_over_time"].get("samples", [])
    if w:
        names = list(w[0]["effective_weight"])
        out["quad-dynamic-weights.svg"] = svg.line_chart(
            "dynamic: effective weight per backend (operator weight 10 each)",
            [(n, [x["effective_weight"][n] for x in w]) for n in names], "effective weight",
            binned=False)
    c = raw["quad_apps"]["chaos"]
    out["quad-chaos.svg"] = svg.line_chart(
        f"Chaos under {meta['plan']['chaos_algorithm']}, {meta['plan']['chaos_rate']} req/s: "
        "p99 per second (log scale)",
        [(k, v["per_second_p99_ms"]) for k, v in c.items()], "ms",
        markers=[(meta["plan"]["chaos"][0], "chaos"),
                 (meta["plan"]["chaos"][0] + meta["plan"]["chaos"][1], "restore")], log=True)
    return out


def capacity_section(raw, meta):
    p = meta["plan"]
    cal = raw["quad_apps"]["calibration"]
    rows = [(n, p["quad_workers"][n], f"{p['service_ms']} ms", f"{c['nominal']:.0f}",
             f"{c['measured']:.0f}") for n, c in cal.items()]
    return f"""## How capacity is modelled

On a 2-core machine four copies of a fast app are limited by the shared CPU, not by
themselves, so balancing algorithms cannot differ the way the seeds expect (issue 12
measured 4,400–5,100 req/s for every algorithm). Here the demo app runs in
**worker-pool mode** (`app --workers N --service-time-ms S`, `app/src/capacity.rs`):
each `/api/*` request holds one of `N` workers for `S` ms — a timer, not CPU work —
and requests that find every worker busy wait in the app's FIFO queue. An app's
capacity is `N × 1000 / S` req/s whatever the host does, like a thread-pool server
that is too small. The seed's CPU limits 1.0 / 1.0 / 0.5 / 1.5 become workers
{' / '.join(str(v) for v in p['quad_workers'].values())} at {p['service_ms']} ms.
Each app measured alone (closed loop, wrk, 4 × N connections, {p['calib_s']} s) —
below nominal because the timer rounds every service time up to the next
millisecond and the apps share the box with everything else; the ratios hold:

{table(["app", "workers", "service time", "nominal req/s", "measured req/s"], rows)}

Latency is measured **open loop**: requests are due on a fixed schedule
(`scripts/bench/openloop.c`) and each one's latency runs from when it was due, so a
backlog is charged to the requests that wait in it (no coordinated omission). Closed
loop (wrk, N connections each waiting for its answer) gives throughput only.
lb runs with 2 threads, health checks every {p['health_interval']} (rise 2, fall 2),
`dynamic.interval = "1s"`, no access log, every operator weight 10: lb is not told
the capacities.
"""


def single_section(r, raw, meta):
    p = meta["plan"]
    s = r["single_app"]
    rec = raw["single_app"]["recovery"]
    return f"""## One app, {p['clients']} clients (seed 001)

One app of {p['single_workers']} workers ({raw['single_app']['capacity']:.0f} req/s) behind lb.
Closed loop, {p['clients']} connections, {p['closed_s']} s: **{s['rps']:.0f} req/s** (the
app's measured capacity: the app, not lb, is the limit). Open loop at {p['single_rate']} req/s over {p['clients']} connections for
{p['steady_s']} s: p95 **{s['p95_ms']} ms**, p99 **{s['p99_ms']} ms**, errors
{pct(s['error_rate'])}, jitter {s['jitter_pct']} %, second half ÷ first
{s['second_half_vs_first']}. lb meanwhile: {s['lb_cpu_pct']} % of one core, RSS
{s['lb_rss_mib']} MiB, {s['lb_fds']} file descriptors. Recovery: a background load of
20 % of capacity (20 connections), then {p['recovery'][1]} s at 110 % of capacity (another
generator, {p['clients']} connections), then back to 20 %: the background's 100 ms mean
latency was within 20 % of its {rec['baseline_ms']} ms baseline **{s['recovery_s']} s** after the
burst ended. The burst is 110 % of the *nominal* capacity, i.e.
{110 * raw['single_app']['capacity'] / s['rps']:.0f} % of the {s['rps']:.0f} req/s the app really serves, so for
{p['recovery'][1]} s requests fall due faster than they are answered and a backlog of about
{(1.1 * raw['single_app']['capacity'] - s['rps']) * p['recovery'][1]:.0f} requests builds. Little of it is in the app or in lb: with
{p['clients'] + 20} connections in all, at most {p['clients'] + 20 - p['single_workers']} requests wait in the app's queue and lb
holds none (no queue configured); the rest are due but not yet sent, waiting in
the two load generators for a free connection (counted from when they were due,
as open-loop measurement must). At the end the burst's share drains first, through
its {p['clients']} connections, then the background's own, through its 20: that drain is the
recovery time, set by the load, the generators' connections and the app's
capacity, not by lb.

![single](scenarios/single-latency.svg)
"""


def dual_section(r, raw, meta):
    p = meta["plan"]
    d = r["dual_apps"]
    sc = raw["dual_apps"]["scaling"]
    probes = [(n, pr["rate"], pr["p99_ms"], "yes" if pr["ok"] else "no")
              for n, key in [("1 app", "probes_one"), ("2 apps", "probes_two")]
              for pr in sc[key]]
    rate, secs, stop, start, after = p["failover"]
    return f"""## Two apps (seed 003)

Two apps of {p['dual_workers']} workers, round robin, `sticky = "cookie"` (the load
generators keep no cookie, so it only matters to the sticky test). Smooth round robin
alternates exactly, so the split is exact rather than merely statistically even.

{table(["measure", "value"], [
        ("shares of " + str(p['share_requests']) + " requests",
         ", ".join(f"{k} {v:.1%}" for k, v in d['shares'].items())),
        ("chi²", d['chi2']),
        (f"failover ({rate} req/s, app-1 stopped at {stop} s, started at {start} s)",
         f"errors {pct(d['failover_error_rate'])}, worst second {d['failover_min_rps']} req/s"),
        (f"app-1's share after {after} s", d['post_recovery_share']),
        (f"sticky ({p['sticky'][0]} clients × {p['sticky'][1]} requests)",
         f"{d['sticky_pct']} % stayed on one backend"),
        ("scaling (highest rate with p99 < " + f"{p['latency_target_ms']:g} ms, no failures)",
         f"{sc['one']:.0f} → {sc['two']:.0f} req/s = {d['scaling_vs_single']}×"),
        ("rolling update under " + f"{p['rolling'][0]} req/s (drain, stop, start, activate)",
         f"{d['rolling_update_failed']} failed requests"),
    ])}

![failover](scenarios/dual-failover.svg)

Scaling probes (bisection, {p['scaling_step_s']} s each):

{table(["apps", "rate", "p99 ms", "within target"], probes)}
"""


def quad_section(r, raw, meta):
    p = meta["plan"]
    q = r["quad_apps"]
    a = q["algorithms"]
    ra = raw["quad_apps"]["algorithms"]
    rows = [(n, f"{a[n]['rps']:.0f}", f"{ra[n]['closed_rps']:.0f}", a[n]["p50_ms"],
             a[n]["p95_ms"], a[n]["p99_ms"], pct(a[n]["error_rate"]), ra[n]["unfinished"],
             " / ".join(f"{v:.0%}" for v in a[n]["shares"].values()), a[n]["jain"])
            for n in ALGORITHMS]
    w = q["weights_over_time"]
    wrows = [(n, f"{w[n]['initial_share']:.0%}", f"{w[n]['final_share']:.0%}",
              f"{w[n]['change_pct']:+g} %", f"{w[n]['capacity_share']:.1%}")
             for n in p["quad_workers"] if n in w]
    c = q["chaos"]
    crows = [
        ("kill_one (app-2)", pct(c["kill_one"]["availability"]),
         f"{c['kill_one']['p99_before_ms']} → {c['kill_one']['p99_during_ms']} ms "
         f"({c['kill_one']['p99_increase']}×)", c["kill_one"]["failed"]),
        ("kill_two (app-1, app-3)", pct(c["kill_two"]["availability"]),
         f"{c['kill_two']['p99_before_ms']} → {c['kill_two']['p99_during_ms']} ms "
         f"({c['kill_two']['p99_increase']}×)", c["kill_two"]["failed"]),
        (f"memory_pressure (app-4 × {p['slowdown']})",
         f"app-4 share {c['memory_pressure']['share_before']:.0%} → "
         f"{c['memory_pressure']['share_during']:.0%}, its latency "
         f"{c['memory_pressure']['affected_slowdown']}×",
         f"others' p99 {c['memory_pressure']['others_p99_before_ms']} → "
         f"{c['memory_pressure']['others_p99_during_ms']} ms "
         f"({c['memory_pressure']['others_p99_ratio']}×)", c["memory_pressure"]["failed"]),
        ("cascading (all but app-4, restored)", pct(c["cascading"]["availability"]),
         f"recovered in {c['cascading']['recovery_s']} s (all apps serving again after "
         f"{c['cascading']['serving_again_s']} s)" if c["cascading"]["recovery_s"] is not None
         else "not recovered before the run ended", c["cascading"]["requests_lost"]),
    ]
    base, during, after = p["chaos"]
    return f"""## Four heterogeneous apps (seed 004)

Capacities 1 : 1 : 0.5 : 1.5 ({sum(p['quad_workers'].values()) * 1000 // p['service_ms']:,} req/s
in all), {p['quad_rate']:,} req/s offered for {p['algo_s']} s per algorithm over
{p['quad_conns']} connections, a fresh lb and fresh apps for each. "closed loop" is
wrk with {p['quad_conns']} connections for {p['quad_closed_s']} s on another fresh stack.
Shares are app-1 / app-2 / app-3 / app-4; Jain's index is over each app's
utilisation ÷ capacity (1 = every app equally loaded for its size).

{table(["algorithm", "answered req/s", "closed loop req/s", "p50 ms", "p95 ms", "p99 ms",
        "errors", "unanswered", "shares", "Jain"], rows)}

"unanswered": requests still waiting 3 s after the run ended (a backlog); they
count in the latency percentiles with the wait they had reached, not as errors.

dynamic ÷ round robin: **{q['dynamic_vs_round_robin']}×**, least_time ÷ round robin:
**{q['least_time_vs_round_robin']}×**; most served: **{q['rps']:.0f} req/s** (closed loop).
An algorithm that answers everything offered scores {p['quad_rate']:,} ÷ round robin's
ceiling, so the ratios above are a floor; the closed-loop column shows how much more
each could take.

![algorithms](scenarios/quad-algorithms.svg)

![p99](scenarios/quad-p99.svg)

`dynamic`'s effective weights, as shares of their sum (first sample vs the mean of
the run's last quarter):

{table(["backend", "initial", "final", "change", "capacity share"], wrows)}

![weights](scenarios/quad-dynamic-weights.svg)

Chaos under `{p['chaos_algorithm']}` at {p['chaos_rate']:,} req/s ({p['chaos_conns']}
connections): {base} s baseline, {during} s of chaos, {after} s after the restore.
Availability is the share of 2xx among requests due during the chaos; killed apps get
SIGKILL and are started again on the same port.

{table(["scenario", "availability", "latency", "failed requests"], crows)}

![chaos](scenarios/quad-chaos.svg)
"""


def _final_weight(w, name):
    """A backend's mean effective weight over the run's last quarter, rounded."""
    samples = w.get("samples", [])
    tail = samples[-max(1, len(samples) // 4):]
    vals = [s["effective_weight"][name] for s in tail if name in s["effective_weight"]]
    return f"{sum(vals) / len(vals):.1f}" if vals else "—"


def _share(w, name):
    """A backend's final share of the weight, as a percentage."""
    v = w.get(name, {}).get("final_share")
    return f"{100 * v:.1f} %" if v is not None else "—"


def why_section(r, raw, meta):
    p = meta["plan"]
    a = r["quad_apps"]["algorithms"]
    w = r["quad_apps"]["weights_over_time"]
    low = p["quad_workers"]["app-3"] * 1000 / p["service_ms"]
    cal = raw["quad_apps"]["calibration"]
    measured = sum(c["measured"] for c in cal.values())
    most = r["quad_apps"]["rps"]
    lost = r["quad_apps"]["chaos"]["cascading"]["requests_lost"]
    box = (f"the most lb served in a closed loop, {most:.0f} req/s, is "
           f"{100 * most / measured:.0f} % of the {measured:.0f} req/s the four apps measured "
           "alone add up to")
    box += (": the apps, not the CPU, were the limit." if most >= 0.9 * measured else
            ": the shared CPU, not the apps, was the limit.")
    return f"""## Why the numbers are what they are

- **round robin** gives every app a quarter of the traffic whatever its size, so the
  smallest app caps the whole: at most 4 × {low:.0f} = {4 * low:.0f} req/s (nominal) before
  app-3's queue grows without bound. At {p['quad_rate']:,} req/s offered it answered
  {a['round_robin']['rps']:.0f} req/s and its latency is the wait in that queue.
- **least_conn** sends each request to the app with the fewest in flight; a bigger
  app finishes faster, so it naturally gets more. **least_time** weighs response time
  × in-flight; both track capacity without being told it.
- **dynamic** starts at equal weights; app-3 is over its capacity at once. Once per
  `dynamic.interval` a backend whose answers queue is cut to the share it completed
  (completed ÷ sent, less what drains its backlog), and the factor where it fell behind
  is remembered: it returns to 90 % of it, holds, and probes upward now and then. Its
  p95/p99 come from the first seconds (app-3's backlog at equal weights, and the deep
  cut that drains it briefly overloads app-1 and app-2). Later app-3 sits at the largest
  weight it keeps up with ({_final_weight(w, 'app-3')} of 10 in the last quarter, {_share(w, 'app-3')} of the
  weight; capacity share 12.5 %). At {p['quad_rate']:,} req/s app-1, app-2 and app-4 all
  answer unqueued in one service time, so nothing lb can measure says app-4 is the
  biggest: its weight share grows only as app-3's falls
  ({w.get('app-4', {}).get('change_pct', 0):+g} %, like app-1's {w.get('app-1', {}).get('change_pct', 0):+g} %). The seed's rule saw the
  containers' CPU use, which a proxy does not see; lb moves weight to app-4 only
  once app-1 and app-2 fall behind, which at this load they do not.
- **Kills** cost little because lb retries a refused connection or a reset on
  another backend, and health checks take the dead app out within
  {p['health_interval']} × 2 (the circuit breaker often sooner). A try that only shows its
  backend is gone (refused, or reset before an answer) does not use up one of
  `retry.attempts` while an untried backend is left, so even with three of four
  apps killed one after the other under load a GET goes on until app-4 answers:
  {lost} request{'s' if lost != 1 else ''} lost in the cascading scenario.
- **The box**: lb, four apps and the load generator share {meta['machine'].split(' ')[0]}
  cores; {box}
"""


def write(path, results, raw, meta):
    d = os.path.join(os.path.dirname(os.path.abspath(path)), "scenarios")
    os.makedirs(d, exist_ok=True)
    for name, text in charts(results, raw, meta).items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    crit = [(s, seed, what, v, t) for s, seed, what, v, t in evaluate(results)]
    met = sum(1 for c in crit if c[0] == "met")
    judged = sum(1 for c in crit if c[0] != "n/a")
    parts = [
        "# Scenarios: the seeds' experiments, measured\n",
        f"Generated by `{meta['command']}` ({meta['mode']} mode, {meta['minutes']} min) on "
        f"{meta['date']}, on {meta['machine']}. Regenerate with `make scenarios`; "
        "`scripts/scenarios-report.py target/scenarios/results.json` prints the criteria. "
        f"Numbers from one run on a shared VM (1-minute load average {meta['load_before']} "
        f"before, {meta['load_after']} after: other work ran too): ratios mean more than "
        "absolutes.\n",
        capacity_section(raw, meta),
        f"## The seeds' criteria ({met} of {judged} met)\n\n" +
        table(["", "seed", "criterion", "measured", "threshold"], crit) + "\n",
        single_section(results, raw, meta),
        dual_section(results, raw, meta),
        quad_section(results, raw, meta),
        why_section(results, raw, meta),
    ]
    with open(path, "w") as f:
        f.write("\n".join(parts))

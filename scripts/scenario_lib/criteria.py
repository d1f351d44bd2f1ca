"""The seeds' success criteria, checked against results.json.

Each criterion: (seed, what, path into results.json, comparison, threshold,
unit). `evaluate` gives one row per criterion: met / not met / n/a, the value
and the threshold, so the report script and docs/scenarios.md say the same.
"""
import operator

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
       "==": operator.eq}
SHOW = {"<": "<", "<=": "≤", ">": ">", ">=": "≥", "==": "="}


MISSING = object()


def get(results, path):
    v = results
    for k in path.split("."):
        if not isinstance(v, dict) or k not in v:
            return MISSING
        v = v[k]
    return v


def _max_share_gap(results):
    shares = get(results, "dual_apps.shares")
    if shares is MISSING:
        return MISSING
    return max(abs(s - 0.5) for s in shares.values()) * 100 if shares else None


def _weight_change(name):
    def f(results):
        w = get(results, f"quad_apps.weights_over_time.{name}")
        return w if w is MISSING else w.get("change_pct")
    return f


# (seed, criterion, value: a path or a function of results, op, threshold,
# unit). Units: "%" a fraction shown as a percentage, "%." already a
# percentage, "pp" percentage points, "×" a ratio.
CRITERIA = [
    ("001", "P95 at 1,000 req/s from 100 clients", "single_app.p95_ms", "<", 200, "ms"),
    ("001", "P99 at 1,000 req/s from 100 clients", "single_app.p99_ms", "<", 500, "ms"),
    ("001", "throughput with 100 clients", "single_app.rps", ">=", 1000, "req/s"),
    ("001", "100 concurrent connections held", "single_app.clients", ">=", 100, ""),
    ("001", "error rate", "single_app.error_rate", "<", 0.001, "%"),
    ("001", "lb CPU (% of one core)", "single_app.lb_cpu_pct", "<", 60, "%."),
    ("001", "lb memory (RSS)", "single_app.lb_rss_mib", "<", 1024, "MiB"),
    ("001", "lb file descriptors", "single_app.lb_fds", "<", 500, ""),
    ("001", "jitter (CV of per-second mean latency)", "single_app.jitter_pct", "<", 20, "%."),
    ("001", "no degradation over time (2nd half ÷ 1st)", "single_app.second_half_vs_first",
     "<", 1.2, "×"),
    ("001", "back to normal after the load drops", "single_app.recovery_s", "<=", 1.0, "s"),
    ("001", "cache hit rate > 50 % (the app's cache, not lb's)", None, None, None, ""),
    ("003", "even split: largest deviation from 50 %", _max_share_gap, "<=", 5, "pp"),
    ("003", "chi² of the split (95 % level)", "dual_apps.chi2", "<", 3.841, ""),
    ("003", "failover: error rate (one app stopped)", "dual_apps.failover_error_rate",
     "<", 0.01, "%"),
    ("003", "zero downtime: worst second of 100 req/s", "dual_apps.failover_min_rps",
     ">", 80, "req/s"),
    ("003", "recovered app's share after 25 s", "dual_apps.post_recovery_share", ">", 0.3, ""),
    ("003", "session affinity", "dual_apps.sticky_pct", ">=", 95, "%."),
    ("003", "throughput, 2 apps ÷ 1 at the same p99 target", "dual_apps.scaling_vs_single",
     ">=", 1.8, "×"),
    ("003", "rolling update: failed requests", "dual_apps.rolling_update_failed",
     "==", 0, ""),
    ("004", "4 apps: most requests per second", "quad_apps.rps", ">=", 3000, "req/s"),
    ("004", "dynamic weighting vs round robin", "quad_apps.dynamic_vs_round_robin",
     ">=", 1.15, "×"),
    ("004", "response-time balancing vs round robin", "quad_apps.least_time_vs_round_robin",
     ">=", 1.15, "×"),
] + [
    ("004", f"fairness (Jain, utilisation ÷ capacity): {a}",
     f"quad_apps.algorithms.{a}.jain", ">", 0.8, "")
    for a in ["round_robin", "least_conn", "least_time", "dynamic"]
] + [
    ("004", "dynamic: low-capacity app-3's weight share", _weight_change("app-3"),
     "<=", -30, "%."),
    ("004", "dynamic: high-capacity app-4's weight share", _weight_change("app-4"),
     ">=", 20, "%."),
    ("004", "one app killed: availability", "quad_apps.chaos.kill_one.availability",
     ">=", 0.999, "%"),
    ("004", "one app killed: p99 increase", "quad_apps.chaos.kill_one.p99_increase",
     "<=", 1.2, "×"),
    ("004", "two apps killed: availability", "quad_apps.chaos.kill_two.availability",
     ">=", 0.999, "%"),
    ("004", "two apps killed: p99 increase", "quad_apps.chaos.kill_two.p99_increase",
     "<=", 2.0, "×"),
    ("004", "memory pressure: slowed app's slowdown",
     "quad_apps.chaos.memory_pressure.affected_slowdown", "<=", 5.0, "×"),
    ("004", "memory pressure: the others' p99",
     "quad_apps.chaos.memory_pressure.others_p99_ratio", "<=", 1.1, "×"),
    ("004", "cascading failure: recovery", "quad_apps.chaos.cascading.recovery_s",
     "<=", 30, "s"),
    ("004", "cascading failure: requests lost", "quad_apps.chaos.cascading.requests_lost",
     "==", 0, ""),
]


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "%":  # a fraction shown as a percentage
        return f"{100 * v:.3g} %"
    if unit in ("%.", "pp"):
        return f"{v:g} {'%' if unit == '%.' else 'pp'}"
    if unit == "×":
        return f"{v:g}×"
    if isinstance(v, float):
        v = round(v, 3)
    return f"{v:g} {unit}".strip() if isinstance(v, (int, float)) else str(v)


def evaluate(results):
    """[(status, seed, what, value text, threshold text)]."""
    rows = []
    for seed, what, path, op, threshold, unit in CRITERIA:
        if path is None:
            rows.append(("n/a", seed, what, "—", "not lb's to meet"))
            continue
        v = path(results) if callable(path) else get(results, path)
        if v is MISSING or v is None:
            # Missing: the run skipped it. None: measured, but never happened
            # (e.g. not recovered before the run ended).
            status = "missing" if v is MISSING else "not met"
            rows.append((status, seed, what, "none" if v is None else "—",
                         f"{SHOW[op]} {fmt(threshold, unit)}"))
            continue
        status = "met" if OPS[op](v, threshold) else "not met"
        rows.append((status, seed, what, fmt(v, unit), f"{SHOW[op]} {fmt(threshold, unit)}"))
    return rows

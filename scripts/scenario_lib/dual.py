"""dual_apps (seed 003): two equal apps behind lb (round robin, cookie stickiness
for clients that keep the cookie; the load generators keep none).

- shares, chi2: `share_requests` requests at a fixed rate, counted by X-Backend.
- failover: 100 req/s for 30 s; app-1 gets SIGTERM (docker stop) at 10 s and is
  started again at 20 s; error rate, the worst second's throughput, app-1's
  share after 25 s.
- sticky_pct: 50 clients × 20 POST /api/session, each keeping its cookie.
- scaling_vs_single: the highest fixed rate whose p99 stays under the latency
  target with every request answered, found by bisection, with app-2 in
  maintenance (one app) and then active (two).
- rolling_update_failed: under 200 req/s, each app in turn is drained through
  the admin API, stopped, started again and put back; failed requests.
"""
import http.client
import threading

from .load import openloop
from .procs import Stack

NAMES = ["app-1", "app-2"]


def shares(plan, ol, stack, work):
    secs = plan.share_requests / plan.share_rate
    _, tl, _ = openloop(ol, stack.lb.port, "/api/whoami", plan.share_rate, secs, 16,
                        f"{work}/dual-shares.log")
    counts = tl.counts()
    n = sum(counts.get(a, 0) for a in NAMES)
    expected = n / 2
    chi2 = sum((counts.get(a, 0) - expected) ** 2 / expected for a in NAMES) if n else 0.0
    return {a: round(counts.get(a, 0) / n, 4) if n else 0.0 for a in NAMES}, round(chi2, 3)


def failover(plan, ol, stack, work):
    rate, secs, stop_at, start_at, after = plan.failover
    app1 = stack.apps["app-1"]
    _, tl, reached = openloop(ol, stack.lb.port, "/api/whoami", rate, secs, 16,
                              f"{work}/dual-failover.log",
                              actions=[(stop_at, "stop", app1.stop),
                                       (start_at, "start", app1.start)])
    per_s = tl.ok_per_second(secs)
    post = tl.window(after, secs).shares(NAMES)
    return {
        "failover_error_rate": tl.error_rate(),
        "failover_min_rps": min(per_s[1:-1]) if len(per_s) > 2 else min(per_s),
        "post_recovery_share": round(post["app-1"], 3),
    }, {"per_second": {a: tl.ok_per_second(secs, a) for a in NAMES},
        "lost": tl.lost(), "reached": reached, "secs": secs}


def one_client(port, i, requests, out):
    """One client: POSTs, keeping lb's cookie like a browser; records X-Backend."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    cookie, seen = None, []
    for n in range(requests):
        headers = {"Content-Type": "application/json", "X-Session-Id": f"client-{i}"}
        if cookie:
            headers["Cookie"] = cookie
        conn.request("POST", "/api/session", body=f'{{"clientId": {i}, "requestNum": {n}}}',
                     headers=headers)
        r = conn.getresponse()
        r.read()
        set_cookie = r.getheader("Set-Cookie")
        if set_cookie:
            cookie = set_cookie.split(";", 1)[0]
        seen.append(r.getheader("X-Backend") if r.status == 200 else None)
    conn.close()
    out[i] = seen


def sticky(plan, stack):
    clients, requests = plan.sticky
    out = {}
    threads = [threading.Thread(target=one_client, args=(stack.lb.port, i, requests, out))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pinned = sum(1 for seen in out.values() if None not in seen and len(set(seen)) == 1)
    return round(100.0 * pinned / clients, 1)


def sustainable(plan, ol, stack, work, capacity, tag):
    """Highest rate (bisection between 0.5 and 1.3 × nominal capacity) whose
    p99 < latency_target_ms with no failed request."""
    lo, hi, best, probes = 0.5 * capacity, 1.3 * capacity, 0.0, []
    for step in range(plan.scaling_steps):
        rate = (lo + hi) / 2
        _, tl, _ = openloop(ol, stack.lb.port, "/api/whoami", rate, plan.scaling_step_s,
                            64, f"{work}/dual-scaling-{tag}-{step}.log")
        ok = tl.pct(0.99) < plan.latency_target_ms and tl.lost() == 0
        probes.append({"rate": round(rate, 1), "p99_ms": round(tl.pct(0.99), 2), "ok": ok})
        if ok:
            best, lo = rate, rate
        else:
            hi = rate
    return best, probes


def scaling(plan, ol, stack, work):
    cap = stack.apps["app-1"].capacity
    stack.lb.set_mode("app-2", "maintenance")
    one, p1 = sustainable(plan, ol, stack, work, cap, "one")
    stack.lb.set_mode("app-2", "active")
    two, p2 = sustainable(plan, ol, stack, work, 2 * cap, "two")
    ratio = round(two / one, 3) if one else 0.0
    return ratio, {"one": one, "two": two, "probes_one": p1, "probes_two": p2}


def rolling(plan, ol, stack, work):
    rate, secs = plan.rolling
    lb, steps = stack.lb, []

    def update_all():
        for name, app in stack.apps.items():
            lb.set_mode(name, "drain")
            # Nothing new goes to it; wait until its last request has finished.
            while lb.backends()[name]["in_flight"] > 0:
                threading.Event().wait(0.02)
            app.stop()
            app.start()  # returns once the new process answers /health
            lb.wait_health(name, "up")
            lb.set_mode(name, "active")
            steps.append(name)

    _, tl, reached = openloop(ol, lb.port, "/api/whoami", rate, secs, 16,
                              f"{work}/dual-rolling.log",
                              actions=[(1.0, "update", update_all)])
    return tl.lost(), {"updated": steps, "requests": len(tl), "reached": reached}


def run(plan, ol, work):
    workers = {n: plan.dual_workers for n in NAMES}
    with Stack(plan, work, workers, sticky="cookie") as stack:
        share, chi2 = shares(plan, ol, stack, work)
        fo, fo_raw = failover(plan, ol, stack, work)
        for n in NAMES:
            stack.lb.wait_health(n, "up")
        sticky_pct = sticky(plan, stack)
        ratio, scale_raw = scaling(plan, ol, stack, work)
        failed, roll_raw = rolling(plan, ol, stack, work)
    result = {"shares": share, "chi2": chi2}
    result.update(fo)
    result.update({"sticky_pct": sticky_pct, "scaling_vs_single": ratio,
                   "rolling_update_failed": failed})
    return result, {"failover": fo_raw, "scaling": scale_raw, "rolling": roll_raw}

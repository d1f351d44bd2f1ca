#!/usr/bin/env python3
"""Helpers for scripts/bench-peers.sh (standard library only).

  peers.py ports N                       N free loopback TCP ports
  peers.py cpus                          the CPUs this process may run on
  peers.py wait PORT [SECONDS [PID]]     until GET / on 127.0.0.1:PORT answers 200
                                         (fails at once if PID has exited)
  peers.py pids PID...                   PID and its descendants, comma-separated
  peers.py measure KIND PIDS OUT [--perf] -- CMD...
                                         run CMD (wrk, openloop, bulk or h2load:
                                         KIND says which;
                                         its output is kept in OUT), print key=value:
                                         the load generator's figures plus the CPU
                                         (utime/stime from /proc) the PIDS and their
                                         descendants spent meanwhile; with --perf,
                                         their syscalls counted by `perf stat`
  peers.py idle PORT N PIDS              open N kept-alive connections (one GET each,
                                         then held idle); print the RSS of PIDS and
                                         their descendants before and after
  peers.py median RAW SECTION ROW KEY    median of KEY over that row's rounds
  peers.py report RAW MD [META...]       the markdown tables (stdout and MD)
"""
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def descendants(pids):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [int(p) for p in pids]
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def cpu_us(pids):
    """(user, system) microseconds spent so far by pids (whole thread groups)."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime: field 14 of stat
        system += int(fields[12])  # stime: field 15
    return user * TICK_US, system * TICK_US


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def to_ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(text):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else 0.0
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        r[f"p{p}"] = to_ms(m.group(1)) if m else float("nan")
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    r["errors"] = errors
    return r


def parse_openloop(text):
    r = dict(kv.split("=", 1) for kv in text.split())
    r = {k: float(v) for k, v in r.items()}
    r["requests"] = int(r["completed"])
    r["errors"] = int(r["errors"] + r["non2xx"])
    return r


def parse_bulk(text):
    r = {k: float(v) for k, v in (kv.split("=", 1) for kv in text.split())}
    r["requests"] = int(r["requests"])
    r["errors"] = int(r["errors"])
    return r


def parse_h2load(text):
    r = {}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    r["rps"] = float(m.group(3)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    r["requests"] = int(m.group(4)) if m else 0
    r["errors"] = (int(m.group(5)) + int(m.group(6)) + int(m.group(7))) if m else 1
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["errors"] += int(m.group(3)) + int(m.group(4))
    return r


PARSE = {"wrk": parse_wrk, "openloop": parse_openloop, "bulk": parse_bulk,
         "h2load": parse_h2load}


def perf_count(path):
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and "raw_syscalls:sys_enter" in parts[2]:
                    return int(parts[0]) if parts[0].isdigit() else None
    except OSError:
        pass
    return None


def measure(kind, pidlist, out, rest):
    use_perf = False
    if rest and rest[0] == "--perf":
        use_perf, rest = True, rest[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    pids = descendants(pidlist.split(","))
    perf = None
    if use_perf:
        perf = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter",
             "-p", ",".join(map(str, pids)), "-o", out + ".perf"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    u0, s0 = cpu_us(pids)
    with open(out, "w") as f:
        child = subprocess.Popen(rest, stdout=f)

        def forward(signum, _frame):  # bench-peers.sh is stopping: stop the load too
            child.send_signal(signum)
            if perf:
                perf.kill()
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        rc = child.wait()
    u1, s1 = cpu_us(pids)
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=10)
    with open(out) as f:
        text = f.read()
    r = PARSE[kind](text)
    n = max(r["requests"], 1)
    r["rc"] = rc
    r["cpu_us_all"] = u1 - u0 + s1 - s0
    r["cpu_user"] = (u1 - u0) / n
    r["cpu_sys"] = (s1 - s0) / n
    r["cpu_total"] = (u1 - u0 + s1 - s0) / n
    if use_perf:
        c = perf_count(out + ".perf")
        r["syscalls"] = c / n if c is not None else float("nan")
    print(" ".join(f"{k}={v}" for k, v in r.items()))


async def idle(port, n, pidlist):
    """Opens n kept-alive connections (one GET each) in two halves and reads the
    balancer's RSS before, between and after. KiB/conn is the growth over the
    second half: the marginal cost of one more idle connection. The first half
    absorbs what is not per connection (buffers a thread sets up on first use,
    and memory the allocator frees lazily after the closed-loop runs, which
    made whole-run growth come out negative once)."""
    pids = pidlist.split(",")
    before = rss_kib(descendants(pids))
    sem = asyncio.Semaphore(100)
    held = []
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(r.readexactly(int(m.group(1))), 5)
                if not head.startswith(b"HTTP/1.1 200"):
                    return False
                held.append(w)
                return True
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                return False

    first = n // 2
    ok1 = sum(await asyncio.gather(*(one() for _ in range(first))))
    await asyncio.sleep(1.5)
    mid = rss_kib(descendants(pids))
    ok2 = sum(await asyncio.gather(*(one() for _ in range(n - first))))
    await asyncio.sleep(1.5)
    # the connections still open after the pause
    alive = sum(1 for w in held if not w.is_closing() and not w.transport.is_closing())
    after = rss_kib(descendants(pids))
    print(f"conns={n} ok={ok1 + ok2} alive={alive} rss_before={before} rss_mid={mid} "
          f"rss_after={after} kib_per_conn={(after - mid) / max(ok2, 1):.2f}")
    for w in held:
        w.close()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait(port, secs, pid=None):
    deadline = time.time() + secs
    while time.time() < deadline:
        if pid and not alive(pid):
            print(f"process {pid} for 127.0.0.1:{port} has exited", file=sys.stderr)
            return 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"127.0.0.1:{port} did not answer 200 within {secs}s", file=sys.stderr)
    return 1


def load_raw(path):
    rows = []
    with open(path) as f:
        for line in f:
            sec, row, rnd, kvs = line.rstrip("\n").split("\t", 3)
            d = {}
            for kv in kvs.split():
                k, v = kv.split("=", 1)
                try:
                    d[k] = float(v)
                except ValueError:
                    d[k] = v
            rows.append((sec, row, rnd, d))
    return rows


def med(rows, sec, row, key):
    vals = [d[key] for s, r, _, d in rows if s == sec and r == row and key in d
            and d[key] == d[key]]
    return statistics.median(vals) if vals else float("nan")


def total(rows, sec, row, key):
    return sum(d.get(key, 0) for s, r, _, d in rows if s == sec and r == row)


def f(v, fmt="{:.0f}"):
    return "n/a" if v != v else fmt.format(v)


def ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


LABEL = {
    "nginx": "nginx 1 worker",
    "haproxy": "HAProxy nbthread 1",
    "lb-nolog": "lb, access log off",
    "lb-shipped": "lb as shipped",
    "lb-base": "lb base binary (BENCH_LB_BASE), access log off",
    "nginx2": "nginx 2 workers",
    "lb2-nolog": "lb threads=2, access log off",
    "lb2-shipped": "lb threads=2 as shipped",
    "haproxy2": "HAProxy nbthread 2",
}


def per_gib(rows, sec, b):
    """Median over rounds of the balancer's CPU seconds per GiB moved."""
    vals = [d["cpu_us_all"] / 1e6 / (d["bytes"] / 2**30) for s, r, _, d in rows
            if s == sec and r == b and d.get("bytes", 0) > 0]
    return statistics.median(vals) if vals else float("nan")


def added_us(rows, b, key):
    """Median over rounds of (balancer's latency − the direct run's of the same
    round), in µs: the latency the balancer adds."""
    direct = {rnd: d[key] for s, r, rnd, d in rows if s == "lat" and r == "direct"}
    vals = [(d[key] - direct[rnd]) * 1000 for s, r, rnd, d in rows
            if s == "lat" and r == b and rnd in direct]
    return statistics.median(vals) if vals else float("nan")


# (section, label, figure, how to get it, unit format, target kind)
#   hi: lb ≥ 1.05× the better of nginx/HAProxy; lo: lb ≤ 0.95× the better;
#   idle: ≤ 2 KiB; lat: ≤ nginx's.
ROWS22 = [
    ("closed", "keep-alive GET, 1 core", "req/s", lambda r, s, b: med(r, s, b, "rps"),
     "{:.0f}", "hi"),
    ("closed", "", "CPU µs/req", lambda r, s, b: med(r, s, b, "cpu_total"), "{:.1f}", "lo"),
    ("t2", "keep-alive GET, 2 threads/workers", "req/s",
     lambda r, s, b: med(r, s, b + "2" if b != "lb-shipped" else "lb2-shipped", "rps"),
     "{:.0f}", "hi"),
    ("t2", "", "CPU µs/req",
     lambda r, s, b: med(r, s, b + "2" if b != "lb-shipped" else "lb2-shipped", "cpu_total"),
     "{:.1f}", "lo"),
    ("dl", "100 MiB download", "MiB/s", lambda r, s, b: med(r, s, b, "mibps"), "{:.0f}", "hi"),
    ("dl", "", "CPU s/GiB", per_gib, "{:.3f}", "lo"),
    ("ul", "100 MiB upload", "MiB/s", lambda r, s, b: med(r, s, b, "mibps"), "{:.0f}", "hi"),
    ("ul", "", "CPU s/GiB", per_gib, "{:.3f}", "lo"),
    ("churn", "new connection per request", "req/s", lambda r, s, b: med(r, s, b, "rps"),
     "{:.0f}", "hi"),
    ("churn", "", "CPU µs/req", lambda r, s, b: med(r, s, b, "cpu_total"), "{:.1f}", "lo"),
    ("rss", "idle connections", "KiB/conn", lambda r, s, b: med(r, s, b, "kib_per_conn"),
     "{:.1f}", "idle"),
    ("rss", "", "RSS MiB", lambda r, s, b: med(r, s, b, "rss_after") / 1024, "{:.1f}", None),
    ("lat", "added latency at 1,000 req/s", "p50 µs",
     lambda r, s, b: added_us(r, b, "p50"), "{:.0f}", "lat"),
    ("lat", "", "p99 µs", lambda r, s, b: added_us(r, b, "p99"), "{:.0f}", "lat"),
    ("https", "HTTPS keep-alive (TLS 1.3)", "req/s", lambda r, s, b: med(r, s, b, "rps"),
     "{:.0f}", "hi"),
    ("https", "", "CPU µs/req", lambda r, s, b: med(r, s, b, "cpu_total"), "{:.1f}", "lo"),
    ("tlsnew", "new TLS connection per request", "handshakes/s",
     lambda r, s, b: med(r, s, b, "rps"), "{:.0f}", "hi"),
    ("tlsnew", "", "CPU µs/handshake", lambda r, s, b: med(r, s, b, "cpu_total"), "{:.1f}",
     "lo"),
    ("h2", "HTTP/2 over TLS (h2load)", "req/s", lambda r, s, b: med(r, s, b, "rps"), "{:.0f}",
     "hi"),
    ("h2", "", "CPU µs/req", lambda r, s, b: med(r, s, b, "cpu_total"), "{:.1f}", "lo"),
]

DIRECT = {("dl", "MiB/s"): lambda r: med(r, "dl", "direct", "mibps"),
          ("ul", "MiB/s"): lambda r: med(r, "ul", "direct", "mibps"),
          ("lat", "p50 µs"): lambda r: med(r, "lat", "direct", "p50") * 1000,
          ("lat", "p99 µs"): lambda r: med(r, "lat", "direct", "p99") * 1000}


def issue22(rows, out):
    """One table: each figure for nginx, HAProxy and lb as shipped, lb's ratio
    to the better peer and issue 22's target, met or not."""
    secs = {r[0] for r in rows}
    lines, verdicts = [], []
    for sec, label, fig, get, fmt, kind in ROWS22:
        if sec not in secs:
            continue
        if sec == "rss" and label:
            label = f"{f(med(rows, 'rss', 'nginx', 'conns'))} idle connections"
        v = {b: get(rows, sec, b) for b in ("nginx", "haproxy", "lb-shipped")}
        lb = v["lb-shipped"]
        peers = [x for x in (v["nginx"], v["haproxy"]) if x == x]
        rat, target, ok = float("nan"), "", None
        if kind == "hi" and peers:
            best = max(peers)
            rat = ratio(lb, best)
            target, ok = "≥ 1.05×", (rat >= 1.05 if rat == rat else None)
        elif kind == "lo" and peers:
            best = min(peers)
            rat = ratio(lb, best)
            target, ok = "≤ 0.95×", (rat <= 0.95 if rat == rat else None)
        elif kind == "idle":
            target, ok = "≤ 2 KiB", (lb <= 2.0 if lb == lb else None)
        elif kind == "lat":
            rat = ratio(lb, v["nginx"])
            target = "≤ nginx"
            ok = lb <= v["nginx"] if lb == lb and v["nginx"] == v["nginx"] else None
        direct = DIRECT.get((sec, fig))
        d = f(direct(rows), fmt) if direct else ""
        errs = "/".join(str(int(total(rows, sec, b, "errors")))
                        for b in ("nginx", "haproxy", "lb-shipped")) if label else ""
        if sec == "t2":
            errs = "/".join(str(int(total(rows, sec, b, "errors")))
                            for b in ("nginx2", "haproxy2", "lb2-shipped")) if label else ""
        mark = "" if ok is None and not target else (
            "n/a" if ok is None else ("**met**" if ok else "not met"))
        lines.append(f"| {label} | {fig} | {d} | {f(v['nginx'], fmt)} | {f(v['haproxy'], fmt)} "
                     f"| {f(lb, fmt)} | {f(rat, '{:.2f}×')} | {target} | {mark} | {errs} |")
        if target:
            verdicts.append(ok)
    if not lines:
        return
    out.append("")
    out.append("Issue 22's rows (lb as shipped against the better of nginx and HAProxy, "
               "medians of interleaved rounds; *direct* = the client straight to the backend):")
    out.append("")
    out.append("| row | figure | direct | nginx | HAProxy | lb as shipped | lb ÷ better peer "
               "| target | | errors n/h/lb |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    out.extend(lines)
    out.append("")
    out.append(f"Issue 22's targets met: {sum(1 for v in verdicts if v)} of {len(verdicts)}.")


def report(raw, md, meta):
    rows = load_raw(raw)
    one = ["nginx", "haproxy", "lb-nolog", "lb-shipped"]
    if any(r[1] == "lb-base" for r in rows):
        one.append("lb-base")
    out = []
    out += [f"{m}" for m in meta]
    secs = {r[0] for r in rows}
    idle_n = med(rows, "rss", "nginx", "conns")
    n_rps = med(rows, "closed", "nginx", "rps")
    n_cpu = med(rows, "closed", "nginx", "cpu_total")
    res = {b: dict(rps=float("nan"), cpu=float("nan"), kib=float("nan")) for b in one}
    if secs & {"closed", "rss", "sys"}:
        out.append("")
        out.append("| balancer | req/s | ×nginx | p50 ms | p99 ms | CPU µs/req user | sys | total "
                   f"| ×nginx | syscalls/req | RSS MiB @{f(idle_n)} idle | KiB/conn | errors |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in one if secs & {"closed", "rss", "sys"} else []:
        rps = med(rows, "closed", b, "rps")
        cpu = med(rows, "closed", b, "cpu_total")
        rss = med(rows, "rss", b, "rss_after") / 1024
        kib = med(rows, "rss", b, "kib_per_conn")
        res[b] = dict(rps=rps, cpu=cpu, kib=kib)
        errs = total(rows, "closed", b, "errors")
        out.append(
            f"| {LABEL[b]} | {f(rps)} | {f(ratio(rps, n_rps), '{:.2f}')} "
            f"| {f(med(rows, 'closed', b, 'p50'), '{:.3f}')} "
            f"| {f(med(rows, 'closed', b, 'p99'), '{:.3f}')} "
            f"| {f(med(rows, 'closed', b, 'cpu_user'), '{:.1f}')} "
            f"| {f(med(rows, 'closed', b, 'cpu_sys'), '{:.1f}')} "
            f"| {f(cpu, '{:.1f}')} | {f(ratio(cpu, n_cpu), '{:.2f}')} "
            f"| {f(med(rows, 'sys', b, 'syscalls'), '{:.1f}')} "
            f"| {f(rss, '{:.1f}')} | {f(kib, '{:.1f}')} | {int(errs)} |")
    fixed = [r for r in rows if r[0] == "fixed"]
    if fixed:
        target = med(rows, "fixed", "nginx", "target")
        out.append("")
        out.append(f"Fixed rate (open loop) at {f(target)} req/s ≈ 50 % of nginx's closed-loop "
                   "maximum, medians over rounds:")
        out.append("")
        out.append("| balancer | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
                   "| p99 ×nginx | CPU µs/req | errors | unfinished |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        n_p99 = med(rows, "fixed", "nginx", "p99")
        for b in one:
            p99 = med(rows, "fixed", b, "p99")
            res[b]["fixed_p99"] = p99
            out.append(
                f"| {LABEL[b]} | {f(med(rows, 'fixed', b, 'rate'))} "
                f"| {f(med(rows, 'fixed', b, 'p50'), '{:.3f}')} "
                f"| {f(med(rows, 'fixed', b, 'p90'), '{:.3f}')} "
                f"| {f(p99, '{:.3f}')} "
                f"| {f(med(rows, 'fixed', b, 'p999'), '{:.3f}')} "
                f"| {f(med(rows, 'fixed', b, 'max'), '{:.3f}')} "
                f"| {f(ratio(p99, n_p99), '{:.2f}')} "
                f"| {f(med(rows, 'fixed', b, 'cpu_total'), '{:.1f}')} "
                f"| {int(total(rows, 'fixed', b, 'errors'))} "
                f"| {int(total(rows, 'fixed', b, 'unfinished'))} |")
        res["nginx_fixed_p99"] = n_p99
    two = [b for b in ("nginx2", "haproxy2", "lb2-nolog", "lb2-shipped") if any(r[1] == b for r in rows)]
    if two:
        out.append("")
        out.append("Two workers/threads, nothing pinned (balancer, backends and wrk -t2 share "
                   "both cores):")
        out.append("")
        out.append("| balancer | req/s | ×nginx 2 workers | p50 ms | p99 ms | CPU µs/req "
                   "| ×nginx | errors |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        n2 = med(rows, "t2", "nginx2", "rps")
        n2c = med(rows, "t2", "nginx2", "cpu_total")
        for b in two:
            rps = med(rows, "t2", b, "rps")
            cpu = med(rows, "t2", b, "cpu_total")
            res[b] = dict(rps=rps)
            out.append(
                f"| {LABEL[b]} | {f(rps)} | {f(ratio(rps, n2), '{:.2f}')} "
                f"| {f(med(rows, 't2', b, 'p50'), '{:.3f}')} "
                f"| {f(med(rows, 't2', b, 'p99'), '{:.3f}')} "
                f"| {f(cpu, '{:.1f}')} | {f(ratio(cpu, n2c), '{:.2f}')} "
                f"| {int(total(rows, 't2', b, 'errors'))} |")
        res["nginx2_rps"] = n2
    issue22(rows, out)
    # issue 8's targets, for lb as shipped
    s = res["lb-shipped"]

    def mark(ok):
        return "n/a" if ok is None else ("met" if ok else "not met")

    def cmp(a, b, le):
        if a != a or b != b:
            return None
        return a <= b if le else a >= b

    t = []
    if "closed" in secs:
        r = ratio(s["cpu"], n_cpu)
        t.append(f"CPU/req ≤ 1.0× nginx: {mark(cmp(r, 1.0, True))} ({f(r, '{:.2f}')}×)")
        r = ratio(s["rps"], n_rps)
        t.append(f"req/s ≥ 1.0× nginx: {mark(cmp(r, 1.0, False))} ({f(r, '{:.2f}')}×)")
    if "fixed_p99" in s:
        a, b = s["fixed_p99"], res["nginx_fixed_p99"]
        t.append(f"fixed-rate p99 ≤ nginx: {mark(cmp(a, b, True))} "
                 f"({f(a, '{:.3f}')} ms vs {f(b, '{:.3f}')} ms)")
    # A negative growth is a measurement gone wrong (memory freed meanwhile),
    # not a result: n/a.
    if "rss" in secs:
        kib_ok = cmp(s["kib"], 16, True) if s["kib"] >= 0 else None
        t.append(f"≤ 16 KiB per idle connection: {mark(kib_ok)} "
                 f"({f(s['kib'], '{:.1f}')} KiB)")
    if "lb2-shipped" in res:
        r = ratio(res["lb2-shipped"]["rps"], res["nginx2_rps"])
        t.append(f"threads=2 req/s ≥ nginx 2 workers: {mark(cmp(r, 1.0, False))} "
                 f"({f(r, '{:.2f}')}×)")
    if t:
        out.append("")
        out.append("Targets (issue 8, lb as shipped): " + "; ".join(t) + ".")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(md, "w") as fh:
        fh.write(text)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        socks = []
        for _ in range(int(args[0])):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    elif cmd == "cpus":
        print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))
    elif cmd == "wait":
        sys.exit(wait(int(args[0]), float(args[1]) if len(args) > 1 else 15,
                      args[2] if len(args) > 2 else None))
    elif cmd == "pids":
        print(",".join(map(str, descendants(args))))
    elif cmd == "measure":
        measure(args[0], args[1], args[2], args[3:])
    elif cmd == "idle":
        asyncio.run(idle(int(args[0]), int(args[1]), args[2]))
    elif cmd == "median":
        print(med(load_raw(args[0]), args[1], args[2], args[3]))
    elif cmd == "report":
        report(args[0], args[1], args[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

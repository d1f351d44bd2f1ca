#!/usr/bin/env python3
"""Helpers for scripts/bench-abuse.sh (standard library only; the process
helpers, wrk parsing and medians come from peers.py next to it).

  abuse.py slowloris PORT N [INTERVAL]  keep N slowloris connections open to
                                        127.0.0.1:PORT: each sends an incomplete
                                        request head, then one more header line
                                        every INTERVAL s (default 5); one the
                                        server closes is opened again at once.
                                        Prints "ready ..." once N were opened,
                                        runs until SIGTERM/SIGINT, then prints
                                        its counts as key=value.
  abuse.py slowread PORT N PATH         N connections that each GET PATH (a large
                                        body) with a 4 KiB receive buffer and read
                                        1 byte per second; not reopened (a server's
                                        close stays queued behind the unread body,
                                        the client never sees it). Same protocol.
  abuse.py measure PIDS PORT OUT [--attack KIND N ARG] [--onset S] [--hold S]
                   [--conns C] [--metrics URL] -- CMD...
                                        run CMD (wrk; output kept in OUT), start the
                                        attack (if any) --onset s (1) into it, sample
                                        the balancer's RSS (PIDS and descendants) and
                                        its connections on PORT meanwhile, keep the
                                        attack going until it has run --hold s, count
                                        what is left, stop it; with --metrics, lb's
                                        counters before and after. Prints key=value.
  abuse.py report RAW MD CAP OVER [META...]
                                        the markdown table (stdout and MD); CAP and
                                        OVER: scenario C's wrk connections
"""
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import cpu_us, descendants, f, load_raw, med, parse_wrk, ratio, rss_kib  # noqa: E402


# --- attackers ------------------------------------------------------------------

def _stop_event():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    return stop


async def slowloris(port, n, interval):
    """Keeps n connections sending an unfinished head, a line every interval s."""
    stop = _stop_event()
    st = dict(opened=0, failed=0, closed=0, open=0)
    ages = []  # age of each connection the server closed, s
    born = {}  # live connection id -> open time
    ready = asyncio.Event()
    rate = 1000.0  # new connections per second at the start (slowhttptest -r 1000)

    async def one(i):
        await asyncio.sleep(i / rate)
        first = True
        while not stop.is_set():
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5)
            except (OSError, asyncio.TimeoutError):
                st["failed"] += 1
                await asyncio.sleep(0.2)
                continue
            t0 = time.monotonic()
            st["opened"] += 1
            st["open"] += 1
            born[i] = t0
            if first:
                first = False
                if st["opened"] >= n:
                    ready.set()
            k = 0
            try:
                w.write(f"GET /?{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n"
                        .encode())
                # a random phase so the lines are spread over the interval
                wait = interval * ((i * 7919) % 1000) / 1000 + 0.01
                while not stop.is_set():
                    try:
                        data = await asyncio.wait_for(r.read(4096), wait)
                    except asyncio.TimeoutError:
                        k += 1
                        w.write(f"X-Slow-{k}: {k}\r\n".encode())
                        wait = interval
                        continue
                    if not data:  # the server closed it (nginx/lb send 408 first)
                        break
                    # an answer (408): read on until the close
                if not stop.is_set():
                    st["closed"] += 1
                    ages.append(time.monotonic() - t0)
            except (OSError, asyncio.IncompleteReadError):
                if not stop.is_set():
                    st["closed"] += 1
                    ages.append(time.monotonic() - t0)
            finally:
                st["open"] -= 1
                born.pop(i, None)
                w.close()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]

    async def announce():
        try:
            await asyncio.wait_for(ready.wait(), 30)
        except asyncio.TimeoutError:
            pass
        print(f"ready opened={st['opened']} failed={st['failed']}", flush=True)

    ann = asyncio.create_task(announce())
    await stop.wait()
    now = time.monotonic()
    # connections open at the end, and how many have lived longer than a
    # header timeout of 10 s plus 2 s of slack
    stale = sum(1 for t in born.values() if now - t > 12)
    oldest = max((now - t for t in born.values()), default=0.0)
    open_end = st["open"]
    ann.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ages.sort()
    print(f"att_opened={st['opened']} att_failed={st['failed']} att_closed={st['closed']} "
          f"att_open_end={open_end} att_stale={stale} att_oldest={oldest:.1f} "
          f"att_age_med={statistics.median(ages) if ages else float('nan'):.1f} "
          f"att_age_max={ages[-1] if ages else float('nan'):.1f}", flush=True)


async def slowread(port, n, path):
    """n connections each asking for a large body and reading 1 byte a second."""
    stop = _stop_event()
    loop = asyncio.get_running_loop()
    socks, failed = [], 0
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowread\r\n\r\n".encode()

    async def one():
        nonlocal failed
        s = socket.socket()
        # a small window, set before connect so the handshake advertises it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 5)
            await asyncio.wait_for(loop.sock_sendall(s, req), 5)
        except (OSError, asyncio.TimeoutError):
            failed += 1
            s.close()
            return
        socks.append(s)

    for i in range(0, n, 100):
        await asyncio.gather(*(one() for _ in range(min(100, n - i))))
    print(f"ready opened={len(socks)} failed={failed}", flush=True)
    got = {s: 0 for s in socks}
    ended = set()
    while not stop.is_set():
        for s in socks:
            if s in ended:
                continue
            try:
                b = s.recv(1)
                if b:
                    got[s] += 1
                else:
                    ended.add(s)
            except BlockingIOError:
                pass
            except OSError:
                ended.add(s)
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
    nbytes = sorted(got.values())
    for s in socks:
        # unread data: close() sends a reset, so the balancer frees it at once
        s.close()
    print(f"att_opened={len(socks)} att_failed={failed} att_closed={len(ended)} "
          f"att_read_med={statistics.median(nbytes) if nbytes else 0}", flush=True)


# --- measuring --------------------------------------------------------------------

def established(port):
    """Server-side sockets on 127.0.0.1:PORT in ESTABLISHED (accepted or waiting
    in the backlog) and in FIN_WAIT1 (closed by the balancer, unsent data left)."""
    est = fin = 0
    hexport = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                next(fh)
                for line in fh:
                    parts = line.split(None, 4)
                    if parts[1].endswith(hexport):
                        if parts[3] == "01":
                            est += 1
                        elif parts[3] == "04":
                            fin += 1
        except OSError:
            pass
    return est, fin


def parse_status(text):
    """The STATUS line of scripts/bench/status.lua: code=count ..."""
    m = re.search(r"^STATUS(.*)$", text, re.M)
    if not m:
        return ""
    return ",".join(kv for kv in m.group(1).split())


# lb's counters worth a look after a run: (metric, label to split by or None)
LB_COUNTERS = [
    ("lb_no_backend_total", None), ("lb_queue_rejected_total", "reason"),
    ("lb_limited_total", "reason"), ("lb_local_errors_total", None),
    ("lb_upstream_errors_total", "kind"), ("lb_retries_total", None),
    ("lb_retries_skipped_total", None), ("lb_health_checks_total", "result"),
    ("lb_requests_total", "code"),
]


def scrape(url):
    """lb's counters of LB_COUNTERS, summed over the other labels."""
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{([^}]*)\})?\s+([\d.eE+-]+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        for metric, by in LB_COUNTERS:
            if name == metric:
                key = metric[3:].replace("_total", "")
                if by:
                    lm = re.search(rf'{by}="([^"]*)"', labels)
                    key += "." + (lm.group(1) if lm else "")
                out[key] = out.get(key, 0) + value
    return out


def measure(pidlist, port, out, rest):
    attack, hold, conns, metrics, onset = None, 0.0, 0, None, 1.0
    while rest and rest[0] != "--":
        if rest[0] == "--onset":
            onset, rest = float(rest[1]), rest[2:]
        elif rest[0] == "--metrics":
            metrics, rest = rest[1], rest[2:]
        elif rest[0] == "--attack":
            attack, rest = rest[1:4], rest[4:]
        elif rest[0] == "--hold":
            hold, rest = float(rest[1]), rest[2:]
        elif rest[0] == "--conns":
            conns, rest = int(rest[1]), rest[2:]
        else:
            sys.exit(f"measure: unknown option {rest[0]}")
    rest = rest[1:]
    pids = descendants(pidlist.split(","))
    r = {}
    att = None
    children = []

    def forward(signum, _frame):  # bench-abuse.sh is stopping: stop the load too
        for c in children:
            try:
                c.send_signal(signal.SIGTERM)
            except OSError:
                pass
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rss0 = rss_kib(pids)
    m0 = scrape(metrics) if metrics else {}
    ready = {}  # the attacker's "ready" line, read by a thread

    def read_ready(proc):
        line = proc.stdout.readline()  # bounded by the attacker's own 30 s
        for kv in line.split()[1:]:
            k, v = kv.split("=", 1)
            ready["att_ready_" + k] = v
        ready["t"] = time.monotonic()

    est_start = established(port)[0]
    u0, s0 = cpu_us(pids)
    t0 = time.monotonic()
    t_att = None  # when the attack started
    peak = max(rss0, rss_kib(pids))
    held_series = []  # (seconds since the attack was ready, attack sockets held)
    with open(out, "w") as fh:
        child = subprocess.Popen(rest, stdout=fh)
        children.append(child)
        while child.poll() is None:
            time.sleep(0.25)
            # the attack starts `onset` s into the normal load, so its onset
            # (connections opened, buffers filled) falls inside the measurement
            if attack and t_att is None and time.monotonic() - t0 >= onset:
                kind, n, arg = attack
                argv = [sys.executable, os.path.abspath(__file__), kind, str(port), n]
                if arg != "-":
                    argv.append(arg)
                att = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
                children.append(att)
                threading.Thread(target=read_ready, args=(att,), daemon=True).start()
                t_att = time.monotonic()
            peak = max(peak, rss_kib(pids))
            if "t" in ready and attack[0] == "slowread":
                est, _ = established(port)
                held_series.append((time.monotonic() - ready["t"], est - conns))
        rc = child.wait()
    t1 = time.monotonic()
    u1, s1 = cpu_us(pids)
    peak = max(peak, rss_kib(pids))
    # the attack keeps going until it has run `hold` seconds (past the
    # balancers' 10 s timeouts), so what is left at the end is what was not cut
    while att and (time.monotonic() - t_att < hold or "t" not in ready) \
            and time.monotonic() - t_att < hold + 30:
        time.sleep(0.5)
        peak = max(peak, rss_kib(pids))
        if "t" in ready and attack[0] == "slowread":
            est, _ = established(port)
            held_series.append((time.monotonic() - ready["t"], est))
    est_end, fin_end = established(port)
    if att:
        att.send_signal(signal.SIGTERM)
        try:
            tail, _ = att.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            att.kill()
            tail, _ = att.communicate()
        r.update((k, v) for k, v in ready.items() if k != "t")
        r["att_ready_s"] = round(ready.get("t", float("nan")) - t_att, 2)
        for kv in tail.split():
            if "=" in kv:
                k, v = kv.split("=", 1)
                r[k] = v
    # the balancer lets go of what the attack left (up to 15 s)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and established(port)[0] > 0:
        time.sleep(0.2)
    time.sleep(0.5)
    with open(out) as fh:
        text = fh.read()
    r.update(parse_wrk(text))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sock_err = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(m.group(1)) if m else 0
    r["sock_errors"] = sock_err
    r["non2xx"] = non2xx
    r["err_rate"] = 100.0 * (non2xx + sock_err) / max(r["requests"] + sock_err, 1)
    secs = t1 - t0
    r["ok_rps"] = (r["requests"] - non2xx) / secs if secs > 0 else 0.0
    r["rc"] = rc
    r["cpu_pct"] = 100.0 * ((u1 - u0) + (s1 - s0)) / 1e6 / secs if secs > 0 else 0.0
    r["rss_start"] = rss0
    r["rss_peak"] = peak
    r["rss_after"] = rss_kib(pids)
    r["est_start"] = est_start
    r["held_end"] = est_end if attack else 0
    r["cut_end"] = fin_end if attack else 0
    if attack and attack[0] == "slowread":
        # when the balancer had cut half of them (from its side: ESTABLISHED)
        n = int(attack[1])
        half = next((t for t, h in held_series if h <= n / 2), float("nan"))
        r["half_cut_s"] = round(half, 1)
    r["status"] = parse_status(text) or "-"
    if metrics:
        m1 = scrape(metrics)
        # what lb counted during the run (non-zero deltas); 2xx and 4xx left
        # out (4xx: the requests wrk cuts when it stops, counted as 499)
        d = {k: m1[k] - m0.get(k, 0) for k in m1
             if m1[k] - m0.get(k, 0)
             and k not in ("requests.2xx", "requests.4xx", "health_checks.success")}
        r["lb"] = ",".join(f"{k}={v:.0f}" for k, v in sorted(d.items())) or "-"
    print(" ".join(f"{k}={v}" for k, v in r.items()))


# --- report -------------------------------------------------------------------------

LABEL = {"nginx": "nginx", "haproxy": "HAProxy", "lb": "lb", "lb-q0": "lb, queue size 0"}
SCEN = [
    ("base", "baseline: normal load alone"),
    ("slowloris", "A: + 2,000 slowloris"),
    ("slowread", "B: + 200 slow readers"),
    ("capbase", "C baseline: capped backend at 1× (wrk -c{cap})"),
    ("overload", "C: 10× overload (wrk -c{over})"),
]
BASE_OF = {"base": "base", "slowloris": "base", "slowread": "base",
           "capbase": "capbase", "overload": "capbase"}


def statuses(rows, sec, b):
    tot = {}
    for s, row, _, d in rows:
        if s == sec and row == b and isinstance(d.get("status"), str) and d["status"] != "-":
            for kv in d["status"].split(","):
                k, v = kv.split("=")
                tot[k] = tot.get(k, 0) + int(v)
    n = sum(tot.values())
    if not n:
        return ""
    return ", ".join(f"{k}: {100 * v / n:.1f} %" for k, v in sorted(tot.items()))


def lb_counted(rows, sec, b):
    """lb's own counters over that row's runs (summed over rounds), non-zero ones."""
    tot = {}
    for s, row, _, d in rows:
        if s == sec and row == b and isinstance(d.get("lb"), str) and d["lb"] != "-":
            for kv in d["lb"].split(","):
                k, v = kv.split("=")
                tot[k] = tot.get(k, 0) + float(v)
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(tot.items()))


def attack_note(rows, sec, b):
    if sec == "slowloris":
        return (f"{f(med(rows, sec, b, 'att_opened'))} opened, "
                f"{f(med(rows, sec, b, 'att_closed'))} closed by it at "
                f"{f(med(rows, sec, b, 'att_age_med'), '{:.1f}')} s (median), "
                f"{f(med(rows, sec, b, 'att_stale'))} open > 12 s at the end")
    if sec == "slowread":
        return (f"{f(med(rows, sec, b, 'att_opened'))} opened, half cut by "
                f"{f(med(rows, sec, b, 'half_cut_s'), '{:.0f}')} s, "
                f"{f(med(rows, sec, b, 'held_end'))} still held at the end")
    return ""


def report(raw, md, meta, cap, over):
    rows = load_raw(raw)
    balancers = [b for b in LABEL if any(r[1] == b for r in rows)]
    out = [m for m in meta] + [""]
    out.append("| scenario | balancer | p50 ms | p99 ms | p99 × own baseline | errors | "
               "req/s (2xx) | RSS MiB (peak) | CPU % | attack / answers |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    res = {}
    for sec, title in SCEN:
        if not any(r[0] == sec for r in rows):
            continue
        for b in balancers:
            if not any(r[0] == sec and r[1] == b for r in rows):
                continue
            p99 = med(rows, sec, b, "p99")
            base = med(rows, BASE_OF[sec], b, "p99")
            res[(sec, b)] = dict(p99=p99, ratio=ratio(p99, base),
                                 err=med(rows, sec, b, "err_rate"))
            note = attack_note(rows, sec, b) if sec in ("slowloris", "slowread") \
                else statuses(rows, sec, b)
            counted = lb_counted(rows, sec, b)
            if counted:
                note = (note + "; " if note else "") + "lb counted " + counted
            out.append(
                f"| {title.format(cap=cap, over=over)} | {LABEL[b]} "
                f"| {f(med(rows, sec, b, 'p50'), '{:.2f}')} | {f(p99, '{:.2f}')} "
                f"| {f(ratio(p99, base), '{:.2f}') if sec != BASE_OF[sec] else '1'} "
                f"| {f(res[(sec, b)]['err'], '{:.2f}')} % "
                f"| {f(med(rows, sec, b, 'ok_rps'))} "
                f"| {f(med(rows, sec, b, 'rss_peak') / 1024, '{:.1f}')} "
                f"| {f(med(rows, sec, b, 'cpu_pct'))} | {note} |")
    # memory over the whole run: the balancer's RSS at the first and last measurement
    first = {}
    last = {}
    for s, b, _, d in rows:
        first.setdefault(b, d.get("rss_start"))
        last[b] = d.get("rss_after")
    out.append("")
    out.append("RSS over the whole run (first measurement's start → last one's end, MiB): "
               + "; ".join(f"{LABEL[b]} {f(first[b] / 1024, '{:.1f}')} → "
                           f"{f(last[b] / 1024, '{:.1f}')}" for b in balancers) + ".")

    def mark(ok):
        return "n/a" if ok is None else ("met" if ok else "not met")

    t = []
    for sec, name, who in (("slowloris", "A slowloris", "lb"),
                           ("slowread", "B slow readers", "lb"),
                           ("overload", "C 10× overload", "lb"),
                           ("overload", "C with queue size 0", "lb-q0")):
        if (sec, who) not in res:
            continue
        lb = res[(sec, who)]
        ok1 = None if lb["ratio"] != lb["ratio"] else lb["ratio"] <= 1.5
        line = f"{name}: p99 ≤ 1.5× baseline {mark(ok1)} ({f(lb['ratio'], '{:.2f}')}×)"
        if (sec, "nginx") in res:
            ng = res[(sec, "nginx")]
            ok2 = None if ng["p99"] != ng["p99"] or lb["p99"] != lb["p99"] \
                else lb["p99"] <= ng["p99"]
            line += (f", p99 ≤ nginx's {mark(ok2)} ({f(lb['p99'], '{:.2f}')} vs "
                     f"{f(ng['p99'], '{:.2f}')} ms; errors {f(lb['err'], '{:.2f}')} % vs "
                     f"{f(ng['err'], '{:.2f}')} %)")
        t.append(line)
    out.append("")
    out.append("Goals for lb (SPEC): " + "; ".join(t) + ".")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(md, "w") as fh:
        fh.write(text)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "slowloris":
        asyncio.run(slowloris(int(args[0]), int(args[1]),
                              float(args[2]) if len(args) > 2 else 5.0))
    elif cmd == "slowread":
        asyncio.run(slowread(int(args[0]), int(args[1]), args[2]))
    elif cmd == "measure":
        measure(args[0], int(args[1]), args[2], args[3:])
    elif cmd == "report":
        report(args[0], args[1], args[4:], args[2], args[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

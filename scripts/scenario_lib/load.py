"""Load generators and what their output says.

Open loop (fixed rate, latency without coordinated omission): the repo's
scripts/bench/openloop.c, compiled once with cc. Request i is due at
t0 + i/rate whatever happened before; its latency runs from when it was due,
so a backend that falls behind is charged for the queue it causes. With a log
path it writes one line per request (due, latency, status, X-Backend), which
`Timeline` turns into percentiles, per-second series and per-backend shares.

Closed loop (N clients each waiting for its answer before the next request,
the seeds' "100 clients"): wrk, for throughput only — its latencies hide
queueing (coordinated omission), so none are taken from it.
"""
import os
import re
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_S = 0.02  # openloop starts its schedule 20 ms after it starts


def build_openloop(work):
    out = os.path.join(work, "openloop")
    src = os.path.join(ROOT, "scripts", "bench", "openloop.c")
    subprocess.run(["cc", "-O2", "-o", out, src], check=True)
    return out


class OpenLoop:
    """A running openloop process; `wait()` gives (summary, Timeline)."""

    def __init__(self, binary, port, path, rate, secs, conns, log):
        self.log, self.secs = log, secs
        argv = [binary, "127.0.0.1", str(port), path, f"{rate:.1f}", f"{secs:.3f}",
                str(conns), log]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.t0 = self.started + STARTUP_S

    def at(self, offset_s):
        """Sleeps until offset_s into the schedule; returns the offset reached."""
        delay = self.t0 + offset_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return self.now()

    def now(self):
        return time.monotonic() - self.t0

    def wait(self):
        out, err = self.proc.communicate(timeout=self.secs + 30)
        if self.proc.returncode != 0:
            raise RuntimeError(f"openloop failed ({self.proc.returncode}): {err.strip()}")
        summary = dict(kv.split("=", 1) for kv in out.split())
        return {k: float(v) for k, v in summary.items()}, Timeline.read(self.log)


def openloop(binary, port, path, rate, secs, conns, log, actions=()):
    """Runs one open-loop load; `actions` are (offset_s, label, fn) run meanwhile.
    Returns (summary, timeline, {label: offset actually reached})."""
    load = OpenLoop(binary, port, path, rate, secs, conns, log)
    reached = {}
    for offset, label, fn in sorted(actions, key=lambda a: a[0]):
        load.at(offset)
        reached[label] = load.now()
        fn()
    summary, tl = load.wait()
    return summary, tl, reached


def wrk(port, path, conns, secs, threads=2):
    """Closed loop: (requests/s, non-2xx + socket errors) from wrk."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s",
            f"http://127.0.0.1:{port}{path}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stdout.strip()} {r.stderr.strip()}")
    out = r.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        bad += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        bad += sum(int(x) for x in m.groups())
    return rps, bad


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[k]


class Timeline:
    """Per-request records: (due_s, latency_s, status, backend)."""

    def __init__(self, records):
        self.records = records

    @classmethod
    def read(cls, path):
        recs = []
        with open(path) as f:
            for line in f:
                due, lat, status, backend = line.split()
                recs.append((int(due) / 1e6, int(lat) / 1e6, int(status), backend))
        recs.sort()
        return cls(recs)

    def window(self, start=0.0, end=float("inf")):
        """Requests due in [start, end)."""
        return Timeline([r for r in self.records if start <= r[0] < end])

    def __len__(self):
        return len(self.records)

    @staticmethod
    def ok(r):
        return 200 <= r[2] < 300

    def latencies_ms(self, backend=None):
        """Sorted latencies in ms of every request that got an answer or was
        still waiting at the end (connection failures have none)."""
        return sorted(r[1] * 1e3 for r in self.records
                      if r[2] != 0 and (backend is None or r[3] == backend))

    def pct(self, q, backend=None):
        return percentile(self.latencies_ms(backend), q)

    def mean_ms(self, backend=None):
        v = self.latencies_ms(backend)
        return sum(v) / len(v) if v else 0.0

    def unfinished(self):
        """Requests still unanswered when the run (plus 3 s) ended."""
        return sum(1 for r in self.records if r[2] == -1)

    def failed(self):
        """Requests that got an error: a failed connection or a non-2xx answer."""
        return sum(1 for r in self.records if r[2] != -1 and not self.ok(r))

    def lost(self):
        """Requests that never got a 2xx answer (failed or unfinished)."""
        return sum(1 for r in self.records if not self.ok(r))

    def error_rate(self):
        """Share of the requests that ended which ended in an error."""
        ended = len(self.records) - self.unfinished()
        return self.failed() / ended if ended else 0.0

    def counts(self):
        """2xx answers by backend."""
        c = {}
        for r in self.records:
            if self.ok(r):
                c[r[3]] = c.get(r[3], 0) + 1
        return c

    def shares(self, names):
        c = self.counts()
        total = sum(c.values()) or 1
        return {n: c.get(n, 0) / total for n in names}

    def ok_per_second(self, secs, backend=None):
        """2xx answers per second of *completion* time (what a throughput
        meter sees), for whole seconds 0..secs-1."""
        bins = [0] * int(secs)
        for due, lat, status, b in self.records:
            if 200 <= status < 300 and (backend is None or b == backend):
                s = int(due + lat)
                if 0 <= s < len(bins):
                    bins[s] += 1
        return bins

    def per_second(self, secs, fn):
        """fn(Timeline of the requests due in second s) for s in 0..secs-1."""
        by = [[] for _ in range(int(secs))]
        for r in self.records:
            s = int(r[0])
            if 0 <= s < len(by):
                by[s].append(r)
        return [fn(Timeline(rs)) for rs in by]

    def ok_rate(self, secs):
        """2xx answers completed within the run, per second of the run."""
        n = sum(1 for due, lat, status, _ in self.records
                if 200 <= status < 300 and due + lat <= secs)
        return n / secs if secs > 0 else 0.0

#!/usr/bin/env bash
# `make bench-wakeups`: cross-thread wake-ups per request (issue 22 item 2).
#
# lb runs with `threads = 2` (BENCH_WAKE_THREADS) in front of one tiny
# backend (nginx, `return 200 "ok"`), lb.toml's defaults otherwise (access
# log on, to a file). wrk loads it for BENCH_WAKE_SECONDS (5) twice: keep-alive
# GETs over 64 connections, then a new connection per request. Meanwhile
# `perf record -e sched:sched_wakeup` on lb's threads records every wake-up an
# lb thread performs; a wake-up whose target is another of lb's threads is a
# cross-thread wake-up (a task spawned or woken on another thread's runtime,
# a reactor woken from outside, a lock handed over). Wake-ups of lb's threads
# by the kernel on behalf of a client or backend (data arrived) are not
# performed by an lb thread and are not counted here.
#
# Prints, per mode: requests, cross-thread wake-ups in all and per 1,000
# requests, and the threads involved (by name); writes target/bench-wakeups.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BENCH_BIN:-target/release}
secs=${BENCH_WAKE_SECONDS:-5}
threads=${BENCH_WAKE_THREADS:-2}
helper=scripts/bench/peers.py
[ -x "$bin/lb" ] || { echo "bench-wakeups needs $bin/lb (make build)" >&2; exit 1; }
for t in nginx wrk perf; do
  command -v "$t" >/dev/null || { echo "bench-wakeups needs $t (apt-get install nginx wrk linux-perf)" >&2; exit 1; }
done
# (Captured first: `grep -q` closing the pipe early fails it under pipefail.)
tracepoints=$(perf list 'sched:*' 2>/dev/null || true)
grep -q 'sched:sched_wakeup ' <<<"$tracepoints" ||
  { echo "bench-wakeups: perf cannot see the sched:sched_wakeup tracepoint here (tracefs, root)" >&2; exit 1; }

# shellcheck source=bench/ok-backend.sh
. scripts/bench/ok-backend.sh
bench_work bench-wakeups

read -r be p_lb a_lb <<<"$(python3 "$helper" ports 3)"
ok_backend "$be"

cat >"$work/lb.toml" <<TOML
[server]
listen = "127.0.0.1:$p_lb"
threads = $threads

[admin]
listen = "127.0.0.1:$a_lb"

[[backends]]
name = "app-1"
addr = "127.0.0.1:$be"
TOML
"$bin/lb" check -c "$work/lb.toml" >/dev/null

rows=()
for mode in keepalive churn; do
  env -u RUST_LOG setsid "$bin/lb" -c "$work/lb.toml" >"$work/lb-$mode.log" 2>&1 </dev/null &
  pid[lb]=$!
  python3 "$helper" wait "$p_lb" 30 "${pid[lb]}" || { tail -20 "$work/lb-$mode.log" >&2; exit 1; }
  lbpid=${pid[lb]}
  hdr=()
  [ "$mode" = keepalive ] || hdr=(-H 'Connection: close')
  echo "bench-wakeups: $mode, ${secs}s under perf record" >&2
  perf record -q -e sched:sched_wakeup -p "$lbpid" -o "$work/$mode.data" -- sleep "$((secs + 1))" \
    >"$work/perf-$mode.log" 2>&1 &
  perfpid=$!
  sleep 0.5
  wrk -t2 -c64 -d"${secs}s" "${hdr[@]}" "http://127.0.0.1:$p_lb/" >"$work/wrk-$mode.txt"
  wait "$perfpid"
  # Thread ids and names of lb, then every recorded wake-up: the waker's
  # tid and the target's pid.
  for t in /proc/"$lbpid"/task/*; do echo "${t##*/} $(cat "$t/comm")"; done >"$work/tids-$mode"
  perf script -i "$work/$mode.data" -F tid,trace >"$work/wake-$mode.txt" 2>/dev/null
  kill -TERM "$lbpid"
  wait "${pid[lb]}" || true
  unset "pid[lb]"
  rows+=("$(python3 - "$mode" "$work/tids-$mode" "$work/wake-$mode.txt" "$work/wrk-$mode.txt" <<'PY'
import collections, re, sys
mode, tids_file, wake_file, wrk_file = sys.argv[1:]
names = {}
for line in open(tids_file):
    tid, name = line.split(maxsplit=1)
    names[int(tid)] = name.strip()
cross = collections.Counter()
total = 0
for line in open(wake_file):
    m = re.match(r"\s*(\d+)\s+.*?\bpid=(\d+)", line)
    if not m:
        continue
    waker, target = int(m.group(1)), int(m.group(2))
    total += 1
    if target in names and target != waker:
        cross[(names.get(waker, "?"), names[target])] += 1
wrk = open(wrk_file).read()
reqs = int(re.search(r"(\d+) requests in", wrk).group(1))
n = sum(cross.values())
pairs = ", ".join(f"{a}→{b} {c}" for (a, b), c in cross.most_common()) or "none"
print(f"{mode}|{reqs}|{n}|{1000 * n / max(reqs, 1):.2f}|{total}|{pairs}")
PY
)")
done

mkdir -p target
{
  echo "**$(date -u '+%Y-%m-%d %H:%M UTC')** · \`$(env | grep '^BENCH_' | sort | tr '\n' ' ' || true)${MAKELEVEL:+make bench-wakeups → }scripts/bench-wakeups.sh\` · lb $(git describe --always --dirty 2>/dev/null || echo '?') · $(nproc) CPUs · threads = $threads"
  echo
  echo "Wake-ups lb's threads perform on one another (perf sched:sched_wakeup), wrk -t2 -c64 -d${secs}s:"
  echo
  echo "| load | requests | cross-thread wake-ups | per 1,000 requests | all wake-ups by lb threads | between (waker→target) |"
  echo "|---|---:|---:|---:|---:|---|"
  for r in "${rows[@]}"; do
    IFS='|' read -r mode reqs n per total pairs <<<"$r"
    label="keep-alive GET"
    [ "$mode" = keepalive ] || label="new connection per request"
    echo "| $label | $reqs | $n | $per | $total | $pairs |"
  done
} | tee target/bench-wakeups.md

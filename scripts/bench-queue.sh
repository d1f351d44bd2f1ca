#!/usr/bin/env bash
# `make bench-queue`: the seeds' capacity experiment (issue 10). One app that
# answers 503 beyond 50 concurrent requests (`--max-concurrency 50`), each
# request taking BENCH_DELAY_MS (default 20 ms, an I/O-bound handler), behind
# lb; wrk keeps 100 connections busy for 30 s, first with no max_in_flight
# (the app's 503s reach the clients), then with max_in_flight = 50 and the
# default [queue] (the excess waits in lb); a middle run without
# max_in_flight also turns the circuit breaker off. Prints each run's error rate,
# req/s (all answers and 2xx only) and p50/p95/p99 (the seeds' targets:
# p95 < 200 ms, p99 < 500 ms). Closed loop: a client that gets a fast 503
# sends its next request at once, so failures inflate the request count.
# Loopback only; bounded in time (about three times BENCH_DURATION).
# Knobs: BENCH_BIN (default target/release), BENCH_DURATION (30s),
# BENCH_CONNECTIONS (100), BENCH_DELAY_MS (20), BENCH_LIMIT (50),
# BENCH_PORT (4280: lb; +1 admin, +2 app).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BENCH_BIN:-target/release}
duration=${BENCH_DURATION:-30s}
conns=${BENCH_CONNECTIONS:-100}
delay=${BENCH_DELAY_MS:-20}
limit=${BENCH_LIMIT:-50}
port=${BENCH_PORT:-4280}
command -v wrk >/dev/null || { echo "bench-queue needs wrk (apt-get install wrk)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

app_port=$((port + 2))
"$bin/app" --id app-1 --listen "127.0.0.1:$app_port" --delay-ms "$delay" \
  --max-concurrency "$limit" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$bin/app" healthcheck "http://127.0.0.1:$app_port/health" 2>/dev/null && break; sleep 0.05; done

run() { # label max_in_flight [extra toml]
  cat > "$work/lb.toml" <<TOML
${3:-}
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$((port + 1))"
[log]
access = false
[[backends]]
name = "app-1"
addr = "127.0.0.1:$app_port"
max_in_flight = $2
TOML
  RUST_LOG=warn "$bin/lb" -c "$work/lb.toml" 2>"$work/lb.log" &
  local lb=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  wrk -t2 -c"$conns" -d"$duration" -s scripts/bench/queue.lua \
    "http://127.0.0.1:$port/api/whoami" > "$work/wrk.out"
  local queue
  queue=$(curl -s "http://127.0.0.1:$((port + 1))/metrics" \
    | awk '/^lb_queue_wait_seconds_count/ {c=$2} /^lb_queue_rejected_total/ {r+=$2}
           /^lb_no_backend_total/ {n=$2} /^lb_requests_total.*code="5xx"/ {u=$2}
           END {printf "queued %d, queue 503s %d, app 5xx %d, lb 503s with circuit open %d", c, r, u, n}')
  kill "$lb"; wait "$lb" 2>/dev/null || true
  printf '%-34s %s   (%s)\n' "$1" "$(sed -n 's/^RESULT //p' "$work/wrk.out")" "$queue"
}
echo "wrk -t2 -c$conns -d$duration GET /api/whoami; one app: ${delay} ms per request, 503 beyond $limit concurrent"
run "lb, no max_in_flight" 0
# The app's 503s count as failures, so above the breaker opens within
# milliseconds and lb sheds nearly everything itself. Its highest threshold
# (1,000 consecutive failures) does not keep it closed either: a closed loop
# of fast 503s makes 1,000 of them in a few milliseconds with a release lb.
run "lb, no max_in_flight, breaker at 1000" 0 $'[circuit_breaker]\nfailures = 1000'
run "lb, max_in_flight = $limit + queue" "$limit"

#!/usr/bin/env bash
# `make run-pool`: lb with examples/pool.toml, which starts three `app`
# processes itself (no apps started by this script), then a short tour: a
# member killed with -9 and replaced, a member leaking memory recycled, a burst
# of requests growing the pool. Ctrl-C stops lb, and lb stops its members.
set -euo pipefail
bin=${1:-target/release}
cd "$(dirname "$0")/.."
for b in app lb; do
  [ -x "$bin/$b" ] || { echo "missing $bin/$b: run 'cargo build --release --workspace --bins'" >&2; exit 1; }
done
export PATH="$PWD/$bin:$PATH"
export LB_ADMIN_TOKEN=${LB_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
  echo "port 8080 is already in use; stop whatever runs there first" >&2; exit 1
fi

log=$(mktemp)
lb_pid=
cleanup() {
  trap - EXIT INT TERM
  [ -n "$lb_pid" ] && kill -TERM "$lb_pid" 2>/dev/null && wait "$lb_pid" 2>/dev/null || true
  rm -f "$log"
  echo "stopped (lb stopped its members)."
}
trap cleanup EXIT INT TERM

# Members inherit lb's stdout; their start lines would clutter the tour.
RUST_LOG=${RUST_LOG:-info,access=off} lb -c examples/pool.toml >/dev/null 2>"$log" &
lb_pid=$!
# lb opens its port once the members answer their health checks.
for _ in $(seq 1 200); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
  kill -0 "$lb_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done

# One line per member: name, address, state, memory.
members() {
  lb admin pool status | tr '{' '\n' |
    sed -n 's/.*"name":"\([^"]*\)","addr":"\([^"]*\)","state":"\([^"]*\)","age_s":\([0-9]*\),"memory_bytes":\([0-9a-z]*\).*/    \1  \2  \3  age \4 s  rss \5 B/p'
}
events() { { grep -E "pool: (member (ready|draining|stopped)|recycling|scaled|member exited|member unhealthy)" "$log" | sed 's/^[^ ]* *INFO [^ ]* //; s/^[^ ]* *WARN [^ ]* //' || true; } | tail -n "$1"; }
step() { printf '\n\033[1m%s\033[0m\n' "$*"; }

step "1. lb started three members itself:"
members

step "2. kill -9 one member (app-2); lb notices within 100 ms and starts app-4:"
pid=$( (grep -l -a "LB_POOL_MEMBER=app-2" /proc/[0-9]*/environ 2>/dev/null || true) | head -1 | cut -d/ -f3)
[ -n "$pid" ] && kill -9 "$pid"
sleep 1.5
members

step "3. app-1 leaks 96 MiB (PUT /fault); above max_memory = 64MiB it is recycled, its replacement ready first:"
addr=$(members | awk '$1 == "app-1" {print $2}')
lb admin --url "http://$addr" PUT /fault '{"leak_mb": 96}' >/dev/null
sleep 4
members
events 4

step "4. a burst of 40 clients: every member at max_in_flight, requests queue, the pool grows:"
# Plain bash HTTP/1.1 requests (no curl needed), 40 loops for ~5 s.
get() {
  exec 3<>/dev/tcp/127.0.0.1/8080 || return 0
  printf 'GET /api/whoami HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n' >&3
  while read -r -t 3 -u 3 _; do :; done
  exec 3<&-
}
burst=()
for _ in $(seq 40); do
  (trap - EXIT INT TERM; end=$((SECONDS + 5)); while [ $SECONDS -lt $end ]; do get; done) &
  burst+=($!)
done
sleep 4
members
wait "${burst[@]}" || true
events 3
echo "    (idle members above min_size leave after idle_timeout = 20 s)"

cat <<MSG

  lb is running:   http://127.0.0.1:8080        admin: http://127.0.0.1:9901 (status page: /)
  token:           $LB_ADMIN_TOKEN
  try:
    lb admin pool status
    lb admin pool size 5
    lb admin pool rollout --command app --id 'v2-{name}' --listen '127.0.0.1:{port}'
      (a command rollout answers 403 unless examples/pool.toml sets
       allow_rollout_command = true under [pool]; then: lb admin POST /admin/reload)

  Ctrl-C stops lb and its members.
MSG
wait "$lb_pid"

#!/usr/bin/env bash
# `make run`: four demo apps on 127.0.0.1:3001-3004 (app-4 in --mode low, so
# algorithms visibly differ) and lb on 127.0.0.1:8080 with examples/local.toml.
# Ctrl-C (or SIGTERM) stops everything; no process is left behind.
set -euo pipefail
bin=${1:-target/release}
cd "$(dirname "$0")/.."

for b in app lb; do
  [ -x "$bin/$b" ] || { echo "missing $bin/$b: run 'cargo build --release --workspace --bins'" >&2; exit 1; }
done

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
}
trap cleanup EXIT INT TERM

for i in 1 2 3 4; do
  port=$((3000 + i))
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; stop whatever runs there first" >&2
    exit 1
  fi
  mode=normal; [ "$i" = 4 ] && mode=low
  "$bin/app" --id "app-$i" --listen "127.0.0.1:$port" --mode "$mode" 2>/dev/null &
  pids+=($!)
done
for i in 1 2 3 4; do
  for _ in $(seq 1 100); do
    "$bin/app" healthcheck "http://127.0.0.1:$((3000 + i))/health" 2>/dev/null && break
    sleep 0.05
  done
done

export LB_ADMIN_TOKEN=${LB_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
RUST_LOG=${RUST_LOG:-info,access=off} "$bin/lb" -c examples/local.toml &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
  sleep 0.05
done

cat <<MSG

  lb is running:   http://127.0.0.1:8080   (4 apps on 127.0.0.1:3001-3004; app-4 is slow)
  admin:           http://127.0.0.1:9901   token: $LB_ADMIN_TOKEN

  try:
    for i in \$(seq 8); do curl -s -o /dev/null -w '%header{x-backend}\n' http://127.0.0.1:8080/api/whoami; done
    curl -si http://127.0.0.1:8080/api/whoami
    curl -s -X POST -H 'X-Session-Id: alice' http://127.0.0.1:8080/api/session

  Ctrl-C stops everything.
MSG
# Run until Ctrl-C, or until any of the processes dies.
while kill -0 "${pids[@]}" 2>/dev/null; do sleep 0.5; done
echo "a process exited; stopping the rest" >&2

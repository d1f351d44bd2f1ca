#!/usr/bin/env bash
# `make run`: four demo apps on 127.0.0.1:3001-3004 (app-4 in --mode low, so
# algorithms visibly differ) and lb on 127.0.0.1:8080 with examples/local.toml,
# plus HTTPS and HTTP/2 on 127.0.0.1:8443: a local CA and a certificate for
# localhost in target/run (scripts/dev-certs.sh, openssl; reused while valid),
# and target/run/lb.toml = examples/local.toml + h2c + that [tls] block.
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

for port in 3001 3002 3003 3004 8080 8443; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; stop whatever runs there first" >&2
    exit 1
  fi
done

# HTTPS: a config with [tls] next to the certificates, or plain HTTP only
# when no certificate can be made.
run=target/run
config=examples/local.toml
tls=""
if certs=$(scripts/dev-certs.sh "$run" localhost 127.0.0.1 ::1 2>&1); then
  echo "$certs"
  abs=$(cd "$run" && pwd)
  awk 'NR == 1 { print "# Written by scripts/run-local.sh from examples/local.toml (edits are overwritten)." }
       { print } /^\[server\]$/ { print "h2c = true                  # HTTP/2 with prior knowledge on 8080 too" }' \
    examples/local.toml >"$run/lb.toml"
  cat >>"$run/lb.toml" <<TOML

# Added by scripts/run-local.sh: HTTPS and HTTP/2 with a local CA's certificate.
[tls]
listen = "127.0.0.1:8443"
certificates = [{ cert = "$abs/cert.pem", key = "$abs/key.pem" }]
alpn = ["h2", "http/1.1"]
TOML
  config=$run/lb.toml
  tls=1
else
  echo "$certs" >&2
  echo "no HTTPS this time: lb serves plain HTTP on 8080 only" >&2
fi

for i in 1 2 3 4; do
  port=$((3000 + i))
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
RUST_LOG=${RUST_LOG:-info,access=off} "$bin/lb" -c "$config" &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
  sleep 0.05
done

https_line=""
https_try=""
if [ -n "$tls" ]; then
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/8443) 2>/dev/null && break
    sleep 0.05
  done
  https_line="
  HTTPS + HTTP/2:  https://localhost:8443  (certificate from the local CA $run/ca.pem)"
  https_try="
    curl --cacert $run/ca.pem --http2 https://localhost:8443/api/echo
    curl -s --cacert $run/ca.pem -o /dev/null -w '%{http_version} %header{x-backend}\\n' https://localhost:8443/api/whoami
    curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %header{x-backend}\\n' http://127.0.0.1:8080/api/whoami"
fi

cat <<MSG

  lb is running:   http://127.0.0.1:8080   (4 apps on 127.0.0.1:3001-3004; app-4 is slow)$https_line
  admin:           http://127.0.0.1:9901   token: $LB_ADMIN_TOKEN

  try:
    for i in \$(seq 8); do curl -s -o /dev/null -w '%header{x-backend}\n' http://127.0.0.1:8080/api/whoami; done
    curl -si http://127.0.0.1:8080/api/whoami
    curl -s -X POST -H 'X-Session-Id: alice' http://127.0.0.1:8080/api/session$https_try

  Ctrl-C stops everything.
MSG
# Run until Ctrl-C, or until any of the processes dies.
while kill -0 "${pids[@]}" 2>/dev/null; do sleep 0.5; done
echo "a process exited; stopping the rest" >&2

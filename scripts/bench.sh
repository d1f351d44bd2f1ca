#!/usr/bin/env bash
# `make bench`: lb against nginx, one worker thread each, in front of the same
# four demo apps on loopback, driven by wrk. Prints requests/s, latency
# percentiles and lb's resident memory. Loopback only; bounded in time.
# BENCH_DURATION (default 10s) and BENCH_CONNECTIONS (default 32) tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
duration=${BENCH_DURATION:-10s}
conns=${BENCH_CONNECTIONS:-32}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install wrk nginx)" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for i in 1 2 3 4; do
  "$bin/app" --id "app-$i" --listen "127.0.0.1:$((4100 + i))" >/dev/null 2>&1 &
  pids+=($!)
done
for i in 1 2 3 4; do
  for _ in $(seq 100); do "$bin/app" healthcheck "http://127.0.0.1:$((4100 + i))/health" 2>/dev/null && break; sleep 0.05; done
done

cat > "$work/lb.toml" <<TOML
[server]
listen = "127.0.0.1:4180"
threads = 1
[admin]
listen = "127.0.0.1:4190"
[log]
access = false
$(for i in 1 2 3 4; do printf '[[backends]]\nname = "app-%s"\naddr = "127.0.0.1:%s"\n' "$i" "$((4100 + i))"; done)
TOML
RUST_LOG=warn "$bin/lb" -c "$work/lb.toml" 2>"$work/lb.log" &
lbpid=$!
pids+=($lbpid)

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  upstream apps {
    server 127.0.0.1:4101; server 127.0.0.1:4102; server 127.0.0.1:4103; server 127.0.0.1:4104;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:4181;
    location / {
      proxy_pass http://apps;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"

for port in 4180 4181; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done

run() { # name url
  wrk -t1 -c"$conns" -d"$duration" --latency "$2" > "$work/wrk.out"
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk.out" | tr '\n' ' ')
  printf '%-22s %10s req/s   p50 %8s   p99 %8s   %s\n' "$1" "$rps" "$p50" "$p99" "$errs"
}
echo "wrk -t1 -c$conns -d$duration, GET /api/whoami, 4 apps, one proxy worker thread each"
run "app-1 direct" "http://127.0.0.1:4101/api/whoami"
run "nginx (1 worker)" "http://127.0.0.1:4181/api/whoami"
run "lb (1 thread)" "http://127.0.0.1:4180/api/whoami"
echo "lb resident memory after the run: $(( $(ps -o rss= -p "$lbpid") / 1024 )) MiB"

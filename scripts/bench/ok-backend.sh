# Sourced by scripts/bench-instructions.sh and scripts/bench-wakeups.sh: a
# work directory removed on exit (BENCH_KEEP=1 keeps it) after every process
# group started into `pid` is stopped, and one nginx answering `200 ok`.

declare -A pid=()

# bench_work NAME: a fresh $work for the script NAME, cleaned up on exit.
bench_work() {
  bench_name=$1
  work=$(mktemp -d "${TMPDIR:-/tmp}/$bench_name.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  for k in "${!pid[@]}"; do kill -TERM -- "-${pid[$k]}" 2>/dev/null || true; done
  sleep 0.3
  for k in "${!pid[@]}"; do kill -KILL -- "-${pid[$k]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${BENCH_KEEP:-0}" = 1 ] && echo "$bench_name: kept $work" >&2 || rm -rf "$work"
}

# ok_backend PORT: nginx (one worker, not counted by the benchmarks) on
# 127.0.0.1:PORT answering every request `200 ok`, ready when this returns.
ok_backend() {
  local port=$1
  mkdir -p "$work/be"
  cat >"$work/be/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/be/nginx.pid;
error_log $work/be/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/be/cb; proxy_temp_path $work/be/px;
  fastcgi_temp_path $work/be/fc; uwsgi_temp_path $work/be/uw; scgi_temp_path $work/be/sc;
  server { listen 127.0.0.1:$port; return 200 "ok"; }
}
NGINX
  setsid nginx -p "$work/be" -e "$work/be/error.log" -c "$work/be/nginx.conf" \
    >"$work/be.log" 2>&1 </dev/null &
  pid[be]=$!
  python3 "$helper" wait "$port" 20 "${pid[be]}"
}

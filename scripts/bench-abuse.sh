#!/usr/bin/env bash
# `make bench-abuse`: lb, nginx and HAProxy side by side under abuse (SPEC: the
# abuse benchmark). Normal clients (wrk) keep a small GET going while an attack
# runs, and we look at what the attack does to them: their p50/p99 against their
# p99 without the attack, their error rate and req/s, and the balancer's RSS and
# CPU. Prints a markdown table and writes it to target/bench-abuse.md with the
# date, the machine and the command.
#
# Layout (like scripts/bench-peers.sh; needs >= 2 CPUs to pin):
#   CPU A (first allowed CPU): the balancers, one worker/thread each, all
#                              started at once on ephemeral loopback ports.
#   CPU B (second):            the backends (one nginx, 1 worker: `return 200
#                              "ok"` on 4 ports, and a static file of
#                              BENCH_BIG_MIB MiB at /big; target/release/app for
#                              scenario C), wrk -t1 and the attackers.
# Configured alike: header/body/send timeouts 10 s on all three (lb
# header_timeout, body_timeout, send_timeout; nginx client_header_timeout,
# client_body_timeout, send_timeout; HAProxy timeout http-request and timeout
# client), upstream keep-alive, no access log, room for >= 10,000 connections
# (nginx worker_connections 10240, HAProxy maxconn, lb max_connections 10000 or
# what the open-file limit allows).
# nginx's proxy_max_temp_file_size is 0: with its default (1 GiB) each slow
# reader would spool its 16 MiB to a temp file — 3.2 GB written per run on a
# shared box; BENCH_NGINX_SPOOL=1 keeps nginx's default.
#
# Scenarios, each run for every balancer in turn (interleaved), BENCH_ROUNDS
# rounds, medians:
#   baseline   wrk -t1 -c32 -d$BENCH_DURATION --latency GET / (the normal load)
#   A          the same, and 1 s into it scripts/bench/abuse.py starts keeping
#              2,000 slowloris connections open (asyncio, standard library: an
#              unfinished head, one more header line every 5 s; a connection
#              the balancer closes is opened again at once, as a real slowloris
#              does; opened at 1,000/s like `slowhttptest -H -c 2000 -r 1000 -i
#              5`). Reported: how many it opened, how many the balancer closed
#              and at what age (its header timeout), how many were open > 12 s
#              at the end.
#   B          the same, and 1 s into it 200 slow readers each GET /big
#              (BENCH_BIG_MIB MiB) with a 4 KiB receive window and read 1 byte
#              per second. Reported: when the balancer had cut half of them and
#              how many it still held at the end (server-side ESTABLISHED
#              sockets on its port, /proc/net/tcp: the client never sees that
#              close, it waits behind the unread body).
#   C baseline one app (`app --max-concurrency $cap --delay-ms 20`: ~50 req/s per
#              slot, 503 beyond $cap at once) behind each balancer, capped there
#              at $cap: lb max_in_flight = $cap + [queue] (timeout 1 s), HAProxy
#              `maxconn $cap` + `timeout queue 1s`, nginx `max_conns=$cap`
#              (nginx open source has no upstream `queue`: the excess gets 502
#              at once); and lb with [queue] size = 0 (503 at once, as nginx).
#              wrk -c$cap GET /api/whoami: the load at capacity.
#   C          the same with wrk -c$((10 * cap)): 10× what it can serve (closed
#              loop). Reported: the answers by status (scripts/bench/status.lua).
#              Latency is every answer's, errors included (wrk has no other).
# The attacks start 1 s into the normal load, so their onset (2,000 accepts;
# 200 send buffers filled) is measured, and with the default 15 s the wave of
# closes at the 10 s timeouts (and slowloris' reconnects) falls inside it too.
# Each runs until BENCH_HOLD s (slowloris, default 15) or BENCH_HOLD_READ s
# (slow readers, default 30: HAProxy cuts them after ~20 s) from its start,
# past the 10 s timeouts, before what is left is counted. RSS: peak VmRSS of
# the balancer's processes (nginx: master + worker) sampled every 0.25 s during
# the run; CPU %: its utime+stime over the wrk run ÷ wall time. lb's rows also
# say what lb counted meanwhile (/metrics deltas, summed over rounds: no
# backend, queue rejections, upstream errors by kind, retries, failed health
# checks, 1xx/3xx/5xx answers; not 4xx, where lb counts the requests wrk cuts
# when it stops, and lb's own 408/429 would show as wrk errors anyway).
#
# Knobs: BENCH_ROUNDS (2), BENCH_DURATION (15s), BENCH_QUICK=1 (one round of
# 5 s: a smoke run), BENCH_CONNECTIONS (32), BENCH_SLOWLORIS (2000),
# BENCH_SLOWREAD (200), BENCH_BIG_MIB (16), BENCH_CAP (10), BENCH_HOLD (15),
# BENCH_HOLD_READ (30), BENCH_BIN (target/release), BENCH_KEEP=1 (keep the
# work directory), BENCH_NICE (-10 as root), BENCH_NGINX_SPOOL (0).
# Tools: nginx, haproxy, wrk, python3, taskset; installed with apt-get when
# missing and run as root (Debian's services kept from starting), otherwise it
# says what to install. Loopback only; bounded in time (every run under
# `timeout`); every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${BENCH_BIN:-target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  rounds=${BENCH_ROUNDS:-1}
  duration=${BENCH_DURATION:-5s}
else
  rounds=${BENCH_ROUNDS:-2}
  duration=${BENCH_DURATION:-15s}
fi
secs=${duration%s}
case $secs in '' | *[!0-9]*)
  echo "BENCH_DURATION must be whole seconds (e.g. 10s), not '$duration'" >&2
  exit 2
  ;;
esac
duration=${secs}s
conns=${BENCH_CONNECTIONS:-32}
n_loris=${BENCH_SLOWLORIS:-2000}
n_read=${BENCH_SLOWREAD:-200}
big_mib=${BENCH_BIG_MIB:-16}
cap=${BENCH_CAP:-10}
over=$((cap * 10))
hold=${BENCH_HOLD:-15}
hold_read=${BENCH_HOLD_READ:-30}
peers=$root/scripts/bench/peers.py
helper=$root/scripts/bench/abuse.py

# --- tools --------------------------------------------------------------------
for f in "$bin/lb" "$bin/app"; do
  [ -x "$f" ] || { echo "bench-abuse needs $f (make build)" >&2; exit 1; }
done
missing=()
for t in nginx haproxy wrk; do command -v "$t" >/dev/null || missing+=("$t"); done
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench-abuse: installing ${missing[*]}" >&2
    # Debian's maintainer scripts would start system nginx/haproxy on :80; a
    # policy-rc.d that says 101 keeps them from starting any service.
    added_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      added_policy=1
    fi
    rc=0
    aptlog=$(mktemp)
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      -o Dpkg::Use-Pty=0 "${missing[@]}"; } >"$aptlog" 2>&1 || rc=$?
    [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { cat "$aptlog" >&2; echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
    rm -f "$aptlog"
  else
    echo "bench-abuse needs: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=65536
if [ "$nofile" -lt $((n_loris * 2 + 1000)) ]; then
  echo "bench-abuse: ulimit -n $nofile is too low for $n_loris slowloris connections" >&2
  exit 1
fi
maxconn=$(((nofile - 200) / 2 < 20000 ? (nofile - 200) / 2 : 20000))
# lb warns unless its open-file limit covers 2 x max_connections + 256
lb_maxconn=$(((nofile - 256) / 2 < 10000 ? (nofile - 256) / 2 : 10000))

if [ "$(id -u)" = 0 ]; then renice -n "${BENCH_NICE:--10}" -p $$ >/dev/null || true; fi

read -r -a cpus <<<"$(python3 "$peers" cpus)"
if [ ${#cpus[@]} -ge 2 ]; then
  bal_cpu=${cpus[0]} load_cpu=${cpus[1]}
  pin_bal=(taskset -c "$bal_cpu") pin_load=(taskset -c "$load_cpu")
  layout="balancers on CPU $bal_cpu; backends, wrk and attackers on CPU $load_cpu"
else
  pin_bal=() pin_load=()
  layout="only ${#cpus[@]} CPU: nothing pinned, everything shares it"
  echo "bench-abuse: $layout" >&2
fi

# --- processes ----------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-abuse.XXXXXX")
declare -A pid=()
fgpid=
ok=0
cleanup() {
  trap - EXIT INT TERM
  [ -n "$fgpid" ] && kill "$fgpid" 2>/dev/null || true
  for name in "${!pid[@]}"; do kill -TERM -- "-${pid[$name]}" 2>/dev/null || true; done
  sleep 0.3
  for name in "${!pid[@]}"; do kill -KILL -- "-${pid[$name]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$ok" = 1 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$work"
  else
    echo "bench-abuse: configs and logs kept in $work" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU-PIN... -- CMD...: own session (its process group is killed
# whole), output appended to $work/NAME.log.
start() {
  local name=$1
  shift
  local pin=()
  while [ "$1" != -- ]; do pin+=("$1"); shift; done
  shift
  setsid "${pin[@]}" "$@" >>"$work/$name.log" 2>&1 </dev/null &
  pid[$name]=$!
}
# Run a command in the background and wait for it, so a signal is handled at once.
fg() {
  "$@" &
  fgpid=$!
  local rc=0
  wait "$fgpid" || rc=$?
  fgpid=
  return "$rc"
}
ready() { # NAME PORT [PATH]: until GET answers 200 (peers.py wait asks for /)
  python3 "$peers" wait "$2" 20 "${pid[$1]}" || {
    echo "bench-abuse: $1 did not come up; its log:" >&2
    tail -20 "$work/$1.log" >&2
    exit 1
  }
}

cp "$bin/lb" "$work/lb" # a rebuild during the run must not swap the binaries
cp "$bin/app" "$work/app"
mkdir -p "$work/www"
head -c $((big_mib << 20)) /dev/zero >"$work/www/big"
# nginx's worker (www-data when started as root) reads the file: mktemp -d is 0700
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/big"

read -r -a port <<<"$(python3 "$peers" ports 15)"
be=("${port[@]:0:4}")
p_app=${port[4]}
p_nginx=${port[5]} p_haproxy=${port[6]} p_lb=${port[7]} a_lb=${port[8]}
p_nginxc=${port[9]} p_haproxyc=${port[10]} p_lbc=${port[11]} a_lbc=${port[12]}
p_lbq0c=${port[13]} a_lbq0c=${port[14]}

temp_paths() {
  local d=$1
  echo "client_body_temp_path $d/cb; proxy_temp_path $d/px; fastcgi_temp_path $d/fc;"
  echo "uwsgi_temp_path $d/uw; scgi_temp_path $d/sc;"
}
nginx_conf() { # DIR BODY...
  local d=$1
  shift
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile $nofile;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 10240; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  $(temp_paths "$d")
  $*
}
NGINX
}

# Backends: one nginx, one worker, four ports: "ok" and the large file.
servers=""
for p in "${be[@]}"; do
  servers+="server { listen 127.0.0.1:$p; root $work/www; location / { return 200 \"ok\"; }
    location = /big { default_type application/octet-stream; } } "
done
nginx_conf "$work/backends" "sendfile on; $servers"
start backends "${pin_load[@]}" -- nginx -p "$work/backends" -e "$work/backends/error.log" \
  -c "$work/backends/nginx.conf"
start app "${pin_load[@]}" -- env RUST_LOG=warn "$work/app" --id app-1 \
  --listen "127.0.0.1:$p_app" --delay-ms 20 --max-concurrency "$cap"

# The balancers: the same 10 s timeouts everywhere.
spool="proxy_max_temp_file_size 0;"
[ "${BENCH_NGINX_SPOOL:-0}" = 1 ] && spool=""
proxy_nginx() { # NAME PORT UPSTREAM-SERVERS
  nginx_conf "$work/$1" "
  client_header_timeout 10s;
  client_body_timeout 10s;
  send_timeout 10s;
  $spool
  upstream apps { $3 keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://apps;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }"
}
ups=""
for p in "${be[@]}"; do ups+="server 127.0.0.1:$p; "; done
proxy_nginx nginx "$p_nginx" "$ups"
proxy_nginx nginx-cap "$p_nginxc" "server 127.0.0.1:$p_app max_conns=$cap;"

haproxy_cfg() { # FILE PORT SERVER-LINES
  cat >"$1" <<HAPROXY
global
  nbthread 1
  maxconn $maxconn
defaults
  mode http
  maxconn $maxconn
  option forwardfor
  http-reuse always
  timeout connect 1s
  timeout http-request 10s
  timeout client 10s
  timeout server 30s
  timeout queue 1s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$2
  default_backend apps
backend apps
  balance roundrobin
$3
HAPROXY
}
srv=""
i=0
for p in "${be[@]}"; do i=$((i + 1)); srv+="  server app-$i 127.0.0.1:$p"$'\n'; done
haproxy_cfg "$work/haproxy.cfg" "$p_haproxy" "$srv"
haproxy_cfg "$work/haproxy-cap.cfg" "$p_haproxyc" "  server app-1 127.0.0.1:$p_app maxconn $cap"

lb_conf() { # FILE PORT ADMIN BACKENDS [extra TOML]
  cat >"$1" <<TOML
[server]
listen = "127.0.0.1:$2"
threads = 1
header_timeout = "10s"
body_timeout = "10s"
send_timeout = "10s"
max_connections = $lb_maxconn

[admin]
listen = "127.0.0.1:$3"

[log]
access = false

${5:-}
$4
TOML
}
lbb=""
i=0
for p in "${be[@]}"; do
  i=$((i + 1))
  lbb+=$'[[backends]]\nname = "app-'$i$'"\naddr = "127.0.0.1:'$p$'"\n\n'
done
lb_conf "$work/lb.toml" "$p_lb" "$a_lb" "$lbb"
lb_conf "$work/lb-cap.toml" "$p_lbc" "$a_lbc" \
  $'[[backends]]\nname = "app-1"\naddr = "127.0.0.1:'$p_app$'"\nmax_in_flight = '$cap \
  $'[queue]\nsize = 1024\ntimeout = "1s"\n'
lb_conf "$work/lb-q0-cap.toml" "$p_lbq0c" "$a_lbq0c" \
  $'[[backends]]\nname = "app-1"\naddr = "127.0.0.1:'$p_app$'"\nmax_in_flight = '$cap \
  $'[queue]\nsize = 0\n'
for c in lb lb-cap lb-q0-cap; do "$work/lb" check -c "$work/$c.toml" >/dev/null; done

start nginx "${pin_bal[@]}" -- nginx -p "$work/nginx" -e "$work/nginx/error.log" \
  -c "$work/nginx/nginx.conf"
start haproxy "${pin_bal[@]}" -- haproxy -db -f "$work/haproxy.cfg"
start lb "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb" -c "$work/lb.toml"
start nginx-cap "${pin_bal[@]}" -- nginx -p "$work/nginx-cap" -e "$work/nginx-cap/error.log" \
  -c "$work/nginx-cap/nginx.conf"
start haproxy-cap "${pin_bal[@]}" -- haproxy -db -f "$work/haproxy-cap.cfg"
start lb-cap "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb" -c "$work/lb-cap.toml"
start lb-q0-cap "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb" -c "$work/lb-q0-cap.toml"

for p in "${be[@]}"; do ready backends "$p"; done
balancers=(nginx haproxy lb)
declare -A port_of=([nginx]=$p_nginx [haproxy]=$p_haproxy [lb]=$p_lb
  [nginx-cap]=$p_nginxc [haproxy-cap]=$p_haproxyc [lb-cap]=$p_lbc [lb-q0-cap]=$p_lbq0c)
declare -A admin_of=([lb]=$a_lb [lb-cap]=$a_lbc [lb-q0-cap]=$a_lbq0c)
# scenario C also runs lb with no queue ([queue] size = 0: 503 at once when
# the backend is at max_in_flight, what nginx does without `queue`)
capped=(nginx haproxy lb lb-q0)
for b in "${balancers[@]}"; do ready "$b" "${port_of[$b]}"; done
# the capped ones answer GET / with the app's 404: wait for the port only
for b in "${capped[@]}"; do
  b=$b-cap
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${port_of[$b]}") 2>/dev/null && break
    sleep 0.1
  done
done
python3 - "$p_app" <<'PY' || { echo "bench-abuse: app did not come up" >&2; exit 1; }
import socket, sys, time
for _ in range(100):
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
sleep 2 # lb's health checks mark the app up (rise = 2 probes, 1 s apart)

raw=$work/raw.tsv
: >"$raw"
bound=$((secs + (hold > hold_read ? hold : hold_read) + 90))
progress() { printf 'bench-abuse: %s\n' "$*" >&2; }
# measure SECTION BALANCER ROUND PROCESS [abuse.py measure options] -- CMD...
measure() {
  local sec=$1 name=$2 round=$3 proc=$4
  shift 4
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  [ -z "${admin_of[$proc]:-}" ] || opts+=(--metrics "http://127.0.0.1:${admin_of[$proc]}/metrics")
  fg "${pin_load[@]}" timeout "$bound" python3 "$helper" measure "${pid[$proc]}" \
    "${port_of[$proc]}" "$work/$sec-$name-$round.out" "${opts[@]}" -- \
    timeout $((secs + 30)) "$@" >"$work/line" || {
    echo "bench-abuse: $sec run of $name failed:" >&2
    cat "$work/$sec-$name-$round.out" >&2
    exit 1
  }
  printf '%s\t%s\t%s\t%s\n' "$sec" "$name" "$round" "$(cat "$work/line")" >>"$raw"
  sleep 1
}
url() { echo "http://127.0.0.1:${port_of[$1]}$2"; }
normal=(wrk -t1 -c"$conns" -d"$duration" --latency)

progress "$layout; $rounds round(s) of $duration; wrk -c$conns; attacks: $n_loris slowloris, $n_read slow readers of $big_mib MiB; C: cap $cap, wrk -c$cap and -c$over"
# Warm-up. A second's pause after each run, as after every measured one: the
# requests wrk cuts when it stops may keep the capped app's slots busy for a
# moment (HAProxy lets them finish), and lb's first requests then get the app's
# 503s — five in a row open lb's circuit breaker, and with one backend lb
# answers 503 itself until the breaker has closed again.
for b in "${balancers[@]}"; do
  fg "${pin_load[@]}" timeout 30 wrk -t1 -c"$conns" -d2s "$(url "$b" /)" >/dev/null
  sleep 1
done
for b in "${capped[@]}"; do
  fg "${pin_load[@]}" timeout 30 wrk -t1 -c"$cap" -d2s "$(url "$b-cap" /api/whoami)" >/dev/null
  sleep 1
done
for r in $(seq "$rounds"); do
  for b in "${balancers[@]}"; do
    progress "round $r: baseline, $b"
    measure base "$b" "$r" "$b" -- "${normal[@]}" "$(url "$b" /)"
  done
  for b in "${balancers[@]}"; do
    progress "round $r: A $n_loris slowloris, $b"
    measure slowloris "$b" "$r" "$b" --attack slowloris "$n_loris" 5 --hold "$hold" \
      --conns "$conns" -- "${normal[@]}" "$(url "$b" /)"
  done
  for b in "${balancers[@]}"; do
    progress "round $r: B $n_read slow readers, $b"
    measure slowread "$b" "$r" "$b" --attack slowread "$n_read" /big --hold "$hold_read" \
      --conns "$conns" -- "${normal[@]}" "$(url "$b" /)"
  done
  for b in "${capped[@]}"; do
    progress "round $r: C baseline (capped app, wrk -c$cap), $b"
    measure capbase "$b" "$r" "$b-cap" -- wrk -t1 -c"$cap" -d"$duration" --latency \
      -s scripts/bench/status.lua "$(url "$b-cap" /api/whoami)"
  done
  for b in "${capped[@]}"; do
    progress "round $r: C 10x overload (wrk -c$over), $b"
    measure overload "$b" "$r" "$b-cap" -- wrk -t1 -c"$over" -d"$duration" --latency \
      -s scripts/bench/status.lua "$(url "$b-cap" /api/whoami)"
  done
done

# --- report -------------------------------------------------------------------
lb_warn=""
for b in lb lb-cap lb-q0-cap; do
  n=$(grep -cE ' (WARN|ERROR) ' "$work/$b.log" || true)
  lb_warn+="$b $n, "
  if [ "$n" -gt 0 ]; then
    echo "bench-abuse: $b logged $n WARN/ERROR lines, e.g.:" >&2
    grep -E ' (WARN|ERROR) ' "$work/$b.log" | head -3 | cut -c1-300 >&2
  fi
done
settings=$(env | grep '^BENCH_' | sort | tr '\n' ' ' || true)
mkdir -p target
python3 "$helper" report "$raw" target/bench-abuse.md "$cap" "$over" \
  "**$(date -u '+%Y-%m-%d %H:%M UTC')** · \`${settings}${MAKELEVEL:+make bench-abuse → }scripts/bench-abuse.sh\` · lb binary of $(date -u -r "$bin/lb" '+%Y-%m-%d %H:%M UTC'), tree at $(git describe --always --dirty 2>/dev/null || echo '?') · $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r) · $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1 " " $2}')" \
  "" \
  "Normal load: wrk -t1 -c$conns -d$duration --latency, GET / answered \`200 ok\` by 4 backends (one nginx, 1 worker); $layout; one worker/thread each, 10 s header/body/send timeouts on all, upstream keep-alive, access log off$([ "${BENCH_NGINX_SPOOL:-0}" = 1 ] || echo ', nginx proxy_max_temp_file_size 0'); medians of $rounds interleaved round(s). Attacks start 1 s into the normal load. A: $n_loris slowloris connections (scripts/bench/abuse.py, reopened when closed). B: $n_read slow readers of a $big_mib MiB body (4 KiB window, 1 byte/s). C: one app, 20 ms a request, $cap slots, capped at $cap in each balancer (lb max_in_flight + queue 1 s, and with no queue; HAProxy maxconn + timeout queue 1s, nginx max_conns: no queue in nginx open source), wrk -c$cap then -c$over GET /api/whoami. Errors: non-2xx answers and socket errors ÷ all. RSS: peak VmRSS during the run; CPU: the balancer's utime+stime ÷ wall time of the wrk run. lb WARN/ERROR log lines: ${lb_warn%, }."
ok=1

#!/usr/bin/env bash
# `make bench-peers`: lb side by side with nginx and HAProxy (issue 8), each in
# front of the same four tiny backends, configured alike: one worker/thread,
# upstream keep-alive, no access log — plus "lb as shipped" (lb.toml defaults:
# access log on, health checks, metrics). Prints markdown tables and writes
# them to target/bench-peers.md with the date, the machine and the command.
#
# Layout (needs >= 2 CPUs to pin; with fewer nothing is pinned and it says so):
#   CPU A (first allowed CPU): the balancer under test, alone, one worker.
#   CPU B (second):            the backends — one extra nginx, 1 worker,
#                              `return 200 "ok"` on 4 loopback ports — and the
#                              load generator (wrk -t1).
# All balancers run at once on ephemeral loopback ports; rounds are interleaved
# (round 1: nginx, HAProxy, lb access log off, lb as shipped; round 2: ...) and
# every figure is the median over rounds. Only ratios from one run mean much:
# absolute figures on a shared VM drift between days.
#
# Per balancer:
#   req/s, p50, p99      wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_DURATION --latency
#                        (closed loop).
#   CPU µs/request       utime and stime deltas from /proc/PID/stat of the
#                        balancer's processes (nginx: master + workers) over the
#                        wrk run, divided by the requests wrk completed.
#   syscalls/request     `perf stat -e raw_syscalls:sys_enter -p PIDS` over a
#                        separate short wrk run (in-kernel counter, far cheaper
#                        than strace, which would change what it measures);
#                        n/a without perf (Debian: linux-perf). BENCH_SYSCALLS=0
#                        skips it.
#   RSS @10000 idle      VmRSS of the balancer's processes while a helper
#                        (scripts/bench/peers.py, asyncio) opens 10,000
#                        connections, sends one keep-alive GET on each, reads the
#                        answer and holds them open; KiB/conn = growth from
#                        5,000 to 10,000 open ÷ 5,000 (the marginal cost: the
#                        first thousand absorb one-off set-up and memory the
#                        allocator returns late after the closed-loop runs).
# Fixed rate: an open-loop run at 50 % of nginx's measured req/s, same rounds.
#   Debian 12 packages no open-loop HTTP generator (no wrk2, vegeta or oha; hey
#   -q and wrk's delay() are rate-limited closed loops that hide queueing —
#   coordinated omission; h2load's rate is connections per second), so the
#   script compiles scripts/bench/openloop.c with cc: requests are due on a
#   fixed schedule and each one's latency runs from when it was due, over a pool
#   of $BENCH_CONNECTIONS keep-alive connections (like wrk2).
# threads = 2: lb (access log off, and as shipped) against nginx
#   worker_processes 2, nothing pinned: balancer, backends and wrk -t2 share
#   both cores, so this row is the box's throughput, not a per-core figure.
#
# Issue 22's rows: nginx, HAProxy and lb as shipped, same pinning, same rounds
# (interleaved), BENCH_ROW_DURATION each; one table with lb's ratio to the
# better of nginx and HAProxy and the issue's target, met or not:
#   download   100 MiB bodies one after another on one keep-alive connection
#              (scripts/bench/bulk.c), a static file the backend nginx serves
#              with sendfile: MiB/s and the balancer's CPU seconds per GiB.
#   upload     the same with 100 MiB POST bodies (Content-Length) to a sink
#              (`bulk sink`, pinned with the backends) that reads the whole
#              body before answering; nginx and HAProxy route /upload there, lb
#              (no path routing) is a second lb as shipped with the sink as its
#              backend. nginx streams bodies (proxy_request_buffering off, 16 KiB
#              buffers, no temp files) as lb and HAProxy do.
#   churn      wrk -H 'Connection: close': a new client connection per request.
#   idle       (the RSS row above) BENCH_IDLE_CONNECTIONS, 10,000 by default;
#              every lb has max_connections and HAProxy maxconn above it.
#   latency    openloop at 1,000 req/s through each balancer and straight to a
#              backend in the same round: p50/p99 added, µs.
#   https      wrk over TLS 1.3, one ECDSA P-256 certificate made with openssl
#              for all three; no session resumption anywhere (lb
#              session_resumption = false, nginx tickets and cache off, HAProxy
#              no-tls-tickets and no cache), so each new connection is a full
#              handshake.
#   tls-new    the same with 'Connection: close': handshakes/s.
#   h2         h2load -t1 -c8 -m8 over TLS (ALPN h2).
#   and t2 gains HAProxy nbthread 2.
#
# Knobs: BENCH_ROWS (all: closed fixed syscalls idle t2 download upload churn
# latency https tls-new h2; space- or comma-separated), BENCH_ROUNDS (3),
# BENCH_DURATION (10s, seconds), BENCH_ROW_DURATION (5s, issue 22's rows),
# BENCH_CONNECTIONS (64), BENCH_IDLE_CONNECTIONS (10000), BENCH_SYSCALLS (1),
# BENCH_QUICK=1 (one round of 3 s: a smoke run), BENCH_BIN (target/release),
# BENCH_KEEP=1 (keep the work directory with configs and logs), BENCH_NICE
# (-10 as root: the processes it starts go ahead of other work on a shared
# box), BENCH_FIXED_RATE (the fixed-rate row's rate when `closed` is not run).
# A full run takes ~14 min on 2 cores.
# Tools: nginx, haproxy, wrk, h2load (nghttp2-client), openssl, cc, python3,
# taskset; installed with apt-get when
# missing and run as root, otherwise the script says what to install. Debian's
# nginx/haproxy services are kept from starting during the install; the
# script runs the binaries itself with its own configs in a temp directory.
# Loopback only; bounded in time; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${BENCH_BIN:-target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  rounds=${BENCH_ROUNDS:-1}
  duration=${BENCH_DURATION:-3s}
else
  rounds=${BENCH_ROUNDS:-3}
  duration=${BENCH_DURATION:-10s}
fi
secs=${duration%s}
case $secs in '' | *[!0-9]*)
  echo "BENCH_DURATION must be whole seconds (e.g. 10s), not '$duration'" >&2
  exit 2
  ;;
esac
duration=${secs}s
conns=${BENCH_CONNECTIONS:-64}
idle_conns=${BENCH_IDLE_CONNECTIONS:-10000}
# issue 22's rows run BENCH_ROW_DURATION each (default 5 s; 3 s with BENCH_QUICK)
if [ "${BENCH_QUICK:-0}" = 1 ]; then rsecs=${BENCH_ROW_DURATION:-3s}; else rsecs=${BENCH_ROW_DURATION:-5s}; fi
rsecs=${rsecs%s}
case $rsecs in '' | *[!0-9]*) echo "BENCH_ROW_DURATION must be whole seconds" >&2; exit 2 ;; esac
all_rows="closed fixed syscalls idle t2 download upload churn latency https tls-new h2"
rows_sel=" $(echo "${BENCH_ROWS:-$all_rows}" | tr ',' ' ') "
for w in $rows_sel; do
  case " $all_rows " in *" $w "*) ;; *)
    echo "BENCH_ROWS: unknown row '$w' (rows: $all_rows)" >&2
    exit 2
    ;;
  esac
done
want() { [[ $rows_sel == *" $1 "* ]]; }
big_bytes=$((100 * 1024 * 1024))
sys_secs=$((secs < 5 ? secs : 5))
helper=$root/scripts/bench/peers.py

# --- tools --------------------------------------------------------------------
for f in "$bin/lb"; do
  [ -x "$f" ] || { echo "bench-peers needs $f (make build)" >&2; exit 1; }
done
missing=()
for t in nginx haproxy wrk openssl; do command -v "$t" >/dev/null || missing+=("$t"); done
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v cc >/dev/null || missing+=(gcc)
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench-peers: installing ${missing[*]}" >&2
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
    echo "bench-peers needs: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
syscalls=${BENCH_SYSCALLS:-1}
if [ "$syscalls" = 1 ] && ! { command -v perf >/dev/null &&
  perf stat -x, -e raw_syscalls:sys_enter -o /dev/null -- true >/dev/null 2>&1; }; then
  echo "bench-peers: no usable perf (apt-get install linux-perf): syscalls/req will be n/a" >&2
  syscalls=0
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[ "$nofile" = unlimited ] && nofile=65536
# Each balancer holds the idle clients plus its upstream connections; the
# client (peers.py idle) is a process of its own.
if [ "$nofile" -lt $((idle_conns + 2000)) ]; then
  echo "bench-peers: ulimit -n $nofile is too low for $idle_conns idle connections" >&2
  exit 1
fi
# HAProxy's and lb's connection caps: above the idle row's count (lb's
# max_connections default is 10,000; lb warns, nothing more, when the open-file
# limit is below 2 x max_connections + 256).
maxconn=$((idle_conns + 1000))

# On a shared box, run everything this script starts ahead of other work
# (all rows alike): BENCH_NICE, default -10 as root.
if [ "$(id -u)" = 0 ]; then renice -n "${BENCH_NICE:--10}" -p $$ >/dev/null || true; fi

read -r -a cpus <<<"$(python3 "$helper" cpus)"
if [ ${#cpus[@]} -ge 2 ]; then
  bal_cpu=${cpus[0]} load_cpu=${cpus[1]}
  pin_bal=(taskset -c "$bal_cpu") pin_load=(taskset -c "$load_cpu")
  layout="balancer alone on CPU $bal_cpu; backends and load generator on CPU $load_cpu"
else
  pin_bal=() pin_load=()
  layout="only ${#cpus[@]} CPU: nothing pinned, everything shares it"
  echo "bench-peers: $layout" >&2
fi
all_cpus=$(IFS=,; echo "${cpus[*]}")

# --- processes ----------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-peers.XXXXXX")
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
    echo "bench-peers: configs and logs kept in $work" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU-PIN... -- CMD...: own session (so its process group is killed
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
stop() {
  kill -TERM -- "-${pid[$1]}" 2>/dev/null || true
  wait "${pid[$1]}" 2>/dev/null || true
  unset "pid[$1]"
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
ready() { # NAME PORT
  python3 "$helper" wait "$2" 20 "${pid[$1]}" || {
    echo "bench-peers: $1 did not come up; its log:" >&2
    tail -20 "$work/$1.log" >&2
    exit 1
  }
}

cc -O2 -o "$work/openloop" scripts/bench/openloop.c
cc -O2 -pthread -o "$work/bulk" scripts/bench/bulk.c
# TLS rows: one ECDSA P-256 certificate for localhost, served by all three.
mkdir -p "$work/tls" "$work/www"
chmod 755 "$work" "$work/www" # nginx's workers (user nobody) read big.bin
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
cat "$work/tls/cert.pem" "$work/tls/key.pem" >"$work/tls/haproxy.pem"
# Download rows: a 100 MiB file the backend nginx serves itself (sendfile).
if want download; then head -c "$big_bytes" /dev/zero >"$work/www/big.bin"; fi
cp "$bin/lb" "$work/lb" # a rebuild during the run must not swap the binary
# BENCH_LB_BASE=/path/to/other/lb: one more one-thread row (access log off)
# with that binary, for A/B of a change in the same interleaved run.
base=${BENCH_LB_BASE:-}
[ -z "$base" ] || cp "$base" "$work/lb-base"

read -r -a port <<<"$(python3 "$helper" ports 14)"
read -r t_nginx t_haproxy t_lbs p_haproxy2 p_sink p_lbul a_lbul <<<"$(python3 "$helper" ports 7)"
be=("${port[@]:0:4}")
p_nginx=${port[4]} p_haproxy=${port[5]}
p_lbn=${port[6]} a_lbn=${port[7]} p_lbs=${port[8]} a_lbs=${port[9]}
p_nginx2=${port[10]} p_lb2n=${port[11]} a_lb2n=${port[12]} p_lb2s=${port[13]}
a_lb2s=$(python3 "$helper" ports 1)

temp_paths() {
  local d=$1
  echo "client_body_temp_path $d/cb; proxy_temp_path $d/px; fastcgi_temp_path $d/fc;"
  echo "uwsgi_temp_path $d/uw; scgi_temp_path $d/sc;"
}
nginx_conf() { # DIR WORKERS BODY...
  local d=$1 w=$2
  shift 2
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<NGINX
worker_processes $w;
worker_rlimit_nofile $nofile;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  # nginx alone closes a client connection after 1000 requests by default;
  # lb and HAProxy have no such cap, so lift it to compare like with like.
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  $(temp_paths "$d")
  $*
}
NGINX
}

# Backends: one nginx, one worker, four ports. GET / is `200 ok`; /big.bin is
# a 100 MiB static file (sendfile). Uploads go to a sink of their own
# (scripts/bench/bulk.c: reads the whole body, then answers `200 ok`): nginx
# answers a body it discards before reading it, and a proxy then closes the
# client connection mid-upload.
servers="sendfile on; "
for p in "${be[@]}"; do
  servers+="server { listen 127.0.0.1:$p; location / { return 200 \"ok\"; }
    location = /big.bin { root $work/www; } } "
done
nginx_conf "$work/backends" 1 "$servers"
start backends "${pin_load[@]}" -- nginx -p "$work/backends" -e "$work/backends/error.log" \
  -c "$work/backends/nginx.conf"

# Bodies are streamed both ways as lb and HAProxy do (no request buffering, no
# temp files), with 16 KiB buffers like theirs and no body size limit. TLS:
# 1.3 only, no resumption (every new connection is a full handshake), HTTP/2
# offered by ALPN.
proxy_nginx() { # NAME WORKERS PORT [TLS-PORT]
  local ups="" tls=""
  for p in "${be[@]}"; do ups+="server 127.0.0.1:$p; "; done
  [ -z "${4:-}" ] || tls="listen 127.0.0.1:$4 ssl http2;
    ssl_certificate $work/tls/cert.pem; ssl_certificate_key $work/tls/key.pem;
    ssl_protocols TLSv1.3; ssl_session_tickets off; ssl_session_cache off;"
  nginx_conf "$work/$1" "$2" "
  upstream apps { $ups keepalive 128; keepalive_requests 1000000; }
  upstream sink { server 127.0.0.1:$p_sink; keepalive 16; }
  server {
    listen 127.0.0.1:$3;
    $tls
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP \$remote_addr;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_request_buffering off;
    proxy_buffer_size 16k;
    proxy_buffers 8 16k;
    proxy_max_temp_file_size 0;
    location / { proxy_pass http://apps; }
    location = /upload { proxy_pass http://sink; }
  }"
}
proxy_nginx nginx 1 "$p_nginx" "$t_nginx"
proxy_nginx nginx2 2 "$p_nginx2"

haproxy_conf() { # FILE THREADS PORT [TLS-PORT]
  {
    cat <<HAPROXY
global
  nbthread $2
  maxconn $maxconn
  # maxconn needs 2 x maxconn descriptors by HAProxy's reckoning, more than
  # the hard limit here; the idle row uses ~1 per client: run anyway
  no strict-limits
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
  tune.ssl.cachesize 0
defaults
  mode http
  maxconn $maxconn
  option forwardfor
  http-reuse always
  timeout connect 1s
  timeout client 60s
  timeout server 30s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$3
HAPROXY
    [ -z "${4:-}" ] || echo "  bind 127.0.0.1:$4 ssl crt $work/tls/haproxy.pem alpn h2,http/1.1"
    cat <<HAPROXY
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  use_backend sink if { path /upload }
  default_backend apps
backend sink
  server sink 127.0.0.1:$p_sink
backend apps
  balance roundrobin
HAPROXY
    i=0
    for p in "${be[@]}"; do i=$((i + 1)); echo "  server app-$i 127.0.0.1:$p"; done
  } >"$1"
}
haproxy_conf "$work/haproxy.cfg" 1 "$p_haproxy" "$t_haproxy"
haproxy_conf "$work/haproxy2.cfg" 2 "$p_haproxy2"

lb_conf() { # FILE THREADS PORT ADMIN [extra TOML [BACKEND PORTS]]: only keys without a default
  local bports=("${be[@]}")
  [ -z "${6:-}" ] || read -r -a bports <<<"$6"
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\nthreads = %s\nmax_connections = %s\n\n' \
      "$3" "$2" "$maxconn"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n\n' "$4"
    [ -n "${5:-}" ] && printf '%s\n\n' "$5"
    i=0
    for p in "${bports[@]}"; do
      i=$((i + 1))
      printf '[[backends]]\nname = "app-%s"\naddr = "127.0.0.1:%s"\n\n' "$i" "$p"
    done
  } >"$1"
}
lb_conf "$work/lb-nolog.toml" 1 "$p_lbn" "$a_lbn" $'[log]\naccess = false'
if [ -n "$base" ]; then
  read -r p_lbb a_lbb <<<"$(python3 "$helper" ports 2)"
  lb_conf "$work/lb-base.toml" 1 "$p_lbb" "$a_lbb" $'[log]\naccess = false'
fi
# lb as shipped also serves HTTPS (TLS 1.3 only and no resumption, as nginx
# and HAProxy are set up here; ALPN h2 first is lb's default).
lb_conf "$work/lb-shipped.toml" 1 "$p_lbs" "$a_lbs" "[tls]
listen = \"127.0.0.1:$t_lbs\"
certificates = [{ cert = \"$work/tls/cert.pem\", key = \"$work/tls/key.pem\" }]
min_version = \"1.3\"
session_resumption = false"
# lb has no path routing: uploads go to a second lb as shipped, the sink its
# one backend (nginx and HAProxy route /upload to the sink).
lb_conf "$work/lb-ul.toml" 1 "$p_lbul" "$a_lbul" "" "$p_sink"
lb_conf "$work/lb2-nolog.toml" 2 "$p_lb2n" "$a_lb2n" $'[log]\naccess = false'
lb_conf "$work/lb2-shipped.toml" 2 "$p_lb2s" "$a_lb2s"
for c in lb-nolog lb-shipped lb-ul lb2-nolog lb2-shipped; do
  "$work/lb" check -c "$work/$c.toml" >/dev/null
done

start_one_thread() {
  start nginx "${pin_bal[@]}" -- nginx -p "$work/nginx" -e "$work/nginx/error.log" \
    -c "$work/nginx/nginx.conf"
  start haproxy "${pin_bal[@]}" -- haproxy -db -f "$work/haproxy.cfg"
  start lb-nolog "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb" -c "$work/lb-nolog.toml"
  start lb-shipped "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb" -c "$work/lb-shipped.toml"
  [ -z "$base" ] || start lb-base "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb-base" -c "$work/lb-base.toml"
  if want upload; then
    start lb-ul "${pin_bal[@]}" -- env -u RUST_LOG "$work/lb" -c "$work/lb-ul.toml"
  fi
}
start sink "${pin_load[@]}" -- "$work/bulk" sink "$p_sink"
start_one_thread
for p in "${be[@]}"; do ready backends "$p"; done
ready sink "$p_sink"
declare -A port_of=([nginx]=$p_nginx [haproxy]=$p_haproxy [lb-nolog]=$p_lbn
  [lb-shipped]=$p_lbs [nginx2]=$p_nginx2 [haproxy2]=$p_haproxy2 [lb2-nolog]=$p_lb2n
  [lb2-shipped]=$p_lb2s [direct]=${be[0]} [lb-ul]=$p_lbul)
declare -A tls_of=([nginx]=$t_nginx [haproxy]=$t_haproxy [lb-shipped]=$t_lbs)
one=(nginx haproxy lb-nolog lb-shipped)
if [ -n "$base" ]; then one+=(lb-base); port_of[lb-base]=$p_lbb; fi
# issue 22's rows: lb as shipped against nginx and HAProxy
new=(nginx haproxy lb-shipped)
two=(nginx2 haproxy2 lb2-nolog lb2-shipped)
for b in "${one[@]}"; do ready "$b" "${port_of[$b]}"; done
if want upload; then ready lb-ul "$p_lbul"; fi

raw=$work/raw.tsv
: >"$raw"
bound=$((secs + 30))
rbound=$((rsecs + 30))
# measure SECTION NAME ROUND KIND [--perf] -- CMD...: one row of raw.tsv. The
# row "direct" (the client straight to a backend) counts the backend's CPU.
measure() {
  local sec=$1 name=$2 round=$3 kind=$4
  shift 4
  local mpid=${pid[${pidname:-$name}]:-${pid[backends]}}
  fg "${pin_load_now[@]}" python3 "$helper" measure "$kind" "$mpid" \
    "$work/$sec-$name-$round.out" "$@" >"$work/line" || {
    echo "bench-peers: $sec run of $name failed:" >&2
    cat "$work/$sec-$name-$round.out" >&2
    exit 1
  }
  printf '%s\t%s\t%s\t%s\n' "$sec" "$name" "$round" "$(cat "$work/line")" >>"$raw"
  # lb's warnings are kept; the shipped access log (~100 MB a run) is emptied
  # (the file is open with O_APPEND)
  if [[ $name == lb* ]]; then
    grep -E ' (WARN|ERROR) ' "$work/$name.log" >>"$work/$name.warn" || true
    : >"$work/$name.log"
  fi
}
wrk_url() { echo "http://127.0.0.1:${port_of[$1]}/"; }
# by name: the certificate's, and an IP address is no SNI (rustls logs a
# warning per handshake for one)
tls_url() { echo "https://localhost:${tls_of[$1]}/"; }
progress() { printf 'bench-peers: %s\n' "$*" >&2; }
pin_load_now=("${pin_load[@]}")

progress "$layout; $rounds round(s) of $duration (issue 22's rows: ${rsecs}s), wrk -c$conns; rows:$rows_sel"
for b in "${one[@]}"; do # warm-up
  fg "${pin_load[@]}" timeout 30 wrk -t1 -c"$conns" -d2s "$(wrk_url "$b")" >/dev/null
done
if want closed; then
  for r in $(seq "$rounds"); do
    for b in "${one[@]}"; do
      progress "closed loop, round $r: $b"
      measure closed "$b" "$r" wrk -- timeout "$bound" wrk -t1 -c"$conns" -d"$duration" \
        --latency "$(wrk_url "$b")"
    done
  done
fi

if want fixed; then
  if want closed; then
    rate=$(python3 -c "import sys; print(int(float(sys.argv[1]) * 0.5))" \
      "$(python3 "$helper" median "$raw" closed nginx rps)")
  else
    rate=${BENCH_FIXED_RATE:-20000}
  fi
  for r in $(seq "$rounds"); do
    for b in "${one[@]}"; do
      progress "fixed rate $rate req/s, round $r: $b"
      measure fixed "$b" "$r" openloop -- timeout "$bound" "$work/openloop" 127.0.0.1 \
        "${port_of[$b]}" / "$rate" "$secs" "$conns"
      sed -i '$ s/$/ target='"$rate"'/' "$raw"
    done
  done
fi

if [ "$syscalls" = 1 ] && want syscalls; then
  for b in "${one[@]}"; do
    progress "syscalls (perf stat, ${sys_secs}s): $b"
    measure sys "$b" 1 wrk --perf -- timeout "$bound" wrk -t1 -c"$conns" -d"${sys_secs}s" \
      "$(wrk_url "$b")"
  done
fi

# --- issue 22's rows (interleaved rounds of nginx, HAProxy, lb as shipped) ----
if want download; then
  cat "$work/www/big.bin" >/dev/null # in the page cache before the first round
  for r in $(seq "$rounds"); do
    for b in direct "${new[@]}"; do
      progress "100 MiB downloads, round $r: $b"
      measure dl "$b" "$r" bulk -- timeout "$rbound" "$work/bulk" get 127.0.0.1 \
        "${port_of[$b]}" /big.bin "$rsecs"
    done
  done
fi
if want upload; then
  for r in $(seq "$rounds"); do
    for b in direct "${new[@]}"; do
      progress "100 MiB uploads, round $r: $b"
      # lb: the second lb, whose one backend is the sink; direct: the sink
      uport=${port_of[$b]} upid=$b
      [ "$b" != lb-shipped ] || uport=$p_lbul upid=lb-ul
      [ "$b" != direct ] || uport=$p_sink upid=sink
      pidname=$upid measure ul "$b" "$r" bulk -- timeout "$rbound" "$work/bulk" post \
        127.0.0.1 "$uport" /upload "$rsecs" "$big_bytes"
    done
  done
fi
if want churn; then
  for r in $(seq "$rounds"); do
    for b in "${new[@]}"; do
      progress "new connection per request, round $r: $b"
      measure churn "$b" "$r" wrk -- timeout "$rbound" wrk -t1 -c"$conns" -d"${rsecs}s" \
        --latency -H "Connection: close" "$(wrk_url "$b")"
    done
  done
fi
if want latency; then
  for r in $(seq "$rounds"); do
    for b in direct "${new[@]}"; do
      progress "latency at 1,000 req/s, round $r: $b"
      measure lat "$b" "$r" openloop -- timeout "$rbound" "$work/openloop" 127.0.0.1 \
        "${port_of[$b]}" / 1000 "$rsecs" "$conns"
    done
  done
fi
if want https; then
  for b in "${new[@]}"; do # warm-up
    fg "${pin_load[@]}" timeout 30 wrk -t1 -c"$conns" -d1s "$(tls_url "$b")" >/dev/null
  done
  for r in $(seq "$rounds"); do
    for b in "${new[@]}"; do
      progress "HTTPS keep-alive, round $r: $b"
      measure https "$b" "$r" wrk -- timeout "$rbound" wrk -t1 -c"$conns" -d"${rsecs}s" \
        --latency "$(tls_url "$b")"
    done
  done
fi
if want tls-new; then
  for r in $(seq "$rounds"); do
    for b in "${new[@]}"; do
      progress "new TLS connection per request, round $r: $b"
      measure tlsnew "$b" "$r" wrk -- timeout "$rbound" wrk -t1 -c"$conns" -d"${rsecs}s" \
        --latency -H "Connection: close" "$(tls_url "$b")"
    done
  done
fi
if want h2; then
  for r in $(seq "$rounds"); do
    for b in "${new[@]}"; do
      progress "HTTP/2 (h2load -c8 -m8), round $r: $b"
      measure h2 "$b" "$r" h2load -- timeout "$rbound" h2load -t1 -c8 -m8 -D "$rsecs" \
        "$(tls_url "$b")"
    done
  done
fi

if want idle; then
  for b in "${one[@]}"; do
    progress "RSS with $idle_conns idle connections: $b"
    fg "${pin_load[@]}" timeout 300 python3 "$helper" idle "${port_of[$b]}" "$idle_conns" \
      "${pid[$b]}" >"$work/line"
    printf 'rss\t%s\t1\t%s\n' "$b" "$(cat "$work/line")" >>"$raw"
    sleep 2
  done
fi

# threads = 2: nothing pinned.
if want t2; then
  for b in "${one[@]}"; do stop "$b"; done
  for p in $(python3 "$helper" pids "${pid[backends]}" | tr , ' '); do
    taskset -a -p -c "$all_cpus" "$p" >/dev/null
  done
  start nginx2 -- nginx -p "$work/nginx2" -e "$work/nginx2/error.log" -c "$work/nginx2/nginx.conf"
  start haproxy2 -- haproxy -db -f "$work/haproxy2.cfg"
  start lb2-nolog -- env -u RUST_LOG "$work/lb" -c "$work/lb2-nolog.toml"
  start lb2-shipped -- env -u RUST_LOG "$work/lb" -c "$work/lb2-shipped.toml"
  for b in "${two[@]}"; do ready "$b" "${port_of[$b]}"; done
  pin_load_now=()
  for b in "${two[@]}"; do
    fg timeout 30 wrk -t2 -c"$conns" -d2s "$(wrk_url "$b")" >/dev/null
  done
  for r in $(seq "$rounds"); do
    for b in "${two[@]}"; do
      progress "threads=2, round $r: $b"
      measure t2 "$b" "$r" wrk -- timeout "$bound" wrk -t2 -c"$conns" -d"$duration" \
        --latency "$(wrk_url "$b")"
    done
  done
fi

# --- report -------------------------------------------------------------------
lb_warn=""
for b in lb-nolog lb-shipped lb-ul lb2-nolog lb2-shipped; do
  [ -e "$work/$b.log" ] || continue
  grep -E ' (WARN|ERROR) ' "$work/$b.log" >>"$work/$b.warn" 2>/dev/null || true
  n=$(wc -l <"$work/$b.warn" 2>/dev/null || echo 0)
  lb_warn+="$b $n, "
  if [ "$n" -gt 0 ]; then
    echo "bench-peers: $b logged $n WARN/ERROR lines, e.g.:" >&2
    head -3 "$work/$b.warn" | cut -c1-300 >&2
  fi
done
lb_errors=${lb_warn%, }
settings=$(env | grep '^BENCH_' | sort | tr '\n' ' ' || true)
mkdir -p target
python3 "$helper" report "$raw" target/bench-peers.md \
  "**$(date -u '+%Y-%m-%d %H:%M UTC')** · \`${settings}${MAKELEVEL:+make bench-peers → }scripts/bench-peers.sh\` · lb $(git describe --always --dirty 2>/dev/null || echo '?') · $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), Linux $(uname -r) · $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1 " " $2}')" \
  "" \
  "Closed loop: wrk -t1 -c$conns -d$duration --latency, GET / answered \`200 ok\` by 4 backends (one nginx, 1 worker); $layout; one worker/thread, upstream keep-alive, access log off except *lb as shipped* (lb.toml defaults: access log on, written to a file; health checks; metrics); medians of $rounds interleaved round(s). CPU = the balancer's utime+stime (/proc) ÷ requests served. Syscalls: perf stat raw_syscalls:sys_enter over a separate ${sys_secs} s run. RSS: VmRSS with $idle_conns idle kept-alive connections (one GET each); KiB/conn = growth from $((idle_conns / 2)) to $idle_conns open ÷ $((idle_conns - idle_conns / 2)). Fixed rate: scripts/bench/openloop.c (open loop, $conns keep-alive connections, latency counted from when each request was due). threads=2: nothing pinned, wrk -t2. Every lb has \`max_connections = $maxconn\` (HAProxy maxconn the same). Issue 22's rows (${rsecs} s each, same rounds, interleaved): 100 MiB bodies one after another on one keep-alive connection (scripts/bench/bulk.c, 256 KiB reads/writes), downloads of a static file the backend nginx serves with sendfile, uploads (Content-Length) to a sink (bulk.c sink: reads the whole body, then answers; lb: a second lb as shipped with the sink as its backend, lb having no path routing); nginx proxies with \`proxy_request_buffering off\`, 16 KiB proxy buffers, no temp files; CPU s/GiB = the balancer's CPU ÷ body bytes moved. New connection per request: wrk -t1 -c$conns -H 'Connection: close'. Added latency: openloop at 1,000 req/s over $conns keep-alive connections, minus the same run straight to a backend in the same round (medians of the per-round differences). TLS: one ECDSA P-256 certificate (openssl), TLS 1.3 only, no session resumption on any of the three (every new connection a full handshake), ALPN h2,http/1.1; HTTPS keep-alive: wrk -t1 -c$conns; new TLS connection per request: wrk with 'Connection: close'; HTTP/2: h2load -t1 -c8 -m8 ($(h2load --version 2>&1 | head -1 | awk '{print $2}')). lb WARN/ERROR log lines during the run: $lb_errors."
ok=1

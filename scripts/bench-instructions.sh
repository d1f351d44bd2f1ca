#!/usr/bin/env bash
# `make bench-instructions`: instructions per proxied request (issue 22), a
# per-request cost figure that does not move with the noise of a shared VM, so
# a regression shows in one run.
#
# For each path (lb's own HTTP/1 path, and the Pingora path with
# LB_PATH=pingora; then HTTP/2 streams, h2c with prior knowledge, served by
# lb's own exchange and with LB_PATH=pingora by the Pingora path, each
# stream a GET sent by `h2load -c1 -m1`) lb runs twice under an instruction
# counter, one thread, in
# front of one tiny backend (nginx, `return 200 "ok"`, not counted): once
# serving N keep-alive GETs on one connection (BENCH_INSTR_REQUESTS, default
# 2000) and once serving none. Both runs start lb, wait until it answers one
# GET, do their requests, then stop it with SIGTERM; the difference of the two
# totals divided by N is the cost of one request (start-up, the readiness GET
# and shutdown cancel out).
#
# The counter is `perf stat -e instructions:u` where the CPU's counters are
# visible (not in most VMs: `perf stat -e instructions true` says "not
# supported"), else valgrind's callgrind (user-space instructions, ~50x slower,
# exact). BENCH_INSTR_TOOL=perf|callgrind forces one. lb's background work is
# kept out of the count: health probes every hour, nothing else timed runs in a
# few seconds. Settings otherwise lb.toml's defaults (access log on, to a file).
# BENCH_INSTR_RUNS (1): repeat each pair and print every figure (spread check).
# Prints one line per path and writes target/bench-instructions.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BENCH_BIN:-target/release}
n=${BENCH_INSTR_REQUESTS:-2000}
runs=${BENCH_INSTR_RUNS:-1}
helper=scripts/bench/peers.py
[ -x "$bin/lb" ] || { echo "bench-instructions needs $bin/lb (make build)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "bench-instructions needs nginx (apt-get install nginx)" >&2; exit 1; }

tool=${BENCH_INSTR_TOOL:-}
if [ -z "$tool" ]; then
  if command -v perf >/dev/null &&
    perf stat -x, -e instructions:u -- true 2>&1 >/dev/null | grep -q '^[0-9]'; then
    tool=perf
  else
    tool=callgrind
  fi
fi
if [ "$tool" = callgrind ] && ! command -v valgrind >/dev/null; then
  echo "bench-instructions: no usable perf counter and no valgrind (apt-get install valgrind)" >&2
  exit 1
fi

# shellcheck source=bench/ok-backend.sh
. scripts/bench/ok-backend.sh
bench_work bench-instructions
cp "$bin/lb" "$work/lb"

read -r be p_lb a_lb <<<"$(python3 "$helper" ports 3)"
ok_backend "$be"

cat >"$work/lb.toml" <<TOML
[server]
listen = "127.0.0.1:$p_lb"
threads = 1

[admin]
listen = "127.0.0.1:$a_lb"

[health]
interval = "1h"

[[backends]]
name = "app-1"
addr = "127.0.0.1:$be"
TOML
"$work/lb" check -c "$work/lb.toml" >/dev/null
# The HTTP/2 rows' config: the same with h2c on (apart, so the HTTP/1 rows
# do not pay for looking for the preface).
sed 's/^threads = 1$/threads = 1\nh2c = true/' "$work/lb.toml" >"$work/lb-h2.toml"
"$work/lb" check -c "$work/lb-h2.toml" >/dev/null
paths="http1 pingora"
if command -v h2load >/dev/null; then
  paths+=" h2 h2-pingora"
else
  echo "bench-instructions: no h2load (apt-get install nghttp2-client): HTTP/2 rows skipped" >&2
fi

# N keep-alive GETs on one connection, each answer read whole.
cat >"$work/client.py" <<'PY'
import re, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
buf = b""
for _ in range(n):
    s.sendall(req)
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"answer {head[:40]!r}")
    clen = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
    while len(buf) < clen:
        buf += s.recv(65536)
    buf = buf[clen:]
s.close()
PY

# count PATH REQUESTS RUN: total instructions of one lb run
count() {
  local path=$1 reqs=$2 run=$3 out=$work/$1-$2-$3
  local envs=(env -u RUST_LOG) config=$work/lb.toml
  case $path in
    pingora | h2-pingora) envs+=(LB_PATH=pingora) ;;
  esac
  case $path in
    h2*) config=$work/lb-h2.toml ;;
  esac
  if [ "$tool" = perf ]; then
    setsid "${envs[@]}" perf stat -x, -e instructions:u -o "$out.count" -- \
      "$work/lb" -c "$config" >"$out.log" 2>&1 </dev/null &
  else
    setsid "${envs[@]}" valgrind --tool=callgrind --callgrind-out-file="$out.count" \
      "$work/lb" -c "$config" >"$out.log" 2>&1 </dev/null &
  fi
  pid[lb]=$!
  python3 "$helper" wait "$p_lb" 120 "${pid[lb]}" || { tail -20 "$out.log" >&2; exit 1; }
  if [ "$reqs" != 0 ]; then
    case $path in
      h2*)
        h2load -n "$reqs" -c1 -m1 "http://127.0.0.1:$p_lb/" >"$out.h2load" 2>&1
        grep -q "$reqs succeeded" "$out.h2load" || { cat "$out.h2load" >&2; exit 1; }
        ;;
      *) python3 "$work/client.py" "$p_lb" "$reqs" ;;
    esac
  fi
  # SIGTERM to lb itself: under valgrind that is the process started (exec'd
  # all the way), under perf its child; the counter writes its total as lb exits
  local lbpid=${pid[lb]} p
  if [ "$tool" = perf ]; then
    for p in $(python3 "$helper" pids "${pid[lb]}" | tr , ' '); do
      [ "$(readlink "/proc/$p/exe" 2>/dev/null)" != "$work/lb" ] || lbpid=$p
    done
  fi
  kill -TERM "$lbpid"
  wait "${pid[lb]}" || true
  unset "pid[lb]"
  if [ "$tool" = perf ]; then
    awk -F, '/instructions/ {print $1; exit}' "$out.count"
  else
    awk '/^(summary|totals):/ {print $2; exit}' "$out.count"
  fi
}

results=()
for path in $paths; do
  figs=()
  for r in $(seq "$runs"); do
    echo "bench-instructions: $path, run $r: 0 and $n requests under $tool" >&2
    i0=$(count "$path" 0 "$r")
    i1=$(count "$path" "$n" "$r")
    figs+=("$(python3 -c "import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3])))" "$i0" "$i1" "$n")")
    echo "bench-instructions: $path: $i0 instructions with 0 requests, $i1 with $n" >&2
  done
  results+=("$path ${figs[*]}")
done

mkdir -p target
{
  echo "**$(date -u '+%Y-%m-%d %H:%M UTC')** · \`$(env | grep '^BENCH_' | sort | tr '\n' ' ' || true)${MAKELEVEL:+make bench-instructions → }scripts/bench-instructions.sh\` · lb $(git describe --always --dirty 2>/dev/null || echo '?') · $tool ($( [ "$tool" = callgrind ] && valgrind --version || perf --version))"
  echo
  echo "Instructions per proxied request ($n keep-alive GETs on one connection minus a run with none; HTTP/2: $n streams on one h2c connection, h2load -c1 -m1; one thread; user space):"
  echo
  echo "| path | instructions/request |"
  echo "|---|---:|"
  for line in "${results[@]}"; do
    read -r p figs <<<"$line"
    case $p in
      http1) label="lb's HTTP/1 path" ;;
      pingora) label="Pingora path (LB_PATH=pingora)" ;;
      h2) label="HTTP/2 stream, lb's exchange" ;;
      *) label="HTTP/2 stream, Pingora path (LB_PATH=pingora)" ;;
    esac
    echo "| $label | ${figs// / · } |"
  done
} | tee target/bench-instructions.md

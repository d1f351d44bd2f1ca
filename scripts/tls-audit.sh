#!/usr/bin/env bash
# `make tls-audit`: testssl.sh (Debian's testssl.sh package) against lb's
# HTTPS listener and against nginx serving the same certificate, findings side
# by side, and the rule of issue 19: lb shows no finding nginx's defaults
# don't (exit 1 naming them).
#
# Set-up, all on ephemeral loopback ports, every process stopped on exit:
#   - a local CA and a `localhost` certificate (SAN localhost + 127.0.0.1,
#     90 days, a CRL URI that is never fetched) made with the openssl CLI in a
#     temp dir under target/tls-audit/; TLS_AUDIT_KEY=ecdsa (P-256, default)
#     or rsa (2048). Both servers send the leaf only; testssl.sh is given the
#     CA with --add-ca, so the chain of trust is checked as for a public CA.
#   - a trivial backend: an nginx server answering `return 200 "ok"`.
#   - lb with lb.toml's [tls] defaults (TLS 1.2+, ALPN h2 + http/1.1, session
#     resumption) and hsts = "max-age=31536000".
#   - nginx with Debian's defaults: the ssl_protocols / ssl_ciphers /
#     ssl_prefer_server_ciphers lines of the packaged /etc/nginx/nginx.conf
#     (none: nginx's built-in defaults), HTTP/2 on (`http2 on;` from nginx
#     1.25.1, `listen ... ssl http2` before), the same HSTS header, proxying
#     to the same backend.
# testssl.sh runs a full default scan of each, one after the other (about 100 s
# each), with --ip 127.0.0.1 --nodns none (no DNS at all), no --phone-out (no
# CRL/OCSP fetches) and the system openssl, so nothing leaves loopback.
# Writes target/tls-audit/{lb,nginx}.json (testssl.sh's pretty JSON) and .log
# (its text output), and target/tls-audit.md (the table, also printed).
#
# Knobs: TLS_AUDIT_KEY (ecdsa | rsa), TLS_AUDIT_FAST=1 (testssl.sh --fast),
# TLS_AUDIT_LB (the lb binary; default target/release/lb, built when missing),
# TLS_AUDIT_KEEP=1 (keep the temp dir: certificates, configs, server logs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PATH=$PATH:/usr/sbin # nginx, for users whose PATH lacks it
out=$root/target/tls-audit
helper=$root/scripts/bench/tls_audit.py
key_type=${TLS_AUDIT_KEY:-ecdsa}
case $key_type in ecdsa | rsa) ;; *)
  echo "TLS_AUDIT_KEY must be ecdsa or rsa, not '$key_type'" >&2
  exit 2
  ;;
esac

for t in testssl nginx openssl python3; do
  command -v "$t" >/dev/null || { echo "tls-audit needs $t (scripts/deps.sh tls-audit installs it)" >&2; exit 1; }
done
lb=${TLS_AUDIT_LB:-target/release/lb}
if [ ! -x "$lb" ]; then
  [ -z "${TLS_AUDIT_LB:-}" ] || { echo "tls-audit: no executable $lb" >&2; exit 1; }
  echo "tls-audit: building $lb" >&2
  flock /tmp/lb-cargo.lock cargo build --release --bin lb
fi
lb=$(realpath "$lb")

mkdir -p "$out"
work=$(mktemp -d "$out/work.XXXXXX")
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${TLS_AUDIT_KEEP:-0}" = 1 ]; then echo "tls-audit: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- certificates ------------------------------------------------------------
keyopts() {
  if [ "$key_type" = rsa ]; then echo "-newkey rsa:2048"; else
    echo "-newkey ec -pkeyopt ec_paramgen_curve:P-256"; fi
}
# shellcheck disable=SC2046
openssl req -x509 $(keyopts) -nodes -sha256 -days 90 -subj "/CN=lb tls-audit CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
# shellcheck disable=SC2046
openssl req $(keyopts) -nodes -subj "/CN=localhost" \
  -keyout "$work/localhost.key" -out "$work/localhost.csr" 2>/dev/null
usage=digitalSignature
[ "$key_type" = rsa ] && usage=digitalSignature,keyEncipherment
cat >"$work/leaf.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,$usage
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
crlDistributionPoints=URI:http://127.0.0.1:9/lb-tls-audit.crl
EXT
openssl x509 -req -sha256 -days 90 -in "$work/localhost.csr" -CA "$work/ca.crt" \
  -CAkey "$work/ca.key" -CAcreateserial -extfile "$work/leaf.ext" \
  -out "$work/localhost.crt" 2>/dev/null
openssl verify -CAfile "$work/ca.crt" "$work/localhost.crt" >/dev/null

# --- servers -----------------------------------------------------------------
read -r p_be p_lb p_admin p_lbtls p_nginx <<<"$(python3 "$root/scripts/bench/peers.py" ports 5)"
hsts="max-age=31536000"

start() { # NAME CMD...
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}
ready() { # NAME PORT
  local pid
  eval "pid=\$pid_$1"
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "tls-audit: $1 did not come up on 127.0.0.1:$2; its log:" >&2
  tail -20 "$work/$1.log" >&2
  exit 1
}
nginx_conf() { # NAME BODY
  local d=$work/$1
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/cb; proxy_temp_path $d/px; fastcgi_temp_path $d/fc;
  uwsgi_temp_path $d/uw; scgi_temp_path $d/sc;
$2
}
NGINX
}

nginx_conf backend "  server { listen 127.0.0.1:$p_be; location / { return 200 \"ok\n\"; } }"
start backend nginx -p "$work/backend" -e "$work/backend/error.log" -c "$work/backend/nginx.conf"
ready backend "$p_be"

cat >"$work/lb.toml" <<TOML
[server]
listen = "127.0.0.1:$p_lb"
[admin]
listen = "127.0.0.1:$p_admin"
[tls]
listen = "127.0.0.1:$p_lbtls"
certificates = [{ cert = "$work/localhost.crt", key = "$work/localhost.key" }]
hsts = "$hsts"
[[backends]]
name = "backend"
addr = "127.0.0.1:$p_be"
TOML
"$lb" check -c "$work/lb.toml" >/dev/null
start lb env RUST_LOG=warn "$lb" -c "$work/lb.toml"
ready lb "$p_lbtls"

# Debian's TLS defaults, as its nginx package ships them.
debian_ssl=""
if [ -r /etc/nginx/nginx.conf ]; then
  debian_ssl=$(grep -E '^[[:space:]]*ssl_(protocols|ciphers|prefer_server_ciphers)[[:space:]]' \
    /etc/nginx/nginx.conf | sed 's/#.*//; s/^[[:space:]]*/  /' || true)
fi
nginx_version=$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if [ "$(printf '%s\n1.25.1\n' "$nginx_version" | sort -V | head -1)" = 1.25.1 ]; then
  listen="listen 127.0.0.1:$p_nginx ssl; http2 on;"
else
  listen="listen 127.0.0.1:$p_nginx ssl http2;"
fi
nginx_conf nginx "$debian_ssl
  server {
    $listen
    server_name localhost;
    ssl_certificate $work/localhost.crt;
    ssl_certificate_key $work/localhost.key;
    add_header Strict-Transport-Security \"$hsts\" always;
    location / { proxy_pass http://127.0.0.1:$p_be; }
  }"
start nginx nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
ready nginx "$p_nginx"

# --- scans -------------------------------------------------------------------
testssl_args=(--quiet --color 0 --warnings batch --ip 127.0.0.1 --nodns none
  --connect-timeout 5 --openssl-timeout 5 --add-ca "$work/ca.crt")
[ "${TLS_AUDIT_FAST:-0}" = 1 ] && testssl_args+=(--fast)
scan() { # NAME PORT
  local json=$out/$1.json rc=0
  rm -f "$json" "$out/$1.log"
  echo "tls-audit: testssl.sh against $1 (https://localhost:$2/), about 2 minutes" >&2
  timeout 900 testssl "${testssl_args[@]}" --jsonfile-pretty "$json" \
    "https://localhost:$2/" >"$out/$1.log" 2>&1 || rc=$?
  if ! python3 -c 'import json,sys; sys.exit(not json.load(open(sys.argv[1]))["scanResult"])' \
    "$json" 2>/dev/null; then
    echo "tls-audit: testssl.sh against $1 gave no results (exit $rc); its output:" >&2
    tail -30 "$out/$1.log" >&2
    exit 1
  fi
}
scan lb "$p_lbtls"
scan nginx "$p_nginx"

lb_version=$("$lb" --version 2>/dev/null || echo lb)
ssl_desc=$(echo "$debian_ssl" | sed 's/^ *//; s/; *$//; /^$/d' | paste -sd ',' - | sed 's/,/, /g')
python3 "$helper" report "$out/lb.json" "$out/nginx.json" "$root/target/tls-audit.md" \
  "# make tls-audit, $(date -u +%Y-%m-%d)" "" \
  "$lb_version ([tls] defaults, hsts) vs nginx $nginx_version (${ssl_desc:-no ssl_* directives}; HTTP/2)," \
  "one $key_type certificate for localhost from a local CA; testssl.sh full default scan."

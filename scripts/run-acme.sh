#!/usr/bin/env bash
# `make run-acme`: lb getting its certificate from a local Pebble (the ACME
# test CA), all on loopback. Pebble's WFE certificate comes from a throwaway
# CA made with openssl; lb trusts it through tls.acme.ca_roots. The name
# `localhost` resolves through /etc/hosts for Pebble's validation. Ctrl-C
# stops both. Ports: lb 8080 (http-01), 8443 (HTTPS), admin 9090; Pebble 14000.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v pebble >/dev/null || { echo "needs pebble (apt-get install pebble)" >&2; exit 1; }
dir=target/run-acme
mkdir -p "$dir"
if [ ! -e "$dir/wfe.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -subj "/CN=run-acme CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/wfe.key" -out "$dir/wfe.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/ext"
  openssl x509 -req -in "$dir/wfe.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 30 -extfile "$dir/ext" -out "$dir/wfe.pem" 2>/dev/null
fi
cat >"$dir/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
 "certificate": "$dir/wfe.pem", "privateKey": "$dir/wfe.key",
 "httpPort": 8080, "tlsPort": 8443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
cat >"$dir/lb.toml" <<TOML
[server]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
[tls]
listen = "127.0.0.1:8443"
[tls.acme]
directory = "https://127.0.0.1:14000/dir"
email = "ops@example.com"
domains = ["localhost"]
state_dir = "$dir/state"
challenge = "http-01"
ca_roots = "$dir/ca.pem"
[[backends]]
name = "none"
addr = "127.0.0.1:9"
TOML
PEBBLE_VA_NOSLEEP=1 pebble -config "$dir/pebble.json" >"$dir/pebble.log" 2>&1 &
pebble_pid=$!
trap 'kill $pebble_pid 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/14000) 2>/dev/null && break; sleep 0.1; done
echo "pebble (log: $dir/pebble.log); lb ordering a certificate for localhost:"
echo "  curl -s localhost:9090/admin/tls -H \"Authorization: Bearer \$(cat $dir/lb-admin-token)\""
echo "  openssl s_client -connect 127.0.0.1:8443 -servername localhost </dev/null | grep issuer"
LB_ACME_BACKOFF="${LB_ACME_BACKOFF:-2s,30s}" ${LB:-target/debug/lb} run -c "$dir/lb.toml"

#!/usr/bin/env bash
# A local CA and a certificate it signs, for trying HTTPS without a public CA:
#   scripts/dev-certs.sh DIR [NAME...]      (names default: localhost 127.0.0.1 ::1)
# writes DIR/ca.pem (trust this one: curl --cacert DIR/ca.pem), DIR/ca.key,
# DIR/cert.pem and DIR/key.pem (what [tls] certificates point at; ECDSA P-256,
# PKCS#8). Files still valid for 30 days and covering every NAME are reused,
# so a run after the first changes nothing (and a browser that was told to
# trust ca.pem keeps trusting it). Needs the openssl CLI (Debian: openssl).
# KEY_MODE (default 600) is key.pem's mode: `make certs` makes it 644 for the
# Compose demo, where lb runs as uid 65532 and reads it through a bind mount.
set -euo pipefail
dir=${1:?usage: scripts/dev-certs.sh DIR [NAME...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1 ::1)
key_mode=${KEY_MODE:-600}

if ! command -v openssl >/dev/null 2>&1; then
  echo "openssl not found: install it (Debian: apt-get install openssl) to make a local CA and certificate" >&2
  exit 3
fi
mkdir -p "$dir"

san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

still_valid() {
  local f
  for f in ca.pem ca.key cert.pem key.pem; do [ -s "$dir/$f" ] || return 1; done
  openssl x509 -in "$dir/cert.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
  openssl x509 -in "$dir/ca.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
  openssl verify -CAfile "$dir/ca.pem" "$dir/cert.pem" >/dev/null 2>&1 || return 1
  # The key matches the certificate.
  [ "$(openssl x509 -in "$dir/cert.pem" -noout -pubkey)" = "$(openssl pkey -in "$dir/key.pem" -pubout 2>/dev/null)" ] || return 1
  # Every name is covered (openssl prints IPv6 addresses in full, so compare
  # the normalised list it prints for a throwaway certificate with these SANs).
  local have
  have=$(openssl x509 -in "$dir/cert.pem" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')
  [ "$have" = "$(want_sans)" ]
}

# The SAN list as openssl prints it for `san`.
want_sans() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
    -subj /CN=x -days 1 -addext "subjectAltName=$san" 2>/dev/null |
    openssl x509 -noout -ext subjectAltName | tail -n +2 | tr -d ' '
}

if still_valid; then
  chmod "$key_mode" "$dir/key.pem"
  echo "reusing the certificate in $dir ($(openssl x509 -in "$dir/cert.pem" -noout -enddate))"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] &&
  openssl x509 -in "$dir/ca.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 &&
  [ "$(openssl x509 -in "$dir/ca.pem" -noout -pubkey)" = "$(openssl pkey -in "$dir/ca.key" -pubout 2>/dev/null)" ]; then
  # Keep the CA (whoever trusts it keeps trusting the new leaf).
  cp "$dir/ca.pem" "$dir/ca.key" "$tmp/"
else
  # The CA: 10 years, may sign leaves only.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 3650 \
    -subj "/CN=lb local CA $(hostname 2>/dev/null || echo dev) $(date +%Y-%m-%d)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$tmp/ca.pem"
fi
# The leaf: 1 year (under the 398 days browsers accept), server auth only.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/key.pem" 2>/dev/null
openssl req -new -key "$tmp/key.pem" -subj "/CN=${names[0]}" -out "$tmp/leaf.csr"
cat >"$tmp/leaf.ext" <<EXT
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
EXT
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -sha256 -days 365 -extfile "$tmp/leaf.ext" -out "$tmp/cert.pem" 2>/dev/null
chmod 600 "$tmp/ca.key"
chmod "$key_mode" "$tmp/key.pem"
chmod 644 "$tmp/ca.pem" "$tmp/cert.pem"
# Key before certificate, each replaced by a rename: a running lb watching
# these files never reads a half-written one (a mismatched pair in between is
# refused and the old pair keeps serving until the second rename).
for f in ca.key ca.pem key.pem cert.pem; do mv -f "$tmp/$f" "$dir/$f"; done
echo "local CA $dir/ca.pem; a certificate for ${names[*]} ($dir/cert.pem, $dir/key.pem)"

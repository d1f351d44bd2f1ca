#!/usr/bin/env bash
# Installs the system packages lb's build and tests need (Debian), or stops with
# one line saying what to install.
#   cmake            Pingora's build
#   build-essential  a C compiler for -sys crates
#   docker-compose   when Docker is installed without Compose (compose e2e test)
#   prometheus       for `promtool check metrics` (tests/metrics.rs validates
#                    /metrics with it); installed without its recommends (the
#                    node exporter), and its server is never started by lb's tests
# With an argument, also what that target needs:
#   scripts/deps.sh test       + python3 and wrk (tests/scenarios.rs runs the
#                                scenario driver), chromium (tests/status_page.rs),
#                                slowhttptest (tests/slow_clients.rs), pebble
#                                (tests/acme.rs), strace
#                                (tests/state_file.rs), python3-venv where
#                                Debian's python3 lacks it, and
#                                kubernetes-validate (tests/deploy.rs) in a
#                                venv under target/ (below)
#   scripts/deps.sh scenarios  + python3 and wrk (`make scenarios`)
#   scripts/deps.sh tls-audit  + testssl.sh, nginx, openssl and python3
#                                (`make tls-audit`); Debian's nginx service is
#                                kept from starting during the install (the
#                                audit runs the binary with its own config)
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
case "${1:-}" in
  test | scenarios)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    ;;
esac
if [ "${1:-}" = tls-audit ]; then
  command -v testssl >/dev/null 2>&1 || missing+=(testssl.sh)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
fi
if [ "${1:-}" = test ]; then
  command -v slowhttptest >/dev/null 2>&1 || missing+=(slowhttptest)
  # tests/acme.rs orders certificates from Pebble, the ACME test server.
  command -v pebble >/dev/null 2>&1 || missing+=(pebble)
  # tests/state_file.rs slows lb's fsync with `strace -e inject=...:delay_enter`;
  # tests/local_errors.rs injects EMFILE and ENOSPC with it and lowers lb's
  # open-file limit with prlimit (util-linux).
  command -v strace >/dev/null 2>&1 || missing+=(strace)
  command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
  # tests/tls.rs uses openssl s_client and curl --http2 as clients outside
  # Rust; the compose tests make their certificates with openssl.
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # Debian's python3 creates venvs only with python3-venv (ensurepip).
  python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
fi
# tests/deploy.rs validates deploy/k8s against Kubernetes' API schemas with
# kubernetes-validate (PyPI), pinned: each release ships the schemas of a fixed
# set of Kubernetes versions, and the test pins one of them. Installed into a
# venv under target/ rather than with pip --user or --break-system-packages:
# no root, works whether or not the system Python is externally managed
# (Debian 12's refuses pip installs, PEP 668), never shadows or breaks apt's
# Python packages, and `cargo clean` removes it. Run after the system
# packages (python3-venv) are in.
KUBERNETES_VALIDATE=1.37.0
kubernetes_validate() {
  [ "${1:-}" = test ] || return 0
  local venv
  venv="$(cd "$(dirname "$0")/.." && pwd)/target/tools/kubernetes-validate"
  [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE" ] && return 0
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"
}
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null 2>&1 \
   && ! command -v chromium-browser >/dev/null 2>&1 && [ -z "${LB_CHROMIUM:-}" ]; then
  missing+=(chromium)
fi
# The compose end-to-end test drives Docker with Compose (v2 plugin or v1).
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
   && ! command -v docker-compose >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
[ ${#missing[@]} -eq 0 ] && { kubernetes_validate "${1:-}"; exit 0; }

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "lb needs: ${missing[*]} — install them with your package manager (e.g. apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing${as_root:+ with sudo}: ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq >/dev/null
apt_install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
build=()
for p in "${missing[@]}"; do [ "$p" = prometheus ] || build+=("$p"); done
# Debian's maintainer scripts would start the system nginx on :80; a
# policy-rc.d that says 101 keeps them from starting any service meanwhile.
added_policy=
case " ${missing[*]} " in *" nginx "*)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  ;;
esac
rc=0
[ ${#build[@]} -eq 0 ] || apt_install "${build[@]}" || rc=$?
[ -z "$added_policy" ] || "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
[ "$rc" = 0 ] || exit "$rc"
# Only promtool is wanted from `prometheus`.
[ "${missing[*]}" = "${build[*]}" ] || apt_install --no-install-recommends prometheus
kubernetes_validate "${1:-}"

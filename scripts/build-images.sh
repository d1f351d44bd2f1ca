#!/usr/bin/env bash
# Builds lb:local and lb-app:local FROM scratch out of the binaries in $1.
#   make images       static release binaries (what ships): the image holds the
#                     binary and nothing else.
#   make test-images  the debug binaries `cargo test` builds anyway (make test):
#                     a dynamically linked binary is copied without its debug
#                     info, with the shared libraries `ldd` lists at their
#                     paths, so the end-to-end tests need no second (static,
#                     release) build of Pingora.
# Each image's build context holds only its binary, those libraries and its
# Dockerfile. Nothing is pulled.
set -euo pipefail
bin=${1:?usage: build-images.sh DIR-WITH-BINARIES}
cd "$(dirname "$0")/.."
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
build() { # name binary dockerfile
  rm -rf "${ctx:?}"/*
  if ldd "$bin/$2" 2>&1 | grep -qE "not a dynamic|statically linked"; then
    cp "$bin/$2" "$ctx/$2"
    cp "deploy/docker/$3" "$ctx/Dockerfile"
  else
    objcopy --strip-debug "$bin/$2" "$ctx/$2"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
    ldd "$bin/$2" | grep -oE '/[^ ]+' | while read -r lib; do
      mkdir -p "$ctx/rootfs$(dirname "$lib")"
      cp -L "$lib" "$ctx/rootfs$lib"
    done
    sed 's|^FROM scratch$|FROM scratch\nCOPY rootfs/ /|' "deploy/docker/$3" >"$ctx/Dockerfile"
    grep -q '^COPY rootfs/ /$' "$ctx/Dockerfile" || { echo "deploy/docker/$3: no 'FROM scratch' line" >&2; exit 1; }
  fi
  out=$(docker build -q -t "$1" "$ctx" 2>&1) || { echo "$out" >&2; exit 1; }
  echo "$1: $(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MiB", $1/1048576}') from $bin/$2"
}
build lb:local lb lb.Dockerfile
build lb-app:local app app.Dockerfile

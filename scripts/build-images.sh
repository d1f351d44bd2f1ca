#!/usr/bin/env bash
# Builds lb:local and lb-app:local from static binaries in $1 (see `make images`).
# Each image's build context holds only its binary and Dockerfile.
set -euo pipefail
bin=${1:?usage: build-images.sh DIR-WITH-STATIC-BINARIES}
cd "$(dirname "$0")/.."
for b in lb app; do
  ldd "$bin/$b" 2>&1 | grep -qE "not a dynamic|statically linked" || {
    echo "$bin/$b is not statically linked" >&2; exit 1; }
done
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
build() { # name binary dockerfile
  rm -rf "$ctx"/*
  cp "$bin/$2" "$ctx/$2"
  cp "deploy/docker/$3" "$ctx/Dockerfile"
  out=$(docker build -q -t "$1" "$ctx" 2>&1) || { echo "$out" >&2; exit 1; }
  echo "$1: $(docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MiB", $1/1048576}')"
}
build lb:local lb lb.Dockerfile
build lb-app:local app app.Dockerfile

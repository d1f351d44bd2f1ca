#!/usr/bin/env bash
# Exit 0 if a headless Chromium can start here ($LB_CHROMIUM, else chromium,
# chromium-browser or google-chrome on PATH): `make test` then runs the status
# page's browser test (tests/status_page.rs), which is otherwise ignored.
set -uo pipefail
for c in "${LB_CHROMIUM:-}" chromium chromium-browser google-chrome; do
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 || continue
  profile=$(mktemp -d)
  timeout 60 "$c" --headless --no-sandbox --disable-gpu --user-data-dir="$profile" \
    --dump-dom about:blank >/dev/null 2>&1
  rc=$?
  rm -rf "$profile"
  exit $rc
done
exit 1

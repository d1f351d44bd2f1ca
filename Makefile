# lb — the two commands that matter: `make run` and `make test`.
.PHONY: run run-pool run-acme test lint deps build images test-images certs bench bench-peers bench-instructions bench-wakeups bench-abuse bench-queue tls-audit scenarios clean

CARGO ?= cargo

## Install missing system build dependencies (Pingora needs cmake), or say what to install.
deps:
	@scripts/deps.sh

## Build release binaries, start four demo apps + lb on loopback (HTTP on 8080,
## HTTPS and HTTP/2 on 8443 with a local CA's certificate in target/run); Ctrl-C stops all.
run: deps
	$(CARGO) build --release --workspace --bins
	@scripts/run-local.sh target/release

## lb owning its backends: examples/pool.toml starts 3 app processes itself; a
## tour shows a member killed and replaced, a leak recycled, a burst scaling up.
run-pool: deps
	$(CARGO) build --release --workspace --bins
	@scripts/run-pool.sh target/release

## lb ordering its own certificate for localhost from a local Pebble (the ACME
## test CA; `apt-get install pebble`): plain 8080, HTTPS 8443, admin 9090.
run-acme: deps
	$(CARGO) build --release --bin lb
	@LB=target/release/lb scripts/run-acme.sh

## The whole test suite (unit, integration, chaos, the scenario driver's smoke
## run, the status page in headless Chromium where one can start, and the
## compose end-to-end tests when a Docker engine is reachable, their images
## built first from the same debug build: `make test-images`). The browser
## and compose tests are #[ignore]d by a plain cargo test and run here with
## --ignored only where they can; LB_REQUIRE_DOCKER=1 makes a missing engine a
## failure.
test: deps
	@scripts/deps.sh test
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory test-images; \
	 else echo "no Docker engine reachable: the compose end-to-end tests stay ignored"; fi
	$(CARGO) test --workspace --no-fail-fast
	@echo "== the status page in headless Chromium (tests/status_page.rs, #[ignore]d by default)"
	@if scripts/chromium-ok.sh; then $(CARGO) test --test status_page --no-fail-fast -- --ignored; \
	 else echo "Chromium cannot start here: tests/status_page.rs stays ignored, not passed"; fi
	@if docker info >/dev/null 2>&1 || [ "$${LB_REQUIRE_DOCKER:-0}" = 1 ]; then \
	   echo "== against the Docker engine (tests/compose.rs, tests/compose_scale.rs, tests/compose_pool.rs, tests/pool_docker.rs, the docker pool upgrade in tests/upgrade.rs; #[ignore]d by default)"; \
	   $(CARGO) test --no-fail-fast $(COMPOSE_TESTS) -- --ignored; \
	 fi
	@echo "== the integration suite again, every request through the Pingora path (LB_PATH=pingora)"
	LB_PATH=pingora $(CARGO) test --no-fail-fast $(PINGORA_PATH_TESTS)

# The end-to-end tests against a Docker engine (one after the other: cargo runs
# test binaries in sequence, so two compose projects never compete for the CPUs):
# the Compose setups, lb owning its containers in Compose (deploy/pool), and the
# pool's docker provider (it builds its own image from the debug app).
COMPOSE_TESTS := --test compose --test compose_scale --test compose_pool --test pool_docker --test upgrade

# Integration tests that also run with every request on the Pingora path
# (LB_PATH=pingora: lb's HTTP/1 path checks a connection's first head, then
# hands the connection over): all but the Docker engine tests (lb runs in its
# image there or drives the engine), the scenario smoke run and the browser
# test (neither tests the request path). Tests that legitimately differ by
# path say so where they branch on LB_PATH.
PINGORA_PATH_TESTS := $(foreach t,$(filter-out compose compose_scale compose_pool pool_docker scenarios status_page,$(basename $(notdir $(wildcard tests/*.rs)))),--test $(t))

## Formatting and lints, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build: deps
	$(CARGO) build --release --workspace --bins

clean:
	$(CARGO) clean

## Container images from statically linked release binaries (FROM scratch: nothing is pulled).
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/static/$(STATIC_TARGET)/release
images: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --workspace --bins \
	  --target $(STATIC_TARGET) --target-dir target/static
	@scripts/build-images.sh $(STATIC_DIR)

## The Compose setups' certificate (they serve 443): a local CA and a certificate
## for localhost, 127.0.0.1, ::1 and lb in deploy/tls, mounted at /etc/lb/tls
## (reused while valid; key.pem 0644 so lb's uid 65532 reads it; openssl).
## Trust deploy/tls/ca.pem: curl --cacert deploy/tls/ca.pem https://localhost/
certs:
	@KEY_MODE=644 scripts/dev-certs.sh deploy/tls localhost 127.0.0.1 ::1 lb

## The same two images from the debug binaries `cargo test` builds anyway, with
## the shared libraries they link (for make test: one build of Pingora, not two;
## the end-to-end tests check the setups, not the optimiser).
test-images: deps
	$(CARGO) build --workspace --bins
	@scripts/build-images.sh target/debug

## The seeds' experiments with one, two and four apps (issue 12) against real
## app and lb processes: writes docs/scenarios.md (tables, SVG charts) and
## target/scenarios/results.json, then prints the seeds' criteria, met or not.
## About 15 min; SCENARIOS_QUICK=1: the same capacities, ~4 min.
SCENARIOS_QUICK ?= 0
scenarios: build
	@scripts/deps.sh scenarios
	SCENARIOS_QUICK=$(SCENARIOS_QUICK) python3 scripts/scenarios.py
	@python3 scripts/scenarios-report.py target/scenarios/results.json

## lb vs nginx on loopback (needs wrk and nginx: apt-get install wrk nginx).
bench: build
	@scripts/bench.sh

## lb side by side with nginx and HAProxy, one pinned worker each (issues 8, 22):
## req/s, latency, CPU and syscalls per request, memory with 10,000 idle
## connections, a fixed-rate run, threads = 2, 100 MiB downloads and uploads, a new
## connection per request, latency added at 1,000 req/s, HTTPS, new TLS connections
## and HTTP/2. ~15 min. Installs nginx, haproxy, wrk, h2load when missing (root);
## writes target/bench-peers.md. BENCH_ROWS=download,upload,... picks rows;
## BENCH_QUICK=1: one 3 s round; see the script for knobs.
bench-peers: build
	@scripts/bench-peers.sh

## Instructions per proxied request (issue 22) on lb's HTTP/1 path and the
## Pingora path: 2,000 keep-alive GETs minus a run with none, counted by
## callgrind (or perf stat where the VM exposes counters): a per-request cost
## that shows a regression in one run on a noisy machine. ~15 s; writes
## target/bench-instructions.md. BENCH_INSTR_REQUESTS, BENCH_INSTR_RUNS.
bench-instructions: build
	@scripts/bench-instructions.sh

## Cross-thread wake-ups per request (issue 22): lb with 2 threads under wrk,
## keep-alive and a new connection per request, wake-ups recorded with
## perf sched:sched_wakeup; target/bench-wakeups.md. BENCH_WAKE_SECONDS,
## BENCH_WAKE_THREADS.
bench-wakeups: build
	@scripts/bench-wakeups.sh

## lb, nginx and HAProxy under abuse (SPEC): normal clients' p50/p99, errors and
## req/s with 2,000 slowloris connections, with 200 slow readers and at 10x a
## capped backend's capacity, against their own baseline; the balancer's RSS and
## CPU. Installs nginx, haproxy, wrk when missing (root); writes
## target/bench-abuse.md. BENCH_QUICK=1: one 5 s round; see the script for knobs.
bench-abuse: build
	@scripts/bench-abuse.sh

## The seeds' capacity experiment (issue 10): one app that refuses beyond 50
## concurrent requests, 100 clients for 30 s through lb, without and with
## max_in_flight = 50 + the queue: error rate, req/s, p50/p95/p99 (needs wrk).
bench-queue: build
	@scripts/bench-queue.sh

## testssl.sh against lb's HTTPS and against nginx (Debian's TLS defaults, HTTP/2)
## serving the same certificate, on loopback (issue 19): the checks side by side;
## exits 1 naming any finding lb shows that nginx doesn't. Installs testssl.sh and
## nginx when missing; builds target/release/lb when missing; 3-5 min; writes
## target/tls-audit.md. TLS_AUDIT_KEY=rsa: an RSA certificate instead of P-256.
tls-audit: deps
	@scripts/deps.sh tls-audit
	@scripts/tls-audit.sh

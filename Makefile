# Nexus-rs. `make run` starts a single node with its defaults; `make test` runs everything CI runs.
SHELL := /bin/bash

# Build output lives outside the clone so fresh clones (and CI) reuse earlier builds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/nexus-rs/target
# Link Debian's packaged RocksDB instead of compiling it (~2 min instead of ~29 min).
export ROCKSDB_LIB_DIR ?= /usr/lib/$(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

ARGS ?=

.PHONY: deps test-deps build run install release cluster test interop chaos bench bench-cluster compare deploy-check lint fmt clean-data

deps:
	@./scripts/deps.sh

# What the tests need on top: Chromium and chromedriver for the dashboard test.
test-deps:
	@./scripts/deps.sh --test

build: deps
	cargo build --release

## Build and start one node: tcp://127.0.0.1:1717, ws/http://127.0.0.1:8080, data in ./data.
run: build
	$(CARGO_TARGET_DIR)/release/nexus serve $(ARGS)

## Put the release `nexus` on the PATH: $(PREFIX)/bin (as root), or
## make install PREFIX=~/.local.
PREFIX ?= /usr/local
install: build
	install -D -m 755 $(CARGO_TARGET_DIR)/release/nexus $(DESTDIR)$(PREFIX)/bin/nexus
	@echo "installed $(DESTDIR)$(PREFIX)/bin/nexus: $$($(DESTDIR)$(PREFIX)/bin/nexus --version)"

## A release: dist/nexus-VERSION-ARCH-linux.tar.gz (+ .sha256) and the image nexus-rs:VERSION
## where Docker runs (CHANGELOG.md: versions and tags).
release: deps
	./scripts/release.sh

## Three local nodes forming one cluster (ports 1717-1719, 8080-8082; data in ./data-cluster).
cluster: build
	./scripts/cluster.sh $(ARGS)

## The whole suite: formatting, clippy, unit and integration tests, pynexus2 interop, and
## the deploy files (make deploy-check).
test: test-deps lint
	@# The previous release, for the rolling-upgrade test: built once per machine, before the
	@# tests start, so that its build does not compete with them for the cores.
	./scripts/previous-release.sh >/dev/null
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi
	./scripts/interop.sh
	./scripts/check-deploy.sh

## Ten minutes of mixed faults (kill, leader kill, pause, isolation as root) against a fresh
## 3-node release cluster, with the history checked; exits non-zero on any violation.
## More: make chaos ARGS="--duration 30m --seed 9". Results: docs/reliability.md.
chaos: build
	$(CARGO_TARGET_DIR)/release/nexus chaos --duration 10m --seed 7 $(ARGS)

## Throughput and latency of a fresh release node (figures: docs/benchmarks.md).
bench: deps
	./scripts/bench.sh

## A fresh 3-node release cluster: task round trips over all nodes, failover, catch-up.
bench-cluster: deps
	./scripts/bench-cluster.sh

## Nexus-rs side by side with NATS JetStream and NATS core in one run (installs
## nats-server); prints the table of docs/benchmarks.md. More: make compare ARGS=out-dir.
compare: deps
	./scripts/compare.sh $(ARGS)

## Validate deploy/ (compose, Kubernetes manifests, systemd unit; the image and a 3-node
## compose smoke test where Docker runs).
deploy-check:
	./scripts/check-deploy.sh

## A real node driven by the published Python client pynexus2.
interop: deps
	./scripts/interop.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean-data:
	rm -rf ./data ./data-cluster ./dist

#!/usr/bin/env bash
# Runs every test (unit and end-to-end) from the release build and ends with
# one summary line, "N passed, N failed", over all test binaries.
set -euo pipefail

furnace=${FURNACE_BIN_DIR:?}/furnace
# How long each phase took, to stderr, so a slow run shows where it went.
phase() { echo "test.sh: $1 done at ${SECONDS} s" >&2; }
export FURNACE_KERNEL_DIR
FURNACE_KERNEL_DIR=$("$furnace" guest fetch-kernel)
phase "the guest kernel"

# The images the end-to-end tests run under io.furnace.v1, built from our Dockerfiles.
bash scripts/images.sh
phase "the images"
# crictl, etcd and Kubernetes from their Go modules (cached per version), for
# the CRI and Kubernetes tests.
bash scripts/go-tools.sh all
phase "the Go-built peers"

log=$(mktemp /tmp/furnace-test.XXXXXX)
status=0
# Libraries, binaries and test targets; the benches (compiled by `make build`)
# run only under `make bench`: `--all-targets` would run the harness-less ones in full.
cargo test --release --workspace --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log" || status=$?
phase "cargo test"
# The Python SDK's own tests; Debian's python3 carries python3-protobuf.
/usr/bin/python3 -m unittest discover -s api/python/tests -v 2>&1 | tee -a "$log" || status=$?
phase "the Python SDK's tests"
# Every fuzz target for a bounded time, and every regression input once.
bash scripts/fuzz.sh 2>&1 | tee -a "$log" || status=$?
phase "the fuzz targets"
# Totals over cargo's "test result:" lines, unittest's per-test "... ok" lines
# and fuzz.sh's line per target.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     / \.\.\. ok$/ && /^test_/ { p++ }
     / \.\.\. (FAIL|ERROR)$/ && /^test_/ { f++ }
     /^fuzz [a-z_]+: [0-9]+ runs/ { p++ }
     /^fuzz [a-z_]+: (FAILED|a regression)/ { f++ }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"

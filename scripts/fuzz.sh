#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, docs/fuzzing.md) for FUZZ_SECONDS each,
# from the checked-in corpus (fuzz/corpus), the seeds fuzz/seeds writes and
# the corpus earlier runs on this machine grew, kept under
# /var/cache/furnace/fuzz; then every input in fuzz/regressions once.
# Prints one line per target: runs, runs per second, coverage, corpus size.
# A crash, leak, timeout or out-of-memory fails the run, and libFuzzer
# leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-25}
cache=/var/cache/furnace/fuzz
cargo_fuzz_version=0.13.2
tools=/var/cache/furnace/tools/cargo-fuzz-$cargo_fuzz_version
export PATH=$tools/bin:$PATH
# The fuzz workspace builds with sanitizers, which take nightly rustc. The
# machine's rustup has a nightly toolchain; where it has none, stable rustc
# is told to accept the -Z flags.
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=+nightly
else
    toolchain=
    export RUSTC_BOOTSTRAP=1
fi
# Built once per toolchain and kept between clones, as the release build is.
rustc_key=$(rustc $toolchain -vV | sed -n 's/^release: //p; s/^commit-date: //p' | paste -sd-)
export CARGO_TARGET_DIR=$cache/target-$rustc_key

if ! [ -x "$tools/bin/cargo-fuzz" ]; then
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version" --root "$tools"
fi

cd fuzz
cargo $toolchain fuzz build -O >/dev/null
seeds=$(mktemp -d /tmp/furnace-fuzz-seeds.XXXXXX)
trap 'rm -rf "$seeds"' EXIT
cargo $toolchain run --quiet --release -p furnace-fuzz-seeds -- "$seeds"

status=0
for target in $(cargo $toolchain fuzz list); do
    corpus=$cache/corpus/$target
    mkdir -p "$corpus" "artifacts/$target"
    log=$seeds/$target.log
    # New inputs go to the first directory; the others are read only.
    if ! timeout $((seconds + 120)) cargo $toolchain fuzz run -O "$target" \
        "$corpus" "corpus/$target" "$seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        echo "fuzz $target: FAILED; the input is in fuzz/artifacts/$target/" >&2
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$log" | head -20 >&2
        status=1
        continue
    fi
    awk -v target="$target" -v seconds="$seconds" '
        /stat::number_of_executed_units:/ { runs = $2 }
        /^#[0-9]+.*(DONE|pulse|NEW|REDUCE)/ { for (i = 1; i <= NF; i++) { if ($i == "cov:") cov = $(i+1); if ($i == "corp:") corp = $(i+1) } }
        END { printf "fuzz %s: %d runs in %d s (%.0f/s), cov %s, corpus %s\n", target, runs, seconds, runs / seconds, cov, corp }
    ' "$log"
done

# Inputs that once crashed a target, each kept beside the fix.
for dir in regressions/*/; do
    [ -d "$dir" ] || continue
    target=$(basename "$dir")
    if ! cargo $toolchain fuzz run -O "$target" "$dir"* -- -runs=1 >"$seeds/regressions.log" 2>&1; then
        echo "fuzz $target: a regression input fails again" >&2
        tail -20 "$seeds/regressions.log" >&2
        status=1
    fi
done
exit "$status"

#!/usr/bin/env bash
# Builds containerd-shim-furnace-v1 as it is installed and tested: optimised
# for size and statically linked (it stays resident for every task; see
# docs/benchmarks.md), into target/furnace-shim/, next to a link to its launch
# helper (target/release/furnace-launch-helper, which links libcontainer and
# runs only per request), furnace-init, the PID 1 of every app partition
# (static too: it runs inside the app's image, which may have another libc
# or none), and furnace-fac-relay, the facilities relay (static: its
# partition's root filesystem is empty). Prints the directory. Safe to run again: cargo rebuilds only what
# changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=x86_64-unknown-linux-gnu
out=$root/target/furnace-shim

# An explicit --target keeps this static build apart from target/release.
# Without the launch-helper feature the shim links no libcontainer (nor its
# libseccomp, a shared library a static binary cannot take).
# RELR packs the relative relocations a static PIE applies to itself at
# start: 24k of them, read in full, otherwise.
# The init is built with the same flags, so neither build undoes the other's.
static_flags="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
RUSTFLAGS=$static_flags \
    cargo build --profile shim --target "$target" --no-default-features \
    -p containerd-shim-furnace-v1 --bin containerd-shim-furnace-v1 >&2
RUSTFLAGS=$static_flags \
    cargo build --profile shim --target "$target" -p furnace-init --bin furnace-init >&2
RUSTFLAGS=$static_flags \
    cargo build --profile shim --target "$target" -p furnace-fac --bin furnace-fac-relay >&2
cargo build --release -p containerd-shim-furnace-v1 --bin furnace-launch-helper >&2

shim=$root/target/$target/shim/containerd-shim-furnace-v1
init=$root/target/$target/shim/furnace-init
relay=$root/target/$target/shim/furnace-fac-relay
for binary in "$shim" "$init" "$relay"; do
    ldd "$binary" 2>&1 | grep -qE 'not a dynamic executable|statically linked' ||
        { echo "$binary is not statically linked" >&2; exit 1; }
done
mkdir -p "$out"
install -m 0755 "$shim" "$out/containerd-shim-furnace-v1"
install -m 0755 "$init" "$out/furnace-init"
install -m 0755 "$relay" "$out/furnace-fac-relay"
ln -sfn ../release/furnace-launch-helper "$out/furnace-launch-helper"
echo "$out"

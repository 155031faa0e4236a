#!/usr/bin/env bash
# The demo: boot a real Debian guest under QEMU, read its process list from
# outside (no agent inside), and set it beside the guest's own `ps`.
set -euo pipefail

furnace=${FURNACE:-target/release/furnace}
name=furnace-demo
root=/run/furnace/guests
log_dir=$(mktemp -d /tmp/furnace-demo.XXXXXX)

step() { printf '\n== %s\n' "$*"; }
cleanup() { "$furnace" guest down "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

run_step() {
    local label=$1; shift
    local log="$log_dir/${label// /-}.log"
    local start=$SECONDS
    if ! "$@" >"$log" 2>&1; then
        echo "FAILED: $label (log: $log)" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    printf '   %-40s %3ds\n' "$label" $((SECONDS - start))
}

cleanup
step "Boot the guest (Debian cloud kernel under QEMU/TCG)"
run_step "boot guest $name" "$furnace" guest up "$name"
dir="$root/$name"

step "What VMI reads from outside the guest"
"$furnace" vmi info --guest-dir "$dir"
echo
"$furnace" vmi ps --guest-dir "$dir" | tee "$log_dir/vmi-ps.txt"

step "What the guest's own ps says"
"$furnace" guest ps "$name" | tee "$log_dir/guest-ps.txt"

# Compare (pid, name). The guest's ps names workqueue workers with their
# current queue ("kworker/0:1-events"); the task's own comm is the part before '-'.
awk 'NR>1 {print $1, $4}' "$log_dir/vmi-ps.txt" | sort >"$log_dir/vmi.set"
awk 'NR>1 {n=$4; if (n ~ /^kworker\//) sub(/-.*/, "", n); print $1, n}' "$log_dir/guest-ps.txt" | sort >"$log_dir/guest.set"
step "Verdict"
if diff -u "$log_dir/guest.set" "$log_dir/vmi.set"; then
    echo "MATCH: $(wc -l <"$log_dir/vmi.set") processes, read from outside, equal the guest's own ps"
else
    echo "MISMATCH (logs in $log_dir)"
    exit 1
fi

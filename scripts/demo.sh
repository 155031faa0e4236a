#!/usr/bin/env bash
# `make demo`: the whole Furnace flow on one machine, real parts only.
# A Debian guest boots under QEMU, its VMI sidecar starts, the tenant's
# backend (`furnace backend`) starts in a network namespace of its own behind
# a veth pair (a remote tenant, on this one machine), containerd runs the
# example app furnace/ps:dev under io.furnace.v1 with that backend, and what
# the backend received, sealed end to end through the app's facilities relay,
# is set beside the guest's own ps, with a verdict.
#
# Each step prints one line with its time; its output goes to a log, named
# when the step fails. Everything started here is stopped on exit, by pid.
# Safe to run again: a previous run's leftovers are cleaned up first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
bin=$root/target/release
shim_dir=$root/target/furnace-shim
furnace=$bin/furnace
guest=furnace-demo
guest_dir=/run/furnace/guests/$guest
work=/run/furnace-demo
namespace=furnace-demo
app_id=demo-ps
system_containerd=/run/containerd/containerd.sock
log_dir=$(mktemp -d /tmp/furnace-demo.XXXXXX)
# The tenant's network: 10.213.0.2 in its namespace, 10.213.0.1 on the host.
tenant_ns=furnace-demo-tenant
tenant_link=furnace-demo0
backend_address=10.213.0.2:7000
# Under the provider's key_root (default /etc/furnace/keys), where the shim
# takes app keys from.
keys=/etc/furnace/keys/furnace-demo

containerd_address=
containerd_pid=
sidecar_pid=
backend_pid=

say() { printf '%s\n' "$*"; }

run_step() {
    local label=$1; shift
    local log="$log_dir/$(tr ' /' '--' <<<"$label").log"
    local start=$SECONDS
    printf '   %-52s' "$label"
    if ! "$@" >"$log" 2>&1; then
        printf 'FAILED after %ds\n' $((SECONDS - start))
        say "FAILED: $label (log: $log)" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    printf '%4ds\n' $((SECONDS - start))
}

ctr_demo() { ctr --address "$containerd_address" --namespace "$namespace" "$@"; }

stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
    if [ -n "$containerd_address" ] && [ -S "$containerd_address" ]; then
        ctr_demo --timeout 20s task kill -s SIGKILL "$app_id" >/dev/null 2>&1 || true
        ctr_demo --timeout 20s task delete "$app_id" >/dev/null 2>&1 || true
        ctr_demo --timeout 20s container delete "$app_id" >/dev/null 2>&1 || true
    fi
    stop_pid "$sidecar_pid"
    stop_pid "$backend_pid"
    # A previous run's private containerd, sidecar and backend, by the pids they left.
    local file
    for file in "$work/containerd.pid" "$work/sidecar.pid" "$work/backend.pid"; do
        [ -f "$file" ] && stop_pid "$(cat "$file")"
    done
    if [ -d "$work" ]; then
        grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf "$work"
    fi
    rm -rf "$keys"
    ip netns del "$tenant_ns" 2>/dev/null || true
    ip link del "$tenant_link" 2>/dev/null || true
    "$furnace" guest down "$guest" >/dev/null 2>&1 || true
}
trap cleanup EXIT

build() {
    cargo build --release --workspace --bins
    bash scripts/build-shim.sh
}

start_sidecar() {
    "$bin/furnace-vmi-sidecar" --guest "$guest" --guest-dir "$guest_dir" >"$log_dir/sidecar.log" 2>&1 &
    sidecar_pid=$!
    echo "$sidecar_pid" >"$work/sidecar.pid"
    wait_answer "the sidecar" "$sidecar_pid" "$log_dir/sidecar.log" "$furnace" sidecar --guest "$guest" health
}

# wait_answer WHAT PID LOG COMMAND...: until COMMAND succeeds (printing its
# answer), for at most 10 s, or until process PID (which logs to LOG) exits.
wait_answer() {
    local what=$1 pid=$2 log=$3 i
    shift 3
    for i in $(seq 100); do
        "$@" >/dev/null 2>&1 && { "$@"; return; }
        kill -0 "$pid" 2>/dev/null || { echo "$what exited; see $log"; return 1; }
        sleep 0.1
    done
    echo "$what did not answer within 10 s; see $log"
    return 1
}

# A running containerd that finds containerd-shim-furnace-v1 on its PATH.
system_containerd_serves_furnace() {
    [ -S "$system_containerd" ] || return 1
    local pid dir path
    pid=$(pgrep -xo containerd) || return 1
    path=$(tr '\0' '\n' </proc/"$pid"/environ | sed -n 's/^PATH=//p')
    IFS=: read -ra dirs <<<"${path:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"
    for dir in "${dirs[@]}"; do
        [ -x "$dir/containerd-shim-furnace-v1" ] && return 0
    done
    return 1
}

start_private_containerd() {
    # 0700 root, as a provider's containerd directories may well be.
    mkdir -m 0700 "$work/root" "$work/state"
    cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
EOF
    # The shim and its launch helper come first on containerd's PATH.
    PATH=$shim_dir:$bin:$PATH containerd --config "$work/config.toml" >"$log_dir/containerd.log" 2>&1 &
    containerd_pid=$!
    echo "$containerd_pid" >"$work/containerd.pid"
    wait_answer containerd "$containerd_pid" "$log_dir/containerd.log" ctr --address "$containerd_address" version
}

start_tenant_network() {
    ip netns add "$tenant_ns"
    ip link add "$tenant_link" type veth peer name tenant0
    ip link set tenant0 netns "$tenant_ns"
    ip addr add 10.213.0.1/30 dev "$tenant_link"
    ip link set "$tenant_link" up
    ip netns exec "$tenant_ns" ip addr add 10.213.0.2/30 dev tenant0
    ip netns exec "$tenant_ns" ip link set tenant0 up
    ip netns exec "$tenant_ns" ip link set lo up
    ip -brief addr show "$tenant_link"
}

# The backend's key and the app's. The app's stays root's alone: the shim
# hands the app a copy owned by the host uid it gives that app.
make_keys() {
    mkdir -p -m 0700 "$keys"
    "$furnace" keygen "$keys/backend"
    "$furnace" keygen "$keys/$app_id"
}

start_backend() {
    ip netns exec "$tenant_ns" "$furnace" backend --listen "$backend_address" \
        --key "$keys/backend.key" --allow "$keys/$app_id.pub" \
        >"$log_dir/backend.jsonl" 2>"$log_dir/backend.log" &
    backend_pid=$!
    echo "$backend_pid" >"$work/backend.pid"
    wait_answer "furnace backend" "$backend_pid" "$log_dir/backend.log" \
        ip netns exec "$tenant_ns" bash -c "exec 3<>/dev/tcp/${backend_address%:*}/${backend_address#*:}"
}

run_app() {
    : >"$log_dir/backend.jsonl"
    ctr_demo run --rm --runtime io.furnace.v1 --annotation "furnace.dev/guest=$guest" \
        --annotation "furnace.dev/backend=$backend_address" \
        --annotation "furnace.dev/backend-key=$(cat "$keys/backend.pub")" \
        --annotation "furnace.dev/app-key=$keys/$app_id.key" \
        furnace/ps:dev "$app_id" >"$log_dir/app-ps.txt"
    # The app returns once the backend confirmed; its line is printed by then.
    /usr/bin/python3 -c '
import json, sys
got = [m for m in map(json.loads, open(sys.argv[1])) if m.get("app") == sys.argv[2] and m.get("type") == "notify"]
if not got:
    sys.exit("the backend received nothing from " + sys.argv[2])
sys.stdout.write(got[-1]["data"])' "$log_dir/backend.jsonl" "$app_id" >"$log_dir/backend-ps.txt"
    cat "$log_dir/backend-ps.txt"
}

# (pid, name) of each process. The guest's ps names workqueue workers with
# their current queue ("kworker/0:1-events"); the task's comm is the part before '-'.
app_set() { awk 'NR>1 {print $1, $4}' "$1" | sort; }
guest_set() { awk 'NR>1 {n=$4; if (n ~ /^kworker\//) sub(/-.*/, "", n); print $1, n}' "$1" | sort; }

say "Furnace demo (logs in $log_dir)"
cleanup
mkdir -p "$work"
say "== Set up"
run_step "install packages (scripts/install-deps.sh)" bash scripts/install-deps.sh
run_step "build (cargo --release, static shim)" build
run_step "fetch the guest kernel, -dbg and ISF profile" "$furnace" guest fetch-kernel
run_step "boot the guest $guest (QEMU/TCG)" "$furnace" guest up "$guest"
run_step "start its VMI sidecar" start_sidecar
run_step "the tenant's network: namespace and veth" start_tenant_network
run_step "keys: furnace keygen backend, $app_id" make_keys
run_step "start furnace backend in the tenant network" start_backend
if system_containerd_serves_furnace; then
    containerd_address=$system_containerd
    run_step "use the running containerd" ctr --address "$containerd_address" version
else
    containerd_address=$work/containerd.sock
    run_step "start a private containerd"  start_private_containerd
fi
run_step "build the images (buildah) and import them" \
    env CONTAINERD_ADDRESS="$containerd_address" CONTAINERD_NAMESPACE="$namespace" bash scripts/images.sh --import

say ""
say "== ctr run --rm --runtime io.furnace.v1 --annotation furnace.dev/guest=$guest"
say "       --annotation furnace.dev/backend=$backend_address --annotation furnace.dev/backend-key=…"
say "       --annotation furnace.dev/app-key=$keys/$app_id.key furnace/ps:dev $app_id"
verdict=MISMATCH
for attempt in 1 2 3; do
    run_step "run the ps app in its partition (attempt $attempt)" run_app
    "$furnace" guest ps "$guest" >"$log_dir/guest-ps.txt"
    app_set "$log_dir/backend-ps.txt" >"$log_dir/app.set"
    cmp -s "$log_dir/app-ps.txt" "$log_dir/backend-ps.txt" ||
        { say "the backend received other bytes than the app printed"; exit 1; }
    guest_set "$log_dir/guest-ps.txt" >"$log_dir/guest.set"
    # Kernel workers may come and go between the two looks: look again.
    if diff -q "$log_dir/guest.set" "$log_dir/app.set" >/dev/null; then verdict=MATCH; break; fi
done

say ""
# Side by side: the PID, PPID, UID and NAME columns the tenant's backend
# received from the app, then the guest's own ps.
paste -d '|' <(cut -c1-40 "$log_dir/backend-ps.txt") "$log_dir/guest-ps.txt" |
    awk -F'|' 'BEGIN { printf "%-44s %s\n", "The tenant backend received (VMI, sealed):", "The guest'"'"'s own ps:" }
               { printf "%-44s %s\n", $1, $2 }'
say ""
if [ "$verdict" = MATCH ]; then
    say "MATCH: the $(wc -l <"$log_dir/app.set") processes the app read from outside the guest, and sent sealed to the tenant's backend, are the guest's own ps (pid and name)"
else
    say "MISMATCH: (pid, name) only in the guest's ps (-) or only in the app's view (+):"
    diff -u "$log_dir/guest.set" "$log_dir/app.set" | tail -n +3 || true
    say "logs in $log_dir"
    exit 1
fi

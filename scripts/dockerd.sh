# A Docker engine for building images, sourced by scripts/images.sh.
#
# docker_engine_up sets DOCKER_HOST and DOCKER to an engine that answers:
# DOCKER_HOST's (default unix:///var/run/docker.sock) if one does, else a
# private dockerd started here, Debian's docker.io engine as the machines
# run it: its own data root (/var/lib/furnace/docker, kept, so its images
# are there at the next start), its own socket and exec root
# (/run/furnace-docker), no iptables, no bridge, and the containerd at
# CONTAINERD_ADDRESS when one answers there (else dockerd starts its own).
# docker_engine_down stops only a dockerd started here, by pid.

DOCKER=${DOCKER:-/usr/bin/docker}
furnace_docker_root=${FURNACE_DOCKER_ROOT:-/var/lib/furnace/docker}
furnace_docker_run=${FURNACE_DOCKER_RUN:-/run/furnace-docker}
furnace_dockerd_pid=

docker_answers() { "$DOCKER" -H "$1" version >/dev/null 2>&1; }

docker_engine_up() {
    [ -x "$DOCKER" ] || { echo "images: $DOCKER is missing (apt-get install docker.io; scripts/install-deps.sh does)" >&2; return 1; }
    local host=${DOCKER_HOST:-unix:///var/run/docker.sock}
    if docker_answers "$host"; then
        export DOCKER_HOST=$host
        return 0
    fi
    local containerd=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock} with_containerd=() i
    if [ -S "$containerd" ] && ctr --address "$containerd" --connect-timeout 1s version >/dev/null 2>&1; then
        with_containerd=(--containerd "$containerd")
    fi
    mkdir -p "$furnace_docker_root" "$furnace_docker_run"
    host=unix://$furnace_docker_run/docker.sock
    dockerd --data-root "$furnace_docker_root" --exec-root "$furnace_docker_run/exec" \
        -H "$host" --pidfile "$furnace_docker_run/docker.pid" \
        --iptables=false --bridge=none "${with_containerd[@]}" \
        >>"$furnace_docker_run/dockerd.log" 2>&1 &
    furnace_dockerd_pid=$!
    for i in $(seq 150); do
        if docker_answers "$host"; then
            export DOCKER_HOST=$host
            return 0
        fi
        kill -0 "$furnace_dockerd_pid" 2>/dev/null || break
        sleep 0.2
    done
    echo "images: dockerd did not answer on $host within 30 s; log: $furnace_docker_run/dockerd.log" >&2
    tail -n 20 "$furnace_docker_run/dockerd.log" >&2 || true
    docker_engine_down
    return 1
}

docker_engine_down() {
    local pid=$furnace_dockerd_pid i
    [ -n "$pid" ] || return 0
    furnace_dockerd_pid=
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

#!/usr/bin/env bash
# Builds our images as OCI archives: target/images/<name>.tar, tagged
# furnace/<name>:dev inside.
#
# Usage: scripts/images.sh [--stage] [--import] [--docker] [NAME...]
#   NAME...   images to build, with the furnace/* images they are built FROM
#             (default: every directory with a Dockerfile under tests/images/,
#             oci-images/ and k8s/)
#   --stage   only stage the build contexts, for `docker build`:
#             docker build -t furnace/NAME:dev target/images/context/NAME
#   --import  also import every archive into containerd (CONTAINERD_ADDRESS,
#             default /run/containerd/containerd.sock; CONTAINERD_NAMESPACE,
#             default "default") as furnace/<name>:dev
#   --docker  also build every image with `docker build` into a Docker
#             engine, so that a tenant's `FROM furnace/python:dev` builds
#             there: the engine at DOCKER_HOST (default
#             unix:///var/run/docker.sock) if it answers, else a private one
#             this script starts (scripts/dockerd.sh) and stops again, whose
#             images stay in its data root for the next start.
#
# Each image's build context is staged in target/images/context/<name>/:
# its directory, plus what a Dockerfile cannot fetch without a registry
# (static binaries built here, Debian packages through `apt-get download`).
# When the context's hash, and those of the images it is built FROM, match
# target/images/<name>.sha256 and the image exists, buildah is skipped.
# Installs nothing: buildah comes from scripts/install-deps.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
out=$root/target/images
target=x86_64-unknown-linux-gnu
busybox=${BUSYBOX:-/bin/busybox}
# The applets the probe image links to busybox.
applets=(sh true echo cat sleep ls id)
deb_cache=${FURNACE_DEB_CACHE:-/var/cache/furnace/debs}
# furnace/python: the interpreter, the standard library's compiled modules'
# libraries, protobuf with its C++ runtime, and cryptography (the facilities
# client's X25519 and ChaCha20-Poly1305). Nothing that needs a terminal.
python_packages=(
    python3-minimal python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    python3-protobuf libprotobuf32 python3-cryptography python3-cffi-backend libstdc++6 libgcc-s1
    libc6 libexpat1 zlib1g libssl3 libffi8 libbz2-1.0 liblzma5 libuuid1 libcrypt1
)

die() { echo "images: $*" >&2; exit 1; }

stage_only=false
import=false
docker=false
names=()
for arg in "$@"; do
    case $arg in
        --stage) stage_only=true ;;
        --import) import=true ;;
        --docker) docker=true ;;
        -*) die "unknown option $arg (usage: scripts/images.sh [--stage] [--import] [--docker] [NAME...])" ;;
        *) names+=("$arg") ;;
    esac
done

$stage_only || command -v buildah >/dev/null ||
    die "buildah is missing (scripts/install-deps.sh installs it; or: apt-get install buildah)"

image_dir() {
    local d
    for d in tests/images oci-images k8s; do
        if [ -f "$d/$1/Dockerfile" ]; then echo "$d/$1"; return; fi
    done
    return 1
}

# The furnace/* images a Dockerfile is built FROM.
bases_of() {
    sed -nE 's|^FROM[[:space:]]+furnace/([a-z0-9-]+):dev.*|\1|p' "$(image_dir "$1")/Dockerfile"
}

if [ ${#names[@]} -eq 0 ]; then
    for dockerfile in tests/images/*/Dockerfile oci-images/*/Dockerfile k8s/*/Dockerfile; do
        [ -f "$dockerfile" ] && names+=("$(basename "$(dirname "$dockerfile")")")
    done
fi
[ ${#names[@]} -gt 0 ] || die "no images found under tests/images/, oci-images/ or k8s/"

# Bases before the images built on them.
order=()
declare -A placed=() visiting=()
place() {
    local name=$1 base
    [ -n "${placed[$name]:-}" ] && return
    [ -n "${visiting[$name]:-}" ] && die "the Dockerfiles' FROM lines loop through $name"
    image_dir "$name" >/dev/null || die "no image $name (tests/images/$name/Dockerfile, oci-images/$name/Dockerfile or k8s/$name/Dockerfile)"
    visiting[$name]=1
    for base in $(bases_of "$name"); do place "$base"; done
    placed[$name]=1
    order+=("$name")
}
for name in "${names[@]}"; do place "$name"; done

# ldd fails on a static executable that is not PIE: judge by its words only.
is_static() {
    local says
    says=$(ldd "$1" 2>&1 || true)
    grep -qE 'not a dynamic executable|statically linked' <<<"$says"
}

# The package an image's Cargo.toml builds (its binary has the same name).
crate_of() {
    local dir
    dir=$(image_dir "$1")
    if [ -f "$dir/Cargo.toml" ]; then
        sed -nE '0,/^name = "(.*)"/s//\1/p' "$dir/Cargo.toml"
    elif [ "$1" = probe ] || [ "$1" = pause ]; then
        echo furnace-probe
    fi
}

# Every static binary the images need, in one cargo run; an explicit
# --target keeps this static build apart from target/release.
crates=()
for name in "${order[@]}"; do
    crate=$(crate_of "$name")
    [ -n "$crate" ] && crates+=("$crate")
    # The node agent's image carries the sidecar it runs.
    [ "$name" = node-agent ] && crates+=(furnace-vmi)
done
build_static() {
    [ ${#crates[@]} -gt 0 ] || return 0
    local args=() crate
    for crate in "${crates[@]}"; do args+=(-p "$crate"); done
    # libseccomp (the sidecar's worker filter) from Debian's static archive.
    LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
        RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target" "${args[@]}"
}
static_binary() {
    local bin=$root/target/$target/release/$1
    is_static "$bin" || { echo "$bin is not statically linked" >&2; return 1; }
    echo "$bin"
}

# A root filesystem of busybox and its applet links.
stage_busybox() {
    local rootfs=$1/rootfs
    is_static "$busybox" || { echo "$busybox is not statically linked (install busybox-static)" >&2; return 1; }
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/mnt"
    chmod 1777 "$rootfs/tmp"
    cp "$busybox" "$rootfs/bin/busybox"
    local applet
    for applet in "${applets[@]}"; do
        ln -s busybox "$rootfs/bin/$applet"
    done
}

stage_probe() {
    stage_busybox "$1"
}

stage_node_agent() {
    strip -o "$1/furnace-vmi-sidecar" "$(static_binary furnace-vmi-sidecar)"
}

# The directories git cannot hold.
stage_base() {
    mkdir -p "$1/rootfs/tmp" "$1/rootfs/run/furnace"
    chmod 1777 "$1/rootfs/tmp"
}

# Debian's python3 and python3-protobuf unpacked from their .debs (cached in
# $deb_cache), without documentation, plus the SDK; then checked by importing
# the SDK with that root as /.
stage_python() {
    local rootfs=$1/rootfs package deb missing=()
    mkdir -p "$deb_cache" "$rootfs"
    for package in "${python_packages[@]}"; do
        compgen -G "$deb_cache/${package}_*.deb" >/dev/null || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        # As root, apt-get download warns unless _apt may write here.
        chown _apt "$deb_cache" 2>/dev/null || true
        # Stale apt lists name versions the mirror no longer has: refresh once.
        (cd "$deb_cache" && apt-get download "${missing[@]}") ||
            { apt-get update -qq && (cd "$deb_cache" && apt-get download "${missing[@]}"); }
    fi
    for package in "${python_packages[@]}"; do
        for deb in "$deb_cache/${package}"_*.deb; do dpkg-deb -x "$deb" "$rootfs"; done
    done
    rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/lintian" "$rootfs/usr/share/locale"
    local site=$rootfs/usr/lib/python3/dist-packages
    cp -r api/python/furnace_vmi "$site/"
    find "$site/furnace_vmi" -name __pycache__ -prune -exec rm -rf {} +
    chroot "$rootfs" /usr/bin/python3 -c 'import furnace_vmi, furnace_vmi.facilities, furnace_vmi.backend, google.protobuf; print("python", __import__("sys").version.split()[0], "protobuf", google.protobuf.__version__)'
}

# Over names, types, modes, link targets and contents; not timestamps.
context_hash() {
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C "$1" . | sha256sum | cut -d' ' -f1
}

stage() {
    local name=$1 context=$2 crate hook
    rm -rf "$context"
    mkdir -p "$context"
    cp -a "$(image_dir "$name")/." "$context/"
    rm -rf "$context/src" "$context/tests" "$context/Cargo.toml"
    crate=$(crate_of "$name")
    if [ -n "$crate" ]; then strip -o "$context/$crate" "$(static_binary "$crate")"; fi
    hook=stage_${name//-/_}
    if declare -F "$hook" >/dev/null; then "$hook" "$context"; fi
}

current=
log=
started=$SECONDS
# The steps below write to the image's log; a failure exits from there, so
# the report goes to the stderr saved here.
exec 3>&2
report_failure() {
    local status=$?
    if declare -F docker_engine_down >/dev/null; then docker_engine_down; fi
    if [ "$status" -ne 0 ] && [ -n "$current" ]; then
        echo "images: $current FAILED after $((SECONDS - started))s; log: ${log#"$root"/}" >&3
        tail -n 20 "$log" >&3 || true
    fi
}
trap report_failure EXIT

declare -A hash_of=()
mkdir -p "$out/context"
current="the static binaries"
log=$out/static.log
build_static >"$log" 2>&1
for name in "${order[@]}"; do
    current=$name
    started=$SECONDS
    log=$out/$name.log
    context=$out/context/$name
    tar_file=$out/$name.tar
    tag=localhost/furnace/$name:dev
    : >"$log"
    stage "$name" "$context" >>"$log" 2>&1
    if $stage_only; then
        printf 'images: %-14s staged        %3ds  %s\n' "$name" $((SECONDS - started)) "${context#"$root"/}"
        continue
    fi
    hash=$(context_hash "$context")
    for base in $(bases_of "$name"); do
        hash=$(echo "$hash ${hash_of[$base]}" | sha256sum | cut -d' ' -f1)
    done
    hash_of[$name]=$hash
    if [ -f "$tar_file" ] && [ "$(cat "$out/$name.sha256" 2>/dev/null)" = "$hash" ] &&
        buildah inspect --type image "$tag" >/dev/null 2>&1; then
        echo "context $hash unchanged since $tar_file was built: buildah skipped" >>"$log"
        printf 'images: %-14s up to date    %3ds  %s\n' "$name" $((SECONDS - started)) "${tar_file#"$root"/}"
        continue
    fi
    {
        rm -f "$out/$name.sha256" "$tar_file" "$tar_file.tmp"
        buildah rmi -f "$tag" 2>/dev/null || true
        # --pull=never: a FROM names one of our images, built above, or scratch.
        buildah bud --isolation chroot --layers=false --pull=never -t "$tag" -f "$context/Dockerfile" "$context"
        buildah push "$tag" "oci-archive:$tar_file.tmp:furnace/$name:dev"
        mv "$tar_file.tmp" "$tar_file"
        echo "$hash" >"$out/$name.sha256"
    } >>"$log" 2>&1
    printf 'images: %-14s built         %3ds  %s (%s)\n' "$name" $((SECONDS - started)) \
        "${tar_file#"$root"/}" "$(du -h "$tar_file" | cut -f1)"
done
current=

# `docker load` of buildah's OCI archives fails on Docker 20.10, and the
# Dockerfiles have no RUN step: the engine builds the same staged contexts.
if $docker && ! $stage_only; then
    # shellcheck source=scripts/dockerd.sh
    source scripts/dockerd.sh
    docker_order=("${order[@]}")
    if ! docker_engine_up; then
        echo "images: no Docker engine could be had: the OCI archives above are built (buildah); docker build skipped" >&2
        docker_order=()
    fi
    for name in "${docker_order[@]}"; do
        current="$name (docker build)"
        log=$out/$name.docker.log
        started=$SECONDS
        DOCKER_BUILDKIT=0 "$DOCKER" build -t "furnace/$name:dev" "$out/context/$name" >"$log" 2>&1
        printf 'images: %-14s docker built  %3ds  furnace/%s:dev (%s)\n' "$name" $((SECONDS - started)) "$name" "$DOCKER_HOST"
    done
    current=
fi

$import || exit 0
address=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
namespace=${CONTAINERD_NAMESPACE:-default}
if [ ! -S "$address" ]; then
    echo "images: no containerd at $address; import by hand: ctr images import target/images/NAME.tar"
    exit 0
fi
for name in "${order[@]}"; do
    current=$name
    log=$out/$name.log
    started=$SECONDS
    ctr --address "$address" --namespace "$namespace" images import "$out/$name.tar" >>"$log" 2>&1
    printf 'images: %-14s imported      %3ds  furnace/%s:dev (namespace %s)\n' "$name" $((SECONDS - started)) "$name" "$namespace"
done
current=

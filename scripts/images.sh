#!/usr/bin/env bash
# Builds the test images as OCI archives: target/images/<name>.tar, tagged
# furnace/<name>:dev inside. Usage: scripts/images.sh [NAME...] (default: every
# directory with a Dockerfile under tests/images/ and oci-images/).
#
# Each image's build context is staged in target/images/context/<name>/; when
# its hash matches target/images/<name>.sha256 and the archive exists, buildah
# is skipped, so a second run costs little more than a no-op cargo build.
# Installs nothing: buildah comes from scripts/install-deps.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
out=$root/target/images
target=x86_64-unknown-linux-gnu
busybox=${BUSYBOX:-/bin/busybox}
# The applets the images link to busybox.
applets=(sh true echo cat sleep ls id)

die() { echo "images: $*" >&2; exit 1; }

command -v buildah >/dev/null ||
    die "buildah is missing (scripts/install-deps.sh installs it; or: apt-get install buildah)"

image_dir() {
    local d
    for d in tests/images oci-images; do
        if [ -f "$d/$1/Dockerfile" ]; then echo "$d/$1"; return; fi
    done
    return 1
}

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for dockerfile in tests/images/*/Dockerfile oci-images/*/Dockerfile; do
        [ -f "$dockerfile" ] && names+=("$(basename "$(dirname "$dockerfile")")")
    done
fi
[ ${#names[@]} -gt 0 ] || die "no images found under tests/images/ or oci-images/"
for name in "${names[@]}"; do
    image_dir "$name" >/dev/null || die "no image $name (tests/images/$name/Dockerfile or oci-images/$name/Dockerfile)"
done

# ldd fails on a static executable that is not PIE: judge by its words only.
is_static() {
    local says
    says=$(ldd "$1" 2>&1 || true)
    grep -qE 'not a dynamic executable|statically linked' <<<"$says"
}

# Built at most once per run, by the first image that needs it.
probe_bin=
build_probe() {
    [ -n "$probe_bin" ] && return
    # An explicit --target keeps this static build apart from target/release.
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p furnace-probe --target "$target"
    probe_bin=$root/target/$target/release/furnace-probe
    is_static "$probe_bin" || { echo "$probe_bin is not statically linked" >&2; return 1; }
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

# Per-image staging, after the image's own directory is copied in.
stage_probe() {
    build_probe
    strip -o "$1/furnace-probe" "$probe_bin"
    stage_busybox "$1"
}

# Over names, types, modes, link targets and contents; not timestamps.
context_hash() {
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - -C "$1" . | sha256sum | cut -d' ' -f1
}

current=
log=
started=$SECONDS
# The steps below write to the image's log; a failure exits from there, so
# the report goes to the stderr saved here.
exec 3>&2
report_failure() {
    local status=$?
    if [ "$status" -ne 0 ] && [ -n "$current" ]; then
        echo "images: $current FAILED after $((SECONDS - started))s; log: ${log#"$root"/}" >&3
        tail -n 20 "$log" >&3 || true
    fi
}
trap report_failure EXIT

mkdir -p "$out/context"
for name in "${names[@]}"; do
    current=$name
    started=$SECONDS
    log=$out/$name.log
    context=$out/context/$name
    tar_file=$out/$name.tar
    tag=localhost/furnace/$name:dev
    : >"$log"
    {
        rm -rf "$context"
        mkdir -p "$context"
        cp -a "$(image_dir "$name")/." "$context/"
        hook=stage_${name//-/_}
        if declare -F "$hook" >/dev/null; then "$hook" "$context"; fi
    } >>"$log" 2>&1
    hash=$(context_hash "$context")
    if [ -f "$tar_file" ] && [ "$(cat "$out/$name.sha256" 2>/dev/null)" = "$hash" ]; then
        echo "context $hash unchanged since $tar_file was built: buildah skipped" >>"$log"
        printf 'images: %-12s up to date    %3ds  %s\n' "$name" $((SECONDS - started)) "${tar_file#"$root"/}"
        continue
    fi
    {
        rm -f "$out/$name.sha256" "$tar_file" "$tar_file.tmp"
        buildah rmi -f "$tag" 2>/dev/null || true
        buildah bud --isolation chroot --layers=false -t "$tag" -f "$context/Dockerfile" "$context"
        buildah push "$tag" "oci-archive:$tar_file.tmp:furnace/$name:dev"
        mv "$tar_file.tmp" "$tar_file"
        echo "$hash" >"$out/$name.sha256"
    } >>"$log" 2>&1
    printf 'images: %-12s built         %3ds  %s (%s)\n' "$name" $((SECONDS - started)) \
        "${tar_file#"$root"/}" "$(du -h "$tar_file" | cut -f1)"
done
current=

#!/usr/bin/env bash
# Installs what `make demo` and `make test` need on a Debian bookworm machine.
# Idempotent: installs only what is missing, refreshes apt lists only when a
# package or the kernel meta-package is unknown to them.
set -euo pipefail

packages=(
    qemu-system-x86   # the test guest (TCG)
    busybox-static    # the guest's userland
    dwarves           # pahole, ground truth for profile offsets
    binutils          # readelf/objcopy, ground truth for the banner bytes
    python3-protobuf  # the Python SDK (for /usr/bin/python3)
    python3-cryptography  # its facilities client: X25519, ChaCha20-Poly1305
    ca-certificates
    containerd        # the real containerd the shim is tested under (1.6 on bookworm)
    runc              # the peer the shim is benchmarked against
    buildah           # builds our Dockerfiles into OCI archives
    docker.io         # tenants' `docker build`: our base images are built into it too
    libseccomp-dev    # libcontainer's seccomp support (links libseccomp)
    pkg-config
    iproute2          # the tenant backend's network namespace and veth (demo, tests)
    tcpdump           # the capture that shows facilities traffic is ciphertext
    containernetworking-plugins  # the CNI bridge the CRI tests' pod sandboxes get
)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get install, /run/furnace, /var/cache/furnace)" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

lists_know_kernel() { apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1; }

if [ ${#missing[@]} -gt 0 ] || ! lists_know_kernel; then
    echo "install-deps: apt-get update"
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is required" >&2; exit 1; }
echo "install-deps: ok"

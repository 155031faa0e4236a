#!/usr/bin/env bash
# Builds the ecosystem peers the tests drive from their Go modules, at the
# versions tools/go.mod pins, and prints a binary's path. Built once per
# module version and recipe under /var/cache/furnace/go/; a second run only
# prints the path. The binaries of one module are built together,
# so they share one compile of their common packages.
#   scripts/go-tools.sh TOOL    build TOOL's module if needed, print TOOL's path
#   scripts/go-tools.sh all     build every module (what `make test` does first)
set -euo pipefail
shopt -s inherit_errexit
self=$(realpath "$0")
tools=$(dirname "$self")/../tools
export PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=mod CGO_ENABLED=0

kubernetes=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
usage="usage: go-tools.sh all|crictl|etcd|$(IFS='|'; echo "${kubernetes[*]}")"

# The go.mod's directory, the module, the cache name, then "binary=package"
# for each binary it gives. Kubernetes and etcd have a go.mod of their own
# (tools/kubernetes/tools.go says why).
module_of() {
  case "$1" in
    crictl) echo "$tools sigs.k8s.io/cri-tools cri-tools crictl=sigs.k8s.io/cri-tools/cmd/crictl" ;;
    etcd) echo "$tools/kubernetes go.etcd.io/etcd/server/v3 etcd etcd=go.etcd.io/etcd/server/v3" ;;
    kube-*|kubelet|kubectl)
      local spec="$tools/kubernetes k8s.io/kubernetes kubernetes" b
      for b in "${kubernetes[@]}"; do spec+=" $b=k8s.io/kubernetes/cmd/$b"; done
      echo "$spec" ;;
    *) echo "go-tools.sh: unknown tool $1; $usage" >&2; return 2 ;;
  esac
}

# Builds the module named by `module_of` output into its cache directory
# and prints that directory.
build() {
  local dir=$1 module=$2 name=$3; shift 3
  local version recipe out
  cd "$dir"
  version=$(go list -m -f '{{.Version}}' "$module")
  # Keyed by the version and by how it is built: this script and the go.mod
  # and go.sum it builds from.
  recipe=$(cat "$self" go.mod go.sum | sha256sum | cut -c1-12)
  out=/var/cache/furnace/go/$name-$version-$recipe
  local flags=(-trimpath)
  if [ "$module" = k8s.io/kubernetes ]; then
    # What Kubernetes' own build stamps (hack/lib/version.sh), so /version,
    # kubectl's skew check and the node's kubeletVersion give the release.
    local minor=${version#v1.} ldflags="" package
    minor=${minor%%.*}
    for package in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
      ldflags+=" -X $package.gitVersion=$version -X $package.gitMajor=1 -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
    done
    flags+=(-ldflags "$ldflags")
  fi
  if [ ! -f "$out/.complete" ]; then
    echo "go-tools.sh: building $name $version from its Go module into $out" >&2
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    if [ $# = 1 ]; then
      go build "${flags[@]}" -o "$out.tmp/${1%%=*}" "${1#*=}" >&2
    else
      # One build for all: each binary is named after its package's last
      # element, which these are.
      local pair packages=()
      for pair in "$@"; do packages+=("${pair#*=}"); done
      go build "${flags[@]}" -o "$out.tmp/" "${packages[@]}" >&2
    fi
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  echo "$out"
}

tool=${1:?$usage}
if [ "$tool" = all ]; then
  for t in crictl etcd kubectl; do
    # shellcheck disable=SC2046
    build $(module_of "$t") >/dev/null
  done
  exit 0
fi
spec=$(module_of "$tool")
# shellcheck disable=SC2086
dir=$(build $spec)
echo "$dir/$tool"

#!/usr/bin/env bash
# Builds an ecosystem peer the tests drive from its Go module, at the
# version tools/go.mod pins, and prints the binary's path. Built once per
# version under /var/cache/furnace/go/; a second run only prints the path.
#   scripts/go-tools.sh crictl
set -euo pipefail
cd "$(dirname "$0")/../tools"
tool=${1:?usage: go-tools.sh crictl}
case "$tool" in
  crictl) module=sigs.k8s.io/cri-tools package=sigs.k8s.io/cri-tools/cmd/crictl ;;
  *) echo "go-tools.sh: unknown tool $tool (known: crictl)" >&2; exit 2 ;;
esac
export PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=mod
version=$(go list -m -f '{{.Version}}' "$module")
out=/var/cache/furnace/go/$tool-$version
if [ ! -x "$out/$tool" ]; then
  mkdir -p "$out.tmp"
  CGO_ENABLED=0 go build -trimpath -o "$out.tmp/$tool" "$package" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
fi
echo "$out/$tool"

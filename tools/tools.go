//go:build tools

// Package tools pins the ecosystem peers the tests build from their Go
// modules (scripts/go-tools.sh). Nothing here ships: the product is Rust.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)

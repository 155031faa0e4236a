//go:build tools

// Package tools pins the Kubernetes control plane, kubelet, kubectl and
// etcd the tests build from their Go modules (scripts/go-tools.sh).
//
// A module of its own, apart from ../go.mod: k8s.io/kubernetes names its
// staging modules (k8s.io/api and the rest) at v0.0.0, so go.mod replaces
// each with its release at the matching v0.35.x (kubernetes/kubernetes#79384),
// and those replacements would also hold crictl's client libraries at
// v0.35, against which cri-tools v1.34 does not compile.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

//go:build tools

// Package k8senv pins the real control-plane and node binaries used by tierguard's
// integration tests. Nothing here is imported by the operator; build.sh runs
// `go build` on these main packages with the versions fixed in go.mod/go.sum.
package k8senv

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "helm.sh/helm/v3/cmd/helm"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

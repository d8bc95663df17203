//go:build tools

// Package tools pins kubectl, which the Makefile builds on its own beside
// hyperkube: the hooks' image carries it, and it must stay small.
package tools

import _ "k8s.io/kubernetes/cmd/kubectl"

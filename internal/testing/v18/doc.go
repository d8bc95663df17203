// Package v18 holds a cluster of aad-pod-identity 1.8 as test fixtures:
// its CustomResourceDefinitions in the shapes 1.8 shipped (written from
// its published schema: no CEL, no status subresource, the AzureIdentity
// and binding embedded whole in each per-pod AzureAssignedIdentity), and
// its objects as its docs show them.
package v18

import _ "embed"

// CRDs are 1.8's four CustomResourceDefinitions, as one YAML stream.
//
//go:embed crds.yaml
var CRDs string

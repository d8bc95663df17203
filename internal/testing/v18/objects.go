package v18

import (
	"bytes"
	"text/template"
)

// World is what 1.8 held for one identity used by one running pod.
type World struct {
	Namespace, Identity, Selector string
	ResourceID, ClientID          string
	// Pod runs on Node, where MIC assigned the identity.
	Pod, Node string
	// Exception is the app label of the pods an AzurePodIdentityException
	// in the namespace lets reach the node's own identity; none if empty.
	Exception string
	// Managed is 1.8 in managed mode, or the AKS add-on: no MIC, so no
	// AzureAssignedIdentity; the admins assigned the identity.
	Managed bool
}

// world spells the objects as 1.8's docs do; the AzureAssignedIdentity is
// MIC's (named <pod>-<namespace>-<identity>, in the pod's namespace, the
// AzureIdentity and binding embedded whole, status Assigned: no status
// subresource in 1.8, so the status is written with the object).
var world = template.Must(template.New("world").Parse(`apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata:
  name: {{.Identity}}
  namespace: {{.Namespace}}
spec:
  type: 0
  resourceID: {{.ResourceID}}
  clientID: {{.ClientID}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata:
  name: {{.Identity}}-binding
  namespace: {{.Namespace}}
spec:
  azureIdentity: {{.Identity}}
  selector: {{.Selector}}
{{- if not .Managed}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureAssignedIdentity
metadata:
  name: {{.Pod}}-{{.Namespace}}-{{.Identity}}
  namespace: {{.Namespace}}
spec:
  azureIdentityRef:
    apiVersion: aadpodidentity.k8s.io/v1
    kind: AzureIdentity
    metadata:
      name: {{.Identity}}
      namespace: {{.Namespace}}
    spec:
      type: 0
      resourceID: {{.ResourceID}}
      clientID: {{.ClientID}}
  azureBindingRef:
    apiVersion: aadpodidentity.k8s.io/v1
    kind: AzureIdentityBinding
    metadata:
      name: {{.Identity}}-binding
      namespace: {{.Namespace}}
    spec:
      azureIdentity: {{.Identity}}
      selector: {{.Selector}}
  pod: {{.Pod}}
  podNamespace: {{.Namespace}}
  nodename: {{.Node}}
status:
  status: Assigned
  availableReplicas: 1
{{- end}}
{{- if .Exception}}
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzurePodIdentityException
metadata:
  name: {{.Identity}}-exception
  namespace: {{.Namespace}}
spec:
  podLabels:
    app: {{.Exception}}
{{- end}}
`))

// Objects returns the world's objects as one YAML stream, for kubectl apply.
func (w World) Objects() string {
	var b bytes.Buffer
	if err := world.Execute(&b, w); err != nil {
		panic(err) // a template error is a bug of this package
	}
	return b.String()
}

// LegacyRecordName is the name of MIC's AzureAssignedIdentity.
func (w World) LegacyRecordName() string { return w.Pod + "-" + w.Namespace + "-" + w.Identity }

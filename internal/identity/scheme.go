package identity

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	aadv1 "github.com/aad-pod-identity/aad-pod-identity/api/v1"
)

// Scheme holds the Kubernetes built-in types and this project's API.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(aadv1.AddToScheme(s))
	return s
}

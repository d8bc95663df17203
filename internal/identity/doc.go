// Package identity is the contract the webhook, the assigner and NMI share:
// what a pod's aadpodidbinding label resolves to, how the admitted
// identities are recorded on the pod (annotations) and read back, the
// scheduling gate that holds the pod, and the scheme of the types involved.
// It does no admission, assignment or token serving itself.
package identity

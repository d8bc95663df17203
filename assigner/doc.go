// Package assigner puts the user-assigned identities of pods on the node
// pools (VMSS or standalone VMs) they may run on, through Azure Resource
// Manager, before it lifts the pods' scheduling gate.
package assigner

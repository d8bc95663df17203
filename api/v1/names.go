package v1

// Every label, annotation and gate name the components share lives here.
const (
	// BindingLabel is the pod label whose value selects AzureIdentityBindings.
	BindingLabel = "aadpodidbinding"

	// AnnotationPrefix prefixes every annotation this project writes on pods;
	// only trusted service accounts may set or change them.
	AnnotationPrefix = "aadpodidentity.k8s.io/"

	// AnnotationIdentities lists the admitted AzureIdentities as sorted,
	// comma-separated namespace/name pairs.
	AnnotationIdentities = AnnotationPrefix + "identities"
	// AnnotationClientIDs lists the client IDs of the admitted identities, in
	// the same order as AnnotationIdentities.
	AnnotationClientIDs = AnnotationPrefix + "client-ids"
	// AnnotationNodePools lists the node pools (ARM IDs) the assigner targets.
	AnnotationNodePools = AnnotationPrefix + "node-pools"
	// AnnotationAssignment is Pending, Assigned or "Failed: <reason>".
	AnnotationAssignment = AnnotationPrefix + "assignment"
	// AnnotationIdentitiesReadyAt is when the assigner lifted the pod's gate,
	// its identities on every target pool (RFC 3339, UTC). Written with the
	// gate's removal, so kubectl describe pod tells it at no extra write.
	AnnotationIdentitiesReadyAt = AnnotationPrefix + "identities-ready-at"

	// SchedulingGate holds a pod until its user-assigned identities are on
	// every node pool it may land on.
	SchedulingGate = AnnotationPrefix + "identity-assignment"

	// NMINotReadyTaint keeps pods off a node until NMI intercepts IMDS there.
	NMINotReadyTaint = AnnotationPrefix + "nmi-not-ready"

	// AnnotationFederated, "true" on a user-assigned AzureIdentity, serves
	// it through workload identity federation (NMI exchanges the pod's
	// service-account token) instead of putting it on the node pools. In
	// policy mode federated every user-assigned identity is served so.
	AnnotationFederated = AnnotationPrefix + "federated"
)

// Values of AnnotationAssignment.
const (
	AssignmentPending  = "Pending"
	AssignmentAssigned = "Assigned"
	// AssignmentFailedPrefix starts a failed assignment, followed by the reason.
	AssignmentFailedPrefix = "Failed: "
)

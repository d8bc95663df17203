// Package compat reads the shapes of objects that earlier releases wrote,
// and gives them to the rest of the code as today's types or as typed
// facts; no other package reads those shapes (boundary_test.go).
//
// The shapes, declared in api/v1/legacy.go so that the CRDs keep them:
//
//   - aad-pod-identity 1.x's spellings of AzureIdentity and
//     AzureIdentityBinding fields (ResourceID, ClientID, ClientId,
//     TenantID, ClientPassword; AzureIdentity, Selector). Decoding folds
//     them into the canonical fields; Spellings lists those an object
//     carries, for the webhook to store them under today's fields.
//   - 1.x's per-pod AzureAssignedIdentity records (Read1x), evidence that
//     its MIC put an identity on a node's pool.
//   - 0.1's one-identity records, one per identity and pool (Read01),
//     which the assigner takes over into its pool records.
//
// The package goes in v0.3.0, the first release after 1.8's end of
// support, with the shapes it reads (docs/migration.md, "Compatibility
// code").
package compat

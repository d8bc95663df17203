// Package charts holds the tests of the Helm charts under this directory:
// lint, golden renderings, server-side dry-run into a real apiserver and
// RBAC checked with SubjectAccessReviews.
package charts

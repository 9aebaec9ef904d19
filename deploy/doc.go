// Package deploy holds the tests of the deployment files in this folder:
// the Kubernetes manifests (rendered with kustomize, decoded strictly into
// the k8s.io/api types and cross-checked), the compose file and the
// gateway configuration. It is a module of its own so that kustomize and
// the Kubernetes types stay out of the main module's build.
package deploy

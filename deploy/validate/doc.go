// Package validate checks what deploy/ ships against Kubernetes, Prometheus, Compose and
// the code: the Helm chart renders and every object decodes strictly into its API type,
// the configs it ships load with the binaries' own loaders, the alert rules parse with
// Prometheus's rule parser, every metric the rules, the dashboard and the autoscaler name
// is one the processes export, and docker-compose.yml loads with the Compose loader.
//
// It is its own module, so that the main module carries none of Helm's, Kubernetes' or
// Prometheus's dependencies; `make validate-deploy` runs it.
package validate

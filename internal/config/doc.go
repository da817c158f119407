// Package config owns the two YAML configurations of multiquery and their
// validation:
//
//   - Worker: the worker's side, where calls go. Deployment aliases map to a
//     provider, an endpoint, where to read the API key, timeouts and the AIMD
//     throttle parameters. It is never published: a job names an alias, never an
//     endpoint or a key.
//   - Pipeline: the producer's side, what to ask. The model parameters, the queries
//     (an explicit list, or the matrix of case studies x criteria), their Jinja2
//     templates (package prompt) and the typed output fields each JSON answer is
//     mapped to. A validated Pipeline resolves to an ordered list of Query values
//     that render a row into chat messages.
//
// Both files are read the same way. Every scalar value (and mapping key) may use
// ${VAR} (an error naming VAR when it is unset), ${VAR:-default} (the default when
// VAR is unset or empty) and $$ for a literal $; any other $ is kept as is.
// Expansion happens on the parsed YAML values, so an environment value can never
// change the document's structure and comments are never expanded; a plain
// (unquoted) value is re-typed after expansion, so `timeout: ${T}` with T=60s is a
// duration and `max_attempts: ${N}` an integer. Unknown keys are an error naming
// their path. Durations are Go duration strings ("60s", "250ms").
//
// Validation reports every problem at once (errors.Join), each naming its field
// path, e.g. `deployments.gpt4.throttle.decrease: must be in (0,1), got 1.2` or
// `queries[2].name: duplicate query name "a"`.
package config

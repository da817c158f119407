package worker

import (
	"fmt"
	"sort"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/throttle"
)

// DeploymentsFromConfig resolves the worker configuration, reading every API key now.
// Keys live only in the llm clients; they are never logged or published.
func DeploymentsFromConfig(w *config.Worker) ([]Deployment, error) {
	aliases := make([]string, 0, len(w.Deployments))
	for a := range w.Deployments {
		aliases = append(aliases, a)
	}
	sort.Strings(aliases)
	out := make([]Deployment, 0, len(aliases))
	for _, a := range aliases {
		d := w.Deployments[a]
		key, err := d.APIKey()
		if err != nil {
			return nil, fmt.Errorf("deployments.%s: %w", a, err)
		}
		dep := Deployment{
			LLM: llm.Options{Alias: a, Provider: d.Provider, Endpoint: d.Endpoint, APIVersion: d.APIVersion,
				AzureDeployment: d.AzureDeployment, APIKey: key, Timeout: d.Timeout},
			Throttle:       ThrottleParams(d.Throttle),
			MaxConcurrency: d.MaxConcurrency,
		}
		if d.Prices != nil {
			dep.Prices = Prices{PromptPer1K: d.Prices.PromptPer1K, CompletionPer1K: d.Prices.CompletionPer1K}
		}
		out = append(out, dep)
	}
	return out, nil
}

// ThrottleParams returns a deployment's throttle parameters (config.Throttle.Params).
func ThrottleParams(t config.Throttle) throttle.Params { return t.Params() }

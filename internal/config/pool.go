package config

import (
	"fmt"
	"strings"

	"github.com/multiquery/multiquery/internal/wire"
)

// PoolDeployment is one member of a deployment pool (llm.deployments): a worker
// deployment alias and its weight.
type PoolDeployment struct {
	// Alias is a worker deployment alias.
	Alias string `yaml:"alias"`
	// Weight is the member's share of the calls when several members have spare
	// capacity; default 1.
	Weight float64 `yaml:"weight" zero:"refused"`
}

// DefaultPoolWeight is a pool member's weight when none is given.
const DefaultPoolWeight = 1

// PoolName returns the name of the pipeline's deployment pool ("" without a pool):
// llm.pool, or "pool-" followed by the members' aliases joined with "-".
func (l LLM) PoolName() string {
	if len(l.Deployments) == 0 {
		return ""
	}
	if l.Pool != "" {
		return l.Pool
	}
	aliases := make([]string, len(l.Deployments))
	for i, d := range l.Deployments {
		aliases[i] = d.Alias
	}
	return "pool-" + strings.Join(aliases, "-")
}

// poolMembers are the pool's members as the wire carries them (nil without a pool).
func (l LLM) poolMembers() []wire.PoolMember {
	if len(l.Deployments) == 0 {
		return nil
	}
	out := make([]wire.PoolMember, len(l.Deployments))
	for i, d := range l.Deployments {
		out[i] = wire.PoolMember{Alias: d.Alias, Weight: d.Weight}
	}
	return out
}

// target is the deployment the pipeline's jobs name: llm.deployment, or the pool.
func (l LLM) target() string {
	if len(l.Deployments) > 0 {
		return l.PoolName()
	}
	return l.Deployment
}

func (l *LLM) setPoolDefaults() {
	for i := range l.Deployments {
		if l.Deployments[i].Weight == 0 {
			l.Deployments[i].Weight = DefaultPoolWeight
		}
	}
}

// validateDeployments checks llm.deployment or llm.deployments (exactly one) and
// llm.pool; each problem names its field.
func (l LLM) validateDeployments(ps *problems) {
	switch {
	case l.Deployment != "" && len(l.Deployments) > 0:
		ps.add("llm.deployments", "mutually exclusive with llm.deployment")
		return
	case len(l.Deployments) > 0:
	case l.Pool != "":
		ps.add("llm.pool", "needs llm.deployments")
		return
	case l.Deployment == "":
		ps.add("llm.deployment", "required (or llm.deployments, a pool)")
		return
	case !nameRE.MatchString(l.Deployment):
		ps.add("llm.deployment", "must match %s, got %q", nameRE, l.Deployment)
		return
	default:
		return
	}
	if len(l.Deployments) > wire.MaxPoolMembers {
		ps.add("llm.deployments", "at most %d deployments, got %d", wire.MaxPoolMembers, len(l.Deployments))
	}
	seen := map[string]bool{}
	for i, d := range l.Deployments {
		path := fmt.Sprintf("llm.deployments[%d]", i)
		switch {
		case d.Alias == "":
			ps.add(path+".alias", "required")
		case !nameRE.MatchString(d.Alias):
			ps.add(path+".alias", "must match %s, got %q", nameRE, d.Alias)
		case seen[d.Alias]:
			ps.add(path+".alias", "duplicate %q", d.Alias)
		}
		seen[d.Alias] = true
		if !(d.Weight > 0) || d.Weight > 1e6 {
			ps.add(path+".weight", "must be in (0, 1e6], got %v", d.Weight)
		}
	}
	name := l.PoolName()
	switch {
	case !nameRE.MatchString(name) || len(name) > 64:
		ps.add("llm.pool", "must match %s and be at most 64 characters, got %q", nameRE, name)
	case seen[name]:
		ps.add("llm.pool", "%q is also a member's alias", name)
	}
}

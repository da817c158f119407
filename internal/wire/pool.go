package wire

import (
	"errors"
	"fmt"
	"math"
)

// PoolMember is one deployment alias of a pool and its weight: when several members
// have spare capacity, a worker prefers each in proportion to its weight.
type PoolMember struct {
	Alias  string  `json:"alias"`
	Weight float64 `json:"weight"`
}

// Pool is a named set of deployment aliases that serve the same jobs: the jobs are
// published on the pool's subject (JobSubject(pool name, ...)) and a worker calls a
// member with spare capacity, failing over to another when one is throttled, paused by
// its breaker or down.
type Pool struct {
	Name    string       `json:"name"`
	Members []PoolMember `json:"members"`
}

// MaxPoolMembers bounds a pool's size.
const MaxPoolMembers = 16

// ValidatePoolMembers checks a pool's members: 1 to MaxPoolMembers, valid and unique
// aliases, weights > 0 and finite. Errors name the member's index.
func ValidatePoolMembers(members []PoolMember) error {
	var errs []error
	if len(members) == 0 || len(members) > MaxPoolMembers {
		errs = append(errs, fmt.Errorf("members: must hold 1 to %d deployments, got %d", MaxPoolMembers, len(members)))
	}
	seen := map[string]bool{}
	for i, m := range members {
		if !ValidToken(m.Alias) {
			errs = append(errs, fmt.Errorf("members[%d].alias: %q is not a valid alias", i, m.Alias))
		}
		if seen[m.Alias] {
			errs = append(errs, fmt.Errorf("members[%d].alias: duplicate %q", i, m.Alias))
		}
		seen[m.Alias] = true
		if !(m.Weight > 0) || math.IsInf(m.Weight, 0) {
			errs = append(errs, fmt.Errorf("members[%d].weight: must be > 0, got %v", i, m.Weight))
		}
	}
	return errors.Join(errs...)
}

// Validate checks a pool: a valid name and valid members; the name is not one of its
// members' aliases (the pool's subject would be the member's).
func (p *Pool) Validate() error {
	var errs []error
	if !ValidToken(p.Name) {
		errs = append(errs, fmt.Errorf("name: %q is not a valid name", p.Name))
	}
	for _, m := range p.Members {
		if m.Alias == p.Name {
			errs = append(errs, fmt.Errorf("name: %q is also the alias of a member", p.Name))
		}
	}
	if err := ValidatePoolMembers(p.Members); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// PoolOf returns the pool the open record names under name, if any.
func (o *Open) PoolOf(name string) (Pool, bool) {
	for _, p := range o.Pools {
		if p.Name == name {
			return p, true
		}
	}
	return Pool{}, false
}

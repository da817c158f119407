package wire

import (
	"strings"
	"testing"
)

func TestPoolValidation(t *testing.T) {
	t.Parallel()
	good := Pool{Name: "duo", Members: []PoolMember{{Alias: "east", Weight: 1}, {Alias: "west", Weight: 4}}}
	if err := good.Validate(); err != nil {
		t.Fatalf("a valid pool: %v", err)
	}
	for _, tc := range []struct {
		name string
		pool Pool
		want string
	}{
		{"no members", Pool{Name: "p"}, "members: must hold 1 to 16"},
		{"an invalid alias", Pool{Name: "p", Members: []PoolMember{{Alias: "a.b", Weight: 1}}}, "members[0].alias"},
		{"a duplicate alias", Pool{Name: "p", Members: []PoolMember{{Alias: "a", Weight: 1}, {Alias: "a", Weight: 1}}}, "members[1].alias: duplicate"},
		{"a zero weight", Pool{Name: "p", Members: []PoolMember{{Alias: "a"}}}, "members[0].weight"},
		{"a name that is a member's alias", Pool{Name: "a", Members: []PoolMember{{Alias: "a", Weight: 1}}}, "name: \"a\" is also"},
	} {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			if err := tc.pool.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	t.Run("an open record with an invalid pool is invalid", func(t *testing.T) {
		o := Open{V: 1, Run: "r1", Queries: []QueryInfo{{Name: "q"}}, Pools: []Pool{{Name: "p"}}}
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "pools[0].members") {
			t.Fatalf("Validate() = %v, want pools[0].members named", err)
		}
		if _, ok := (&Open{Pools: []Pool{good}}).PoolOf("duo"); !ok {
			t.Fatal("PoolOf did not find the pool")
		}
	})
	t.Run("a job with an invalid pool is poison", func(t *testing.T) {
		j := Job{V: 1, Run: "r1", Query: "q", Deployment: "duo", Request: Request{Messages: []Message{{Role: "user", Content: "x"}}, ResponseFormat: FormatStandard},
			Outputs: []OutputField{{Field: "a", Column: "q_a", Type: TypeString}}, MaxCapacityRetrySeconds: 1, MaxAttempts: 1,
			Pool: []PoolMember{{Alias: "east", Weight: 0}}}
		if err := j.Validate(); err == nil || !strings.Contains(err.Error(), "pool.members[0].weight") {
			t.Fatalf("Validate() = %v, want pool.members[0].weight named", err)
		}
		j.Pool[0].Weight = 1
		if err := j.Validate(); err != nil {
			t.Fatalf("a valid pool job: %v", err)
		}
	})
}

package proc

import (
	"flag"
	"io"
	"testing"
)

// --ops-addr left at its default may fall back to a free port when taken; given, even
// with the default's value, it is the operator's choice and stays strict.
func TestOpsAddrFallsBackOnlyWhenNotGiven(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		addr     string
		fallback bool
	}{
		{nil, ":9090", true},
		{[]string{"--ops-addr", ":9090"}, ":9090", false},
		{[]string{"--ops-addr", "127.0.0.1:9190"}, "127.0.0.1:9190", false},
		{[]string{"--ops-addr", ""}, "", false},
	} {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var p Flags
		p.Register(fs, ":9090", "address of /metrics")
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		if p.OpsAddr != tt.addr || !p.opsAddrSet != tt.fallback {
			t.Errorf("%q: addr %q, fallback %v; want %q, %v", tt.args, p.OpsAddr, !p.opsAddrSet, tt.addr, tt.fallback)
		}
	}
}

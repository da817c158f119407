package version

import (
	"bytes"
	"flag"
	"regexp"
	"runtime/debug"
	"testing"
)

func TestInfo(t *testing.T) {
	t.Parallel()
	build := func(settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{GoVersion: "go1.99.1", Settings: settings}, true
		}
	}
	tests := []struct {
		name string
		read func() (*debug.BuildInfo, bool)
		want Info
	}{
		{"the revision comes from the VCS stamp", build(debug.BuildSetting{Key: "vcs.revision", Value: "abc123"}, debug.BuildSetting{Key: "vcs.modified", Value: "false"}),
			Info{Version: "v1.2.3", Revision: "abc123", GoVersion: "go1.99.1"}},
		{"a modified tree is marked dirty", build(debug.BuildSetting{Key: "vcs.revision", Value: "abc123"}, debug.BuildSetting{Key: "vcs.modified", Value: "true"}),
			Info{Version: "v1.2.3", Revision: "abc123-dirty", GoVersion: "go1.99.1"}},
		{"a build without VCS stamp has an unknown revision", build(),
			Info{Version: "v1.2.3", Revision: "unknown", GoVersion: "go1.99.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := fromBuildInfo("v1.2.3", "", tc.read); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	t.Run("a revision set at link time stands in for a missing VCS stamp", func(t *testing.T) {
		got := fromBuildInfo("v1.2.3", "def456", build())
		if got.Revision != "def456" {
			t.Errorf("revision %q, want def456", got.Revision)
		}
		got = fromBuildInfo("v1.2.3", "def456", build(debug.BuildSetting{Key: "vcs.revision", Value: "abc123"}))
		if got.Revision != "abc123" {
			t.Errorf("revision %q, want the VCS stamp abc123", got.Revision)
		}
	})
	t.Run("without build info the Go version is the runtime's", func(t *testing.T) {
		got := fromBuildInfo("dev", "", func() (*debug.BuildInfo, bool) { return nil, false })
		if got.Version != "dev" || got.Revision != "unknown" || got.GoVersion == "" {
			t.Errorf("got %+v", got)
		}
	})
}

func TestFlag(t *testing.T) {
	t.Parallel()
	t.Run("--version prints '<cmd> <version> (<revision>, <go version>)'", func(t *testing.T) {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		v := Register(fs)
		if err := fs.Parse([]string{"--version"}); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if !v.Print(&out, "worker") {
			t.Fatal("Print reported no --version")
		}
		if !regexp.MustCompile(`^worker dev \(\S+, go\S+\)\n$`).MatchString(out.String()) {
			t.Errorf("printed %q", out.String())
		}
	})
	t.Run("without --version nothing is printed", func(t *testing.T) {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		v := Register(fs)
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if v.Print(&out, "worker") || out.Len() > 0 {
			t.Errorf("printed %q", out.String())
		}
	})
}

// Package version owns the build's identity: the release version (set at link time),
// the VCS revision the Go toolchain stamps into the binary, and the Go version. Every
// command prints it for --version, and every process exports it as mq_build_info.
package version

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is the release version, set at link time:
//
//	go build -ldflags "-X github.com/multiquery/multiquery/internal/version.version=v1.2.3" ./cmd/...
//
// (make build sets it from `git describe`). A build without it says "dev".
var version = "dev"

// revision is the VCS revision when the toolchain stamped none (-buildvcs=false, or a
// source tree without .git such as a container build): make build and the Dockerfile
// set it with -X like version.
var revision = ""

// Info is what a binary knows of its build.
type Info struct {
	Version   string // the release version, "dev" unless set at link time
	Revision  string // the VCS revision (vcs.revision, "-dirty" appended for a modified tree; else the linked one), "unknown" without either
	GoVersion string // the Go toolchain that built the binary
}

// Get returns the build's identity.
func Get() Info {
	return fromBuildInfo(version, revision, debug.ReadBuildInfo)
}

// fromBuildInfo reads the revision from the build info (a binary built outside a
// repository, or with -buildvcs=false, has none: rev, set at link time, stands in).
func fromBuildInfo(v, rev string, read func() (*debug.BuildInfo, bool)) Info {
	if rev == "" {
		rev = "unknown"
	}
	info := Info{Version: v, Revision: rev, GoVersion: runtime.Version()}
	bi, ok := read()
	if !ok {
		return info
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if s.Value != "" {
				info.Revision = s.Value
			}
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && info.Revision != "unknown" {
		info.Revision += "-dirty"
	}
	return info
}

// Line is what `<cmd> --version` prints: "<cmd> <version> (<revision>, <go version>)".
func (i Info) Line(cmd string) string {
	return fmt.Sprintf("%s %s (%s, %s)", cmd, i.Version, i.Revision, i.GoVersion)
}

// Flag registers --version on fs; after fs.Parse, Print reports whether it was given
// and, if so, has printed the version line of cmd on w (the command then exits 0).
type Flag struct {
	set bool
}

// Register registers --version on fs.
func Register(fs *flag.FlagSet) *Flag {
	f := &Flag{}
	fs.BoolVar(&f.set, "version", false, "print the version and exit")
	return f
}

// ErrPrinted is what a command's flag parsing returns once Print has printed the version:
// like flag.ErrHelp, the command exits 0 (cli.ParseExit).
var ErrPrinted = errors.New("version printed")

// Print prints the version line of cmd on w if --version was given, and reports
// whether it was.
func (f *Flag) Print(w io.Writer, cmd string) bool {
	if !f.set {
		return false
	}
	fmt.Fprintln(w, Get().Line(cmd))
	return true
}

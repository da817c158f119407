package docs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/multiquery/multiquery/internal/config"
)

const root = "../.."

// documents are the documents whose shell commands must run verbatim.
var documents = []string{"README.md", "docs/OPERATIONS.md", "docs/WIRE.md", "deploy/README.md"}

var (
	buildOnce sync.Once
	binDir    string // the binaries buildBinaries built, removed by TestMain
	buildErr  error
)

// buildBinaries builds every command and nats-server the way `make build` does, once
// for the tests of the package.
func buildBinaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "mq-docs-bin-"); buildErr != nil {
			return
		}
		for _, pkg := range []string{"./cmd/...", "github.com/nats-io/nats-server/v2"} {
			cmd := exec.Command("go", "build", "-o", binDir+"/", pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var optionToken = regexp.MustCompile(`-{1,2}[A-Za-z][\w-]*`)

// helpFlags returns the flags a binary's -h lists (Go's flag package, or
// nats-server's "-js, --jetstream" columns), without dashes.
func helpFlags(t *testing.T, exe string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(exe, "-h").CombinedOutput() // -h exits 0 or 2
	flags := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimLeft(l, " \t")
		if !strings.HasPrefix(l, "-") {
			continue
		}
		opts, _, _ := strings.Cut(l, "   ")
		for _, f := range optionToken.FindAllString(opts, -1) {
			flags[strings.TrimLeft(f, "-")] = true
		}
	}
	if len(flags) == 0 {
		t.Fatalf("%s -h lists no flags:\n%s", exe, out)
	}
	return flags
}

// mqctlCommands reads mqctl's usage: each subcommand ("status", "dead list") and the
// flags its line shows.
func mqctlCommands(t *testing.T, exe string) map[string]map[string]bool {
	t.Helper()
	out, _ := exec.Command(exe, "-h").CombinedOutput()
	subs := map[string]map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), "mqctl [flags] ")
		if !ok {
			continue
		}
		var words []string
		for _, w := range strings.Fields(rest) {
			if !regexp.MustCompile(`^[a-z]+$`).MatchString(w) {
				break
			}
			words = append(words, w)
		}
		name := strings.Join(words, " ")
		if subs[name] == nil {
			subs[name] = map[string]bool{}
		}
		for _, f := range optionToken.FindAllString(rest, -1) {
			subs[name][strings.TrimLeft(f, "-")] = true
		}
	}
	if len(subs) == 0 {
		t.Fatalf("mqctl -h lists no subcommands:\n%s", out)
	}
	return subs
}

func makeTargets(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([a-z][\w-]*):`).FindAllStringSubmatch(string(b), -1) {
		targets[m[1]] = true
	}
	return targets
}

var (
	repoTop    = regexp.MustCompile(`^(\./)?(cmd|internal|docs|deploy|examples|scripts|\.ci)/`)
	configFile = regexp.MustCompile(`\.(ya?ml|csv|jsonl|j2|conf|md)$`)
)

// repoPath says whether a word names a file of the repository (relative, under one
// of its top-level directories, or a config-like file of a bin/ command), and not a
// placeholder.
func repoPath(w string, binArg bool) bool {
	if strings.ContainsAny(w, "<>$*") || filepath.IsAbs(w) || strings.Contains(w, "://") {
		return false
	}
	return repoTop.MatchString(w) || (binArg && configFile.MatchString(w))
}

// Issue 10, B8: every shell command that README.md, docs/OPERATIONS.md, docs/WIRE.md
// and deploy/README.md show runs as written: a bin/ binary exists and takes every flag
// given to it (mqctl: the global flags before its subcommand, the subcommand's after),
// make targets exist, every repository path exists, and a worker given an API key in
// its environment has a config that reads that variable.
func TestDocumentedCommandsRunAsWritten(t *testing.T) {
	bin := buildBinaries(t)
	targets := makeTargets(t)
	flags := map[string]map[string]bool{}
	mqctl := mqctlCommands(t, filepath.Join(bin, "mqctl"))
	checked := 0
	for _, doc := range documents {
		b, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		var cmds []Command
		sims := map[int]string{} // a command's index: the llmsim address its block started before it
		for _, blk := range Blocks(string(b)) {
			if blk.Lang != "sh" && blk.Lang != "indented" {
				continue
			}
			sim := ""
			for _, c := range Commands(blk.Text, nil) {
				c.Line += blk.Line - 1
				if sim != "" {
					sims[len(cmds)] = sim
				}
				if c.Args[0] == "bin/llmsim" {
					sim = llmsimAddr(c.Args[1:])
				}
				cmds = append(cmds, c)
			}
		}
		// Inline `make <target>` mentions in the prose too.
		for _, m := range regexp.MustCompile("`make ([a-z][\\w-]*)").FindAllStringSubmatch(string(b), -1) {
			if !targets[m[1]] {
				t.Errorf("%s: `make %s`: no such target in the Makefile", doc, m[1])
			}
		}
		for i, c := range cmds {
			where := fmt.Sprintf("%s:%d: %s", doc, c.Line, strings.Join(c.Args, " "))
			prog := c.Args[0]
			isBin := strings.HasPrefix(prog, "bin/")
			for _, a := range c.Args[1:] {
				_, v, hasValue := strings.Cut(a, "=")
				for _, w := range []string{a, v} {
					if (w == a || hasValue) && repoPath(w, isBin || prog == "make") {
						if _, err := os.Stat(filepath.Join(root, w)); err != nil {
							t.Errorf("%s: %s is not in the repository", where, w)
						}
					}
				}
			}
			switch {
			case prog == "make":
				checked++
				for _, a := range c.Args[1:] {
					if !strings.Contains(a, "=") && !targets[a] {
						t.Errorf("%s: no make target %q", where, a)
					}
				}
			case prog == "bin/mqctl":
				checked++
				checkMQCtl(t, where, c.Args[1:], helpFlagsOnce(t, flags, bin, "mqctl"), mqctl)
			case isBin:
				checked++
				name := strings.TrimPrefix(prog, "bin/")
				if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
					t.Errorf("%s: make build makes no %s", where, prog)
					continue
				}
				known := helpFlagsOnce(t, flags, bin, name)
				for _, a := range c.Args[1:] {
					if f, ok := flagName(a); ok && !known[f] {
						t.Errorf("%s: %s has no flag -%s", where, prog, f)
					}
				}
				if name == "worker" {
					checkWorkerKey(t, where, c)
				}
				if cfg := workerConfigOf(c); cfg != "" && (name == "multiquery" || sims[i] != "") {
					checkModelReached(t, where, c, cfg, sims[i])
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked %d bin/ and make commands; the documents show more", checked)
	}
}

func helpFlagsOnce(t *testing.T, cache map[string]map[string]bool, bin, name string) map[string]bool {
	if cache[name] == nil {
		cache[name] = helpFlags(t, filepath.Join(bin, name))
	}
	return cache[name]
}

// flagName returns the name of a flag argument ("--out=x", "-js": "out", "js").
func flagName(a string) (string, bool) {
	if !strings.HasPrefix(a, "-") || a == "-" || strings.HasPrefix(a, "2>") {
		return "", false
	}
	name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
	return name, name != ""
}

// checkMQCtl checks an mqctl command line: global flags, then a subcommand its usage
// lists, then that subcommand's flags.
func checkMQCtl(t *testing.T, where string, args []string, global map[string]bool, subs map[string]map[string]bool) {
	t.Helper()
	i := 0
	for ; i < len(args); i++ {
		f, ok := flagName(args[i])
		if !ok {
			break
		}
		if !global[f] {
			t.Errorf("%s: mqctl has no global flag -%s", where, f)
		}
		if !strings.Contains(args[i], "=") {
			i++ // its value
		}
	}
	i = min(i, len(args)) // a global flag last, its value missing: no subcommand
	names := make([]string, 0, len(subs))
	for n := range subs {
		names = append(names, n)
	}
	sort.Slice(names, func(a, b int) bool { return len(names[a]) > len(names[b]) })
	rest := strings.Join(args[i:], " ")
	for _, n := range names {
		if rest == n || strings.HasPrefix(rest, n+" ") {
			for _, a := range args[i+len(strings.Fields(n)):] {
				if f, ok := flagName(a); ok && !subs[n][f] {
					t.Errorf("%s: mqctl %s has no flag -%s", where, n, f)
				}
			}
			return
		}
	}
	t.Errorf("%s: mqctl has no subcommand %q", where, rest)
}

// checkWorkerKey checks that a worker command given an API key in its environment
// uses a config that reads the key from that variable (else the key is ignored).
func checkWorkerKey(t *testing.T, where string, c Command) {
	t.Helper()
	var cfg string
	for i, a := range c.Args {
		if (a == "--config" || a == "-config") && i+1 < len(c.Args) {
			cfg = c.Args[i+1]
		}
	}
	for k := range c.Env {
		if !strings.Contains(k, "API_KEY") || cfg == "" {
			continue
		}
		w, err := config.LoadWorker(filepath.Join(root, cfg))
		if err != nil {
			t.Errorf("%s: %v", where, err)
			return
		}
		for _, d := range w.Deployments {
			if d.APIKeyEnv != k {
				t.Errorf("%s: %s is set, but deployment %s of %s reads its key from %q", where, k, d.Alias, cfg, d.APIKeyEnv)
			}
		}
	}
}

// llmsimAddr is the address an llmsim command line listens on.
func llmsimAddr(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(strings.TrimLeft(a, "-"), "addr="); ok {
			return v
		}
		if strings.TrimLeft(a, "-") == "addr" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "127.0.0.1:8081" // llmsim's default
}

// workerConfigOf is the worker config a bin/worker (--config) or bin/multiquery run
// (--workers) command reads, "" for none.
func workerConfigOf(c Command) string {
	flag := "config"
	switch {
	case c.Args[0] == "bin/multiquery" && len(c.Args) > 1 && c.Args[1] == "run":
		flag = "workers"
	case c.Args[0] != "bin/worker":
		return ""
	}
	for i, a := range c.Args {
		if strings.TrimLeft(a, "-") == flag && i+1 < len(c.Args) {
			return c.Args[i+1]
		}
	}
	return ""
}

// checkModelReached checks, with only the command's own environment (the variables
// its config reads are unset otherwise), that its worker config loads and has every
// deployment's key (multiquery run refuses to start without it), and, when sim is
// set (the block started llmsim before it), that every deployment calls llmsim there:
// a quick start that went to the file's default endpoint would call a real provider.
func checkModelReached(t *testing.T, where string, c Command, cfg, sim string) {
	t.Helper()
	for _, k := range []string{"LLM_ENDPOINT", "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"} {
		if _, ok := c.Env[k]; !ok {
			withoutEnv(t, k)
		}
	}
	for k, v := range c.Env {
		t.Setenv(k, v)
	}
	defer func() { // the next command starts from the test's environment again
		for k := range c.Env {
			os.Unsetenv(k)
		}
	}()
	w, err := config.LoadWorker(filepath.Join(root, cfg))
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	for _, d := range w.Deployments {
		if _, err := d.APIKey(); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		if sim != "" && !strings.Contains(d.Endpoint, "://"+sim+"/") && !strings.HasSuffix(d.Endpoint, "://"+sim) {
			t.Errorf("%s: the block starts llmsim on %s, but deployment %s of %s calls %s", where, sim, d.Alias, cfg, d.Endpoint)
		}
	}
}

// withoutEnv unsets k for the rest of the test (restored after it).
func withoutEnv(t *testing.T, k string) {
	t.Helper()
	t.Setenv(k, "") // records the value to restore
	os.Unsetenv(k)
}

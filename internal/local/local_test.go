package local

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/input"
	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaultRunID(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.csv", "id\n1\n")
	b := writeFile(t, dir, "b.csv", "id\n1\n")
	c := writeFile(t, dir, "c.csv", "id\n2\n")
	id := func(hash, path string) string {
		t.Helper()
		s, err := DefaultRunID(hash, path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Run("the same pipeline and input bytes are the same run, wherever the file is", func(t *testing.T) {
		if id("h1", a) != id("h1", b) {
			t.Error("two files with the same bytes got different ids")
		}
	})
	t.Run("another input or another pipeline is another run", func(t *testing.T) {
		if id("h1", a) == id("h1", c) {
			t.Error("another input got the same id")
		}
		if id("h1", a) == id("h2", a) {
			t.Error("another pipeline got the same id")
		}
	})
	t.Run("is a valid run id starting with local-", func(t *testing.T) {
		if s := id("h1", a); !strings.HasPrefix(s, "local-") || len(s) != len("local-")+20 {
			t.Errorf("id %q", s)
		}
	})
}

// The one pass over the input that counts its records gives the run the same id as
// DefaultRunID (what --dry-run prints), also when the reader stops before the file's end.
func TestScanInputCountsRowsAndGivesTheDefaultRunID(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"rows.csv":   "id,text\n1,a\n2,\"b\nc\"\n3,bad\"x\n",
		"rows.jsonl": "{\"id\":1}\n\n{\"id\":2}\nnot json\n",
	} {
		path := writeFile(t, dir, name, data)
		f, err := input.FormatFromPath(path)
		if err != nil {
			t.Fatal(err)
		}
		rows, digest, err := scanInput(path, f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want, err := DefaultRunID("h1", path)
		if err != nil {
			t.Fatal(err)
		}
		if rows != 3 || runID("h1", digest) != want {
			t.Errorf("%s: %d rows, id %s; want 3 rows and %s", name, rows, runID("h1", digest), want)
		}
	}
}

func TestCheck(t *testing.T) {
	p, err := config.ParsePipeline([]byte("llm: {deployment: default, model: m}\noutput_fields: {a: {type: string}}\nqueries: [{name: q, template: 'say JSON'}]\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	served := []worker.Deployment{{LLM: llm.Options{Alias: "default"}}}
	good := Config{Pipeline: p, Deployments: served, InputPath: "rows.csv", OutDir: "out"}
	if err := good.Check(); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	for _, tt := range []struct {
		name, want string
		tweak      func(*Config)
	}{
		{"refuses stdin: a rerun must read the input again", "input: a file is required", func(c *Config) { c.InputPath = "-" }},
		{"refuses a deployment the worker config lacks", `deployment "default" is not in the worker config`, func(c *Config) { c.Deployments = nil }},
		{"refuses a bad run id", "run:", func(c *Config) { c.Run = "a.b" }},
		{"needs an output directory", "out:", func(c *Config) { c.OutDir = "" }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.tweak(&c)
			if err := c.Check(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Check() = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestStore(t *testing.T) {
	t.Run("defaults to a directory under the output", func(t *testing.T) {
		if got := (Config{OutDir: "out"}).Store(); got != filepath.Join("out", ".multiquery", "nats") {
			t.Errorf("Store() = %q", got)
		}
	})
	t.Run("one run at a time uses a store", func(t *testing.T) {
		dir := t.TempDir()
		srv, err := startServer(dir, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := startServer(dir, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "in use by another multiquery run") {
			t.Errorf("a second server on the store: %v, want it refused", err)
		}
		srv.shutdown()
		again, err := startServer(dir, zerolog.Nop())
		if err != nil {
			t.Fatalf("after the first stopped: %v", err)
		}
		again.shutdown()
	})
}

func TestTheEmbeddedServerLogsThroughZerolog(t *testing.T) {
	var buf strings.Builder
	// The server logs from its goroutines: one write at a time.
	srv, err := startServer(t.TempDir(), zerolog.New(zerolog.SyncWriter(&buf)).Level(zerolog.DebugLevel))
	if err != nil {
		t.Fatal(err)
	}
	srv.shutdown()
	if !strings.Contains(buf.String(), `"component":"nats-server"`) || !strings.Contains(buf.String(), "Starting nats-server") {
		t.Errorf("logs:\n%s", buf.String())
	}
}

package validate

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/multiquery/multiquery/internal/config"
)

func TestComposeFileLoads(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yml")}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		o.SetProjectName("multiquery", true)
		o.Profiles = []string{"run"}
	})
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	want := []string{"collector", "llmsim", "nats", "producer", "worker-1", "worker-2"}
	if got := slices.Sorted(func(yield func(string) bool) {
		for name := range p.Services {
			if !yield(name) {
				return
			}
		}
	}); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}

	t.Run("every worker's config loads with the worker's loader", func(t *testing.T) {
		for _, name := range []string{"worker-1", "worker-2"} {
			s := p.Services[name]
			for k, v := range s.Environment {
				if v != nil {
					t.Setenv(k, *v)
				}
			}
			i := slices.Index(s.Command, "--config")
			if i < 0 || i+1 == len(s.Command) {
				t.Fatalf("%s: no --config in %q", name, s.Command)
			}
			path := hostPath(t, s, s.Command[i+1])
			if _, err := config.LoadWorker(path); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})

	t.Run("a second collector can stand by: each gets a host port", func(t *testing.T) {
		ports := p.Services["collector"].Ports
		if len(ports) != 1 || ports[0].Target != 9091 || ports[0].Published != "9091-9092" {
			t.Fatalf("collector ports %+v, want container 9091 on host 9091-9092 (--scale collector=2)", ports)
		}
	})

	t.Run("the producer's pipeline and input are mounted", func(t *testing.T) {
		s := p.Services["producer"]
		for _, flag := range []string{"--config", "--input"} {
			i := slices.Index(s.Command, flag)
			if i < 0 {
				t.Fatalf("producer: no %s", flag)
			}
			path := hostPath(t, s, s.Command[i+1])
			if _, err := os.Stat(path); err != nil {
				t.Errorf("producer %s: %v", flag, err)
			}
			if flag == "--config" {
				if _, err := config.LoadPipeline(path); err != nil {
					t.Errorf("producer pipeline: %v", err)
				}
			}
		}
	})
}

// hostPath maps a path inside a service's container to the host through its bind mounts.
func hostPath(t *testing.T, s types.ServiceConfig, path string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && strings.HasPrefix(path, v.Target+"/") {
			return filepath.Join(v.Source, strings.TrimPrefix(path, v.Target))
		}
	}
	t.Fatalf("%s: %s is in no bind mount", s.Name, path)
	return ""
}

package docs

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBlocks(t *testing.T) {
	md := "# t\n\ntext\n\n```sh\nmake build\n```\n\n- a list\n\n    not code: a list's continuation\n\nPara.\n\n    make test-under-load ROUNDS=3\n\n```json\n{}\n```\n"
	got := Blocks(md)
	want := []Block{{Lang: "sh", Line: 6, Text: "make build"}, {Lang: "indented", Line: 15, Text: "make test-under-load ROUNDS=3"}, {Lang: "json", Line: 18, Text: "{}"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("blocks (-want +got):\n%s", d)
	}
}

func TestCommands(t *testing.T) {
	block := strings.Join([]string{
		`export NATS_URL=nats://127.0.0.1:4222 NATS_CA=/etc/ca.pem`,
		`RUN=demo-0001`,
		`# a comment`,
		`nats pub -J "input.$RUN.open" -H "Nats-Msg-Id:open.$RUN" \`,
		`  '{"v":1,"run":"'"$RUN"'"}'`,
		`OPENAI_API_KEY=sk-x bin/worker --config w.yaml &   # as many as you like`,
		`until nats kv get mq_runs "$RUN" --raw 2>/dev/null | grep -q '"finished":true'; do sleep 1; done`,
		`bin/mqctl --nats "${NATS_URL}" get <run> && echo "${UNSET:-dflt}" \$HOME`,
	}, "\n")
	got := Commands(block, map[string]string{"HOME": "/home/x"})
	want := []Command{
		{Line: 4, Env: map[string]string{}, Args: []string{"nats", "pub", "-J", "input.demo-0001.open", "-H", "Nats-Msg-Id:open.demo-0001", `{"v":1,"run":"demo-0001"}`}},
		{Line: 6, Env: map[string]string{"OPENAI_API_KEY": "sk-x"}, Args: []string{"bin/worker", "--config", "w.yaml"}},
		{Line: 7, Env: map[string]string{}, Args: []string{"until", "nats", "kv", "get", "mq_runs", "demo-0001", "--raw", "2>/dev/null"}},
		{Line: 7, Env: map[string]string{}, Args: []string{"grep", "-q", `"finished":true`}},
		{Line: 7, Env: map[string]string{}, Args: []string{"do", "sleep", "1"}},
		{Line: 7, Env: map[string]string{}, Args: []string{"done"}},
		{Line: 8, Env: map[string]string{}, Args: []string{"bin/mqctl", "--nats", "nats://127.0.0.1:4222", "get", "<run>"}},
		{Line: 8, Env: map[string]string{}, Args: []string{"echo", "dflt", "$HOME"}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("commands (-want +got):\n%s", d)
	}
}

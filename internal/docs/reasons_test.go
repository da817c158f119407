package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Issue 10, B3: docs/WIRE.md's "Error reasons" table lists exactly the reasons the code
// writes (the Reason constants of internal/wire), cancelled included: a reason the
// code produces is never documented as absent, and the table names none it never
// writes.
func TestWireMDListsEveryErrorReason(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(root, "internal/wire/wire.go"))
	if err != nil {
		t.Fatal(err)
	}
	var code []string
	for _, m := range regexp.MustCompile(`(?m)^\s+Reason\w+\s*=\s*"([a-z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		code = append(code, m[1])
	}
	md, err := os.ReadFile(filepath.Join(root, "docs/WIRE.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(md)
	start := strings.Index(text, "\n## Error reasons")
	if start < 0 {
		t.Fatal("docs/WIRE.md has no Error reasons section")
	}
	text = text[start+1:]
	text = text[:strings.Index(text[3:], "\n## ")+3]
	var doc []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\|").FindAllStringSubmatch(text, -1) {
		doc = append(doc, m[1])
	}
	sort.Strings(code)
	sort.Strings(doc)
	if len(code) < 15 {
		t.Fatalf("found %d reasons in internal/wire/wire.go: the pattern is stale", len(code))
	}
	if d := cmp.Diff(code, doc); d != "" {
		t.Fatalf("error reasons, internal/wire (-) vs docs/WIRE.md (+):\n%s", d)
	}
}

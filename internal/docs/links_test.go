package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	mdLink  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	mdNamed = regexp.MustCompile(`[\w./-]*[\w-]\.md\b`)
)

// Issue 10, B4: the repository explains itself: every document it links to or names
// (a Markdown link, or a file name ending in .md, such as docs/WIRE.md) is in the
// repository. A reference to a document that is not there (a design document kept
// outside the repository) fails.
func TestDocumentsPointOnlyIntoTheRepository(t *testing.T) {
	var docs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".md") || strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".sh")) {
			docs = append(docs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	exists := func(from, ref string) bool {
		for _, base := range []string{filepath.Dir(from), root} {
			if _, err := os.Stat(filepath.Join(base, ref)); err == nil {
				return true
			}
		}
		return false
	}
	for _, p := range docs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		rel, _ := filepath.Rel(root, p)
		if strings.HasSuffix(p, ".md") {
			for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
				ref, _, _ := strings.Cut(m[1], "#")
				if ref == "" || strings.Contains(ref, "://") || strings.HasPrefix(ref, "mailto:") {
					continue
				}
				if !exists(p, ref) {
					t.Errorf("%s links to %s, which is not in the repository", rel, m[1])
				}
			}
		}
		for _, ref := range mdNamed.FindAllString(text, -1) {
			if strings.Contains(ref, "://") || strings.HasPrefix(ref, "/") {
				continue
			}
			if !exists(p, ref) {
				t.Errorf("%s names %s, which is not in the repository", rel, ref)
			}
		}
	}
}

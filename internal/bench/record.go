package bench

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// The lines between which Record writes in a document; what is outside them is left as
// it is.
const (
	RecordBegin = "<!-- make bench: begin (written by mqbench --record; edit outside these lines) -->"
	RecordEnd   = "<!-- make bench: end -->"
)

// Record replaces what path holds between RecordBegin and RecordEnd with block. Both
// lines must be there, once each and in that order: a document without them is not
// written (nothing of it is lost to a misplaced block).
func Record(path, block string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	begin, end := bytes.Index(doc, []byte(RecordBegin)), bytes.Index(doc, []byte(RecordEnd))
	if begin < 0 || end < begin || bytes.Count(doc, []byte(RecordBegin)) != 1 || bytes.Count(doc, []byte(RecordEnd)) != 1 {
		return fmt.Errorf("record: %s must hold the lines %q and %q once each, in that order", path, RecordBegin, RecordEnd)
	}
	var b bytes.Buffer
	b.Write(doc[:begin+len(RecordBegin)])
	b.WriteString("\n")
	b.WriteString(strings.TrimSpace(block))
	b.WriteString("\n")
	b.Write(doc[end:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	return nil
}

// Machine describes where a benchmark ran: cores, CPU model and the load average.
func Machine(cores int) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := "unknown"
	if l := loadAverage(); l >= 0 {
		load = fmt.Sprintf("%.2f", l)
	}
	return fmt.Sprintf("%d cores (%s), 1-minute load average %s", cores, model, load)
}

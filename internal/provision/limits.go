// Package provision owns creating the JetStream topology ahead of the processes, as an
// operator with stream-admin rights (mqctl provision): every stream and KV bucket with
// explicit, bounded limits taken from a limits file, a report of what exists and how it
// differs, and updates only when asked. Processes then need no right to create or
// change a stream (queue.Ensure only looks them up).
package provision

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/multiquery/multiquery/internal/lease"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// Limits are what an operator chooses for the topology: replicas, each stream's limits
// (by the stream's default name, MQ_JOBS, whatever the deployment's prefix), the
// collector lease's TTL, and the prompt cache bucket's age and size.
type Limits struct {
	Replicas int
	LeaseTTL time.Duration
	Streams  map[string]queue.StreamLimits
	// CacheMaxAge and CacheMaxBytes bound the prompt cache (wire.BucketCache).
	CacheMaxAge   time.Duration
	CacheMaxBytes int64
}

// Sizes of the default limits.
const (
	kib = int64(1) << 10
	mib = kib << 10
	gib = mib << 10
	day = 24 * time.Hour
)

// Default returns the limits provision uses where the file says nothing: every stream
// bounded in bytes. The streams whose messages must never be dropped (input, jobs,
// results, rows, submit) discard new messages when full, so a publisher waits for room
// (queue.RetryPublish) and nothing is lost; they have no age limit, which would drop
// the rows of a long run. The kept records (audit, dead letters, advisories) discard
// their oldest. The server reserves each stream's max_bytes (times replicas) from its
// JetStream storage: about 9.8 GiB per replica with these values (the prompt cache's
// 1 GiB included).
func Default() Limits {
	return Limits{
		Replicas:      queue.DefaultReplicas,
		LeaseTTL:      lease.DefaultTTL,
		CacheMaxAge:   queue.DefaultCacheMaxAge,
		CacheMaxBytes: 1 * gib,
		Streams: map[string]queue.StreamLimits{
			wire.StreamInput:      {MaxBytes: 2 * gib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamJobs:       {MaxBytes: 2 * gib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamResults:    {MaxBytes: 2 * gib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamRows:       {MaxBytes: 256 * mib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamSubmit:     {MaxBytes: 1 * gib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamAudit:      {MaxAge: 7 * day, MaxBytes: 1 * gib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamDead:       {MaxAge: 30 * day, MaxBytes: 512 * mib, MaxMsgs: -1, MaxMsgSize: -1},
			wire.StreamAdvisories: {MaxAge: 30 * day, MaxBytes: 64 * mib, MaxMsgs: -1, MaxMsgSize: -1},
		},
	}
}

// Topology is the queue topology of the deployment with names, with these limits.
func (l Limits) Topology(names wire.Names) queue.Topology {
	return queue.Topology{Names: names, Replicas: l.Replicas, Limits: l.Streams, CacheMaxAge: l.CacheMaxAge, CacheMaxBytes: l.CacheMaxBytes}
}

// file is the YAML form of Limits; absent fields keep the defaults.
type file struct {
	Replicas *int                   `yaml:"replicas"`
	LeaseTTL *age                   `yaml:"lease_ttl"`
	Streams  map[string]streamLimit `yaml:"streams"`
	Cache    *cacheLimit            `yaml:"cache"`
}

// cacheLimit is the YAML form of the prompt cache bucket's limits.
type cacheLimit struct {
	MaxAge   *age  `yaml:"max_age"`
	MaxBytes *size `yaml:"max_bytes"`
}

type streamLimit struct {
	MaxAge     *age  `yaml:"max_age"`
	MaxBytes   *size `yaml:"max_bytes"`
	MaxMsgs    *size `yaml:"max_msgs"`
	MaxMsgSize *size `yaml:"max_msg_size"`
}

// Load reads a limits file (YAML) over the defaults. Unknown fields and streams are
// errors, so a typo never goes unnoticed.
func Load(path string) (Limits, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Limits{}, fmt.Errorf("limits: %w", err)
	}
	l, err := Parse(b)
	if err != nil {
		return Limits{}, fmt.Errorf("limits %s: %w", path, err)
	}
	return l, nil
}

// Parse reads limits in YAML over the defaults (see Load).
func Parse(b []byte) (Limits, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) { // an empty file: defaults
		return Limits{}, err
	}
	l := Default()
	if f.Replicas != nil {
		if *f.Replicas < 1 || *f.Replicas > 5 {
			return Limits{}, fmt.Errorf("replicas: %d is not between 1 and 5", *f.Replicas)
		}
		l.Replicas = *f.Replicas
	}
	if f.LeaseTTL != nil {
		if *f.LeaseTTL <= 0 {
			return Limits{}, errors.New("lease_ttl: must be positive")
		}
		l.LeaseTTL = time.Duration(*f.LeaseTTL)
	}
	if c := f.Cache; c != nil {
		if c.MaxAge != nil {
			if *c.MaxAge <= 0 {
				return Limits{}, errors.New("cache: max_age: must be positive (answers older than it are dropped)")
			}
			l.CacheMaxAge = time.Duration(*c.MaxAge)
		}
		if c.MaxBytes != nil {
			l.CacheMaxBytes = int64(*c.MaxBytes)
		}
	}
	for name, s := range f.Streams {
		d, ok := l.Streams[name]
		if !ok {
			return Limits{}, fmt.Errorf("streams: unknown stream %q", name)
		}
		if s.MaxAge != nil {
			d.MaxAge = time.Duration(*s.MaxAge)
		}
		if s.MaxBytes != nil {
			d.MaxBytes = int64(*s.MaxBytes)
		}
		if s.MaxMsgs != nil {
			d.MaxMsgs = int64(*s.MaxMsgs)
		}
		if s.MaxMsgSize != nil {
			if *s.MaxMsgSize > 1<<31-1 {
				return Limits{}, fmt.Errorf("streams: %s: max_msg_size: %d is too large", name, *s.MaxMsgSize)
			}
			d.MaxMsgSize = int32(*s.MaxMsgSize)
		}
		l.Streams[name] = d
	}
	return l, nil
}

// size is a byte size or count: an integer, an integer with a binary unit (KiB, MiB,
// GiB, TiB), or "unlimited" (-1).
type size int64

func (s *size) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*s = size(v)
	return nil
}

func parseSize(v string) (int64, error) {
	v = strings.TrimSpace(v)
	if v == "unlimited" || v == "-1" {
		return -1, nil
	}
	mult := int64(1)
	for unit, m := range map[string]int64{"KiB": kib, "MiB": mib, "GiB": gib, "TiB": gib << 10} {
		if num, ok := strings.CutSuffix(v, unit); ok {
			v, mult = strings.TrimSpace(num), m
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q is not a positive size (like 2GiB, 500MiB, 100000) or unlimited", v)
	}
	return n * mult, nil
}

// age is a duration: Go's syntax (90m, 168h), a number of days (7d), or "unlimited" (0).
type age time.Duration

func (a *age) UnmarshalYAML(n *yaml.Node) error {
	v := strings.TrimSpace(n.Value)
	switch {
	case v == "unlimited" || v == "0":
		*a = 0
		return nil
	case strings.HasSuffix(v, "d"):
		days, err := strconv.Atoi(strings.TrimSuffix(v, "d"))
		if err != nil || days < 1 {
			return fmt.Errorf("line %d: %q is not a number of days", n.Line, v)
		}
		*a = age(time.Duration(days) * day)
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("line %d: %q is not a duration (like 7d, 168h, 90m) or unlimited", n.Line, v)
	}
	*a = age(d)
	return nil
}

// Package archive owns the results bucket (wire.Names.BucketResults, a JetStream object
// store): the output files of completed runs, stored as objects "<run>/<file>" so that
// they can be fetched from anywhere NATS is reachable, not only from the collector's
// volume. The collector stores a run's files (Store) before its status says finished;
// mqctl get reads them back (Fetch) and lists the runs stored (List).
package archive

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/sink"
	"github.com/multiquery/multiquery/internal/wire"
)

// Store uploads the files names of dir as wire.ResultObject(run, name), in the order
// given (summary.json last: its object says the others are there). A file whose object
// already holds the same bytes (size and SHA-256 digest) is not uploaded again, so a
// collector that stopped halfway and stores the run again uploads each file once.
// guard is called before each upload (the collector's lease fence; nil: none). It
// returns how many files it uploaded.
func Store(ctx context.Context, obs jetstream.ObjectStore, run, dir string, names []string, guard func() error) (int, error) {
	uploaded := 0
	for _, name := range names {
		p := filepath.Join(dir, name)
		digest, size, err := fileDigest(p)
		if err != nil {
			return uploaded, err
		}
		obj := wire.ResultObject(run, name)
		info, err := obs.GetInfo(ctx, obj)
		switch {
		case err == nil && info.Size == uint64(size) && info.Digest == digest:
			continue // stored before
		case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
			return uploaded, fmt.Errorf("look up object %s: %w", obj, err)
		}
		if guard != nil {
			if err := guard(); err != nil {
				return uploaded, fmt.Errorf("store %s: %w", obj, err)
			}
		}
		if err := put(ctx, obs, obj, p); err != nil {
			return uploaded, err
		}
		uploaded++
	}
	return uploaded, nil
}

// put uploads the file at path as object obj.
func put(ctx context.Context, obs jetstream.ObjectStore, obj, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store %s: %w", obj, err)
	}
	defer f.Close()
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: obj}, f); err != nil {
		return fmt.Errorf("store %s: %w", obj, err)
	}
	return nil
}

// fileDigest is a file's SHA-256 in the object store's notation, and its size.
func fileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return jetstream.GetObjectDigestValue(h), n, nil
}

// Why Fetch found nothing to fetch.
var (
	// ErrUnknownRun: the run has neither a status nor stored files.
	ErrUnknownRun = errors.New("unknown run")
	// ErrNotComplete: the run is not finished yet; its files are stored when it is.
	ErrNotComplete = errors.New("run not complete")
	// ErrNotStored: the run finished, but its files are not in the bucket (its collector
	// did not store them, or they expired).
	ErrNotStored = errors.New("results not stored")
)

// File is one file Fetch wrote.
type File struct {
	Name string `json:"name"`
	Size uint64 `json:"size"`
}

// Fetch downloads a run's stored files into dir (created if missing), each through a
// temp file and a rename, with mode sink.FileMode; the object store checks every
// object's SHA-256 as it is read, so a file is written whole and byte-identical or not
// at all. A run without stored files is ErrUnknownRun, ErrNotComplete or ErrNotStored,
// with what the run's status says. names are the deployment's bucket names.
func Fetch(ctx context.Context, js jetstream.JetStream, names wire.Names, run, dir string) ([]File, error) {
	return FetchOnly(ctx, js, names, run, dir, sink.OutputFiles(true))
}

// FetchOnly is Fetch of the files named only (of the output set): what a reader of
// part of a run needs (mqctl resubmit reads neither results.jsonl nor the CSV files). A
// file of only that may be missing (sink.Optional) and is not stored is left out.
func FetchOnly(ctx context.Context, js jetstream.JetStream, names wire.Names, run, dir string, only []string) ([]File, error) {
	if err := wire.ValidateRunID(run); err != nil {
		return nil, err
	}
	obs, err := js.ObjectStore(ctx, names.BucketResults())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, whyNotStored(ctx, js, names, run)
	}
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", names.BucketResults(), err)
	}
	// summary.json is stored last: with it, the whole output set is there.
	if _, err := obs.GetInfo(ctx, wire.ResultObject(run, sink.Summary)); errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, whyNotStored(ctx, js, names, run)
	} else if err != nil {
		return nil, fmt.Errorf("look up %s: %w", wire.ResultObject(run, sink.Summary), err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var files []File
	for _, name := range only {
		obj := wire.ResultObject(run, name)
		info, err := obs.GetInfo(ctx, obj)
		if errors.Is(err, jetstream.ErrObjectNotFound) && sink.Optional(name) {
			continue // written with collector --csv only, with a first error row, or not by an earlier build
		}
		if err != nil {
			return files, fmt.Errorf("look up %s: %w", obj, err)
		}
		if err := get(ctx, obs, obj, dir, name, info.Size); err != nil {
			return files, err
		}
		files = append(files, File{Name: name, Size: info.Size})
	}
	return files, nil
}

// get downloads object obj to dir/name; size is the object's.
func get(ctx context.Context, obs jetstream.ObjectStore, obj, dir, name string, size uint64) error {
	res, err := obs.Get(ctx, obj)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", obj, err)
	}
	defer res.Close()
	err = sink.WriteAtomic(dir, name, func(w io.Writer) error {
		n, err := io.Copy(w, res) // the last read checks the digest
		if err == nil && uint64(n) != size {
			err = fmt.Errorf("got %d bytes, the object has %d", n, size)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("fetch %s: %w", obj, err)
	}
	return nil
}

// whyNotStored says why a run has no stored files, from its status in the runs bucket.
func whyNotStored(ctx context.Context, js jetstream.JetStream, names wire.Names, run string) error {
	kv, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	var e jetstream.KeyValueEntry
	if err == nil {
		e, err = kv.Get(ctx, run)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("run %s: %w: no status in %s and no files in %s", run, ErrUnknownRun, names.BucketRuns(), names.BucketResults())
	}
	if err != nil {
		return fmt.Errorf("read status of run %s: %w", run, err)
	}
	var st wire.RunStatus
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return fmt.Errorf("decode status of run %s: %w", run, err)
	}
	switch {
	case !st.Finished:
		total := "?"
		if st.Total > 0 {
			total = fmt.Sprint(st.Total)
		}
		msg := fmt.Sprintf("state %s, %d of %s rows written", st.State, st.Emitted, total)
		if st.State == wire.RunSealed && st.Total > 0 && st.Emitted >= st.Total {
			msg += "; its files are being stored"
		}
		return fmt.Errorf("run %s: %w yet (%s): its files are stored when it completes", run, ErrNotComplete, msg)
	case st.Stored:
		return fmt.Errorf("run %s: %w: it completed and its files were stored, but they are no longer in %s (expired after the bucket's TTL, or deleted); the collector wrote them to %s", run, ErrNotStored, names.BucketResults(), st.OutDir)
	default:
		return fmt.Errorf("run %s: %w: it completed, but its collector did not store its files in %s (collector --store-results=false); they are in %s on the collector's volume", run, ErrNotStored, names.BucketResults(), st.OutDir)
	}
}

// Run is one run's stored files, as List shows them.
type Run struct {
	Run   string `json:"run"`
	Files int    `json:"files"`
	Bytes uint64 `json:"bytes"`
	// Complete: summary.json is stored, so is the whole output set (else the collector
	// is storing it now).
	Complete bool      `json:"complete"`
	Stored   time.Time `json:"stored"` // when its last file was stored
}

// List lists the runs with files in the deployment's results bucket (names), most
// recently stored last.
func List(ctx context.Context, js jetstream.JetStream, names wire.Names) ([]Run, error) {
	obs, err := js.ObjectStore(ctx, names.BucketResults())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", names.BucketResults(), err)
	}
	infos, err := obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", names.BucketResults(), err)
	}
	byRun := map[string]*Run{}
	for _, info := range infos {
		run, file, ok := strings.Cut(info.Name, "/")
		if !ok {
			continue // not ours
		}
		r := byRun[run]
		if r == nil {
			r = &Run{Run: run}
			byRun[run] = r
		}
		r.Files++
		r.Bytes += info.Size
		r.Complete = r.Complete || file == sink.Summary
		if info.ModTime.After(r.Stored) {
			r.Stored = info.ModTime
		}
	}
	out := make([]Run, 0, len(byRun))
	for _, r := range byRun {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Run) int {
		if c := a.Stored.Compare(b.Stored); c != 0 {
			return c
		}
		return strings.Compare(a.Run, b.Run)
	})
	return out, nil
}

// Command mqctl operates a multiquery system: dead letters (list, replay) and run status.
//
//	mqctl dead list [--run ID]
//	mqctl dead replay SEQ...
//	mqctl status RUN
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/multiquery/multiquery/internal/deadletter"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

const usage = `usage:
  mqctl [--nats URL] dead list [--run ID]   list dead-lettered jobs
  mqctl [--nats URL] dead replay SEQ...     publish dead letters again on their subjects
  mqctl [--nats URL] status RUN             print a run's status`

func main() {
	natsURL := flag.String("nats", ops.NATSURL(), "NATS server URL (env NATS_URL)")
	flag.Usage = func() { fmt.Fprintln(os.Stderr, usage); flag.PrintDefaults() }
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := ops.Logger("mqctl", "warn")
	nc, js, err := queue.ConnectJetStream(*natsURL, "multiquery-mqctl", log)
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	if err := queue.WaitConnected(ctx, nc, 10*time.Second); err != nil {
		fail(err)
	}
	switch {
	case len(args) >= 2 && args[0] == "dead" && args[1] == "list":
		fs := flag.NewFlagSet("dead list", flag.ExitOnError)
		run := fs.String("run", "", "only this run")
		_ = fs.Parse(args[2:])
		letters, err := deadletter.List(ctx, js, *run)
		if err != nil {
			fail(err)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tSUBJECT\tBYTES\tREASON")
		for _, l := range letters {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", l.Seq, l.Time.UTC().Format(time.RFC3339), l.Subject, l.Size, l.Reason)
		}
		_ = tw.Flush()
	case len(args) >= 3 && args[0] == "dead" && args[1] == "replay":
		code := 0
		for _, a := range args[2:] {
			seq, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				fail(fmt.Errorf("replay: %q is not a sequence number", a))
			}
			if err := deadletter.Replay(ctx, js, seq); err != nil {
				fmt.Fprintf(os.Stderr, "mqctl: %v\n", err)
				if !errors.Is(err, deadletter.ErrHasResult) {
					code = 1
				}
				continue
			}
			fmt.Printf("replayed dead letter %d\n", seq)
		}
		os.Exit(code)
	case len(args) == 2 && args[0] == "status":
		kv, err := js.KeyValue(ctx, wire.BucketRuns)
		if err != nil {
			fail(err)
		}
		e, err := kv.Get(ctx, args[1])
		if err != nil {
			fail(fmt.Errorf("status of run %s: %w", args[1], err))
		}
		var v any
		_ = json.Unmarshal(e.Value(), &v)
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Println(string(b))
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "mqctl: %v\n", err)
	os.Exit(1)
}

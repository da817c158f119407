// Command mqctl operates a multiquery system: run status and control, dead letters.
//
//	mqctl status RUN [--watch] [--json]
//	mqctl pause|resume|cancel RUN
//	mqctl dead list [--run ID]
//	mqctl dead replay SEQ...
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
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/wire"
)

const usage = `usage:
  mqctl [--nats URL] status RUN [--watch] [--json]   a run's progress, queue, throttle, ETA
  mqctl [--nats URL] pause RUN                       hold the run (its jobs wait, its producer waits)
  mqctl [--nats URL] resume RUN                      resume a paused run
  mqctl [--nats URL] cancel RUN                      cancel: unanswered queries end as 'cancelled' error rows
  mqctl [--nats URL] dead list [--run ID]            list dead-lettered jobs
  mqctl [--nats URL] dead replay SEQ...              publish dead letters again on their subjects (refused for a
                                                     query with a result or a row already written)`

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
				if !errors.Is(err, deadletter.ErrHasResult) && !errors.Is(err, deadletter.ErrRowWritten) {
					code = 1
				}
				continue
			}
			fmt.Printf("replayed dead letter %d\n", seq)
		}
		os.Exit(code)
	case len(args) >= 2 && args[0] == "status":
		fs := flag.NewFlagSet("status", flag.ExitOnError)
		watch := fs.Bool("watch", false, "refresh every 2 s until the run completes")
		asJSON := fs.Bool("json", false, "print JSON")
		_ = fs.Parse(args[2:])
		for {
			r, err := status.Get(ctx, nc, js, args[1], 600*time.Millisecond)
			if err != nil {
				fail(err)
			}
			if *asJSON {
				b, _ := json.MarshalIndent(r, "", "  ")
				fmt.Println(string(b))
			} else {
				fmt.Print(r.Text())
			}
			if !*watch || r.State == wire.RunCompleted {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	case len(args) == 2 && (args[0] == "pause" || args[0] == "resume" || args[0] == "cancel"):
		state := map[string]string{"pause": wire.ControlPaused, "resume": wire.ControlRunning, "cancel": wire.ControlCancelled}[args[0]]
		if err := status.SetControl(ctx, js, args[1], state); err != nil {
			fail(err)
		}
		fmt.Printf("run %s: %s\n", args[1], state)
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "mqctl: %v\n", err)
	os.Exit(1)
}

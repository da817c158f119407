// Command mqctl operates a multiquery system: provisioning the streams, run status and
// control, a run's stored results, resubmitting its error rows, dead letters.
//
//	mqctl provision [--limits FILE] [--replicas N] [--update] [--dry-run]
//	mqctl status RUN [--watch] [--json]
//	mqctl pause|resume|cancel RUN
//	mqctl get RUN [--out DIR]
//	mqctl get --list
//	mqctl resubmit RUN [--only-failed-queries] [--config FILE] [--no-wait] [--json]
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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/archive"
	"github.com/multiquery/multiquery/internal/cli"
	"github.com/multiquery/multiquery/internal/config"
	"github.com/multiquery/multiquery/internal/deadletter"
	"github.com/multiquery/multiquery/internal/natsconn"
	"github.com/multiquery/multiquery/internal/ops"
	"github.com/multiquery/multiquery/internal/proc"
	"github.com/multiquery/multiquery/internal/provision"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/resubmit"
	"github.com/multiquery/multiquery/internal/status"
	"github.com/multiquery/multiquery/internal/version"
	"github.com/multiquery/multiquery/internal/wire"
)

const usage = `usage:
  mqctl [flags] status RUN [--watch] [--json]   a run's progress, queue, throttle, ETA
  mqctl [flags] pause RUN                       hold the run (its jobs wait, its producer waits)
  mqctl [flags] resume RUN                      resume a paused run
  mqctl [flags] cancel RUN                      cancel: unanswered queries end as 'cancelled' error rows
  mqctl [flags] get RUN [--out DIR]             download a completed run's files from bucket mq_results
                                                (<prefix>_mq_results with --prefix)
                                                into DIR (default ./RUN)
  mqctl [flags] get --list                      list the runs with stored files
  mqctl [flags] resubmit RUN [--only-failed-queries] [--config FILE] [--no-wait] [--json]
                                                ask a finished run's error rows again and merge their new
                                                outcome into its files (exit 3: error rows remain); every
                                                query of a row needs --config, the run's pipeline file
  mqctl [flags] dead list [--run ID]            list dead-lettered jobs
  mqctl [flags] dead replay SEQ...              publish dead letters again on their subjects (refused for a
                                                query with a result or a row already written)
  mqctl [flags] provision [--limits FILE] [--replicas N] [--update] [--dry-run]
                                                create every stream and bucket with explicit limits and
                                                report how existing ones differ (--update applies them)
flags (the NATS connection and the deployment's --prefix; each also from its env variable):`

// conn is the NATS connection every subcommand works on, and the names of the
// deployment (--prefix) it works on.
type conn struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	names wire.Names
}

// command is one subcommand: its words, how many arguments follow them, and what it
// does with those arguments (operands first, then its own flags).
type command struct {
	words   []string
	minArgs int
	maxArgs int // -1: no limit
	run     func(ctx context.Context, c conn, args []string) int
}

var commands = []command{
	{words: []string{"provision"}, minArgs: 0, maxArgs: -1, run: provisionCmd},
	{words: []string{"status"}, minArgs: 1, maxArgs: -1, run: statusCmd},
	{words: []string{"pause"}, minArgs: 1, maxArgs: 1, run: controlCmd(wire.ControlPaused)},
	{words: []string{"resume"}, minArgs: 1, maxArgs: 1, run: controlCmd(wire.ControlRunning)},
	{words: []string{"cancel"}, minArgs: 1, maxArgs: 1, run: controlCmd(wire.ControlCancelled)},
	{words: []string{"get"}, minArgs: 1, maxArgs: -1, run: getCmd},
	{words: []string{"resubmit"}, minArgs: 1, maxArgs: -1, run: resubmitCmd},
	{words: []string{"dead", "list"}, minArgs: 0, maxArgs: -1, run: deadListCmd},
	{words: []string{"dead", "replay"}, minArgs: 1, maxArgs: -1, run: deadReplayCmd},
}

// lookup finds the subcommand args name and returns the arguments after its words.
func lookup(args []string) (command, []string, bool) {
	for _, c := range commands {
		if len(args) < len(c.words) || !slices.Equal(args[:len(c.words)], c.words) {
			continue
		}
		rest := args[len(c.words):]
		if len(rest) >= c.minArgs && (c.maxArgs < 0 || len(rest) <= c.maxArgs) {
			return c, rest, true
		}
	}
	return command{}, nil, false
}

func main() { os.Exit(run(os.Args[1:])) }

// run returns the exit code: 0 done, 1 failed, 2 bad usage.
func run(args []string) int {
	fs := flag.NewFlagSet("mqctl", flag.ContinueOnError)
	var natsOpts natsconn.Options
	natsOpts.Register(fs, os.Getenv)
	ver := version.Register(fs)
	var prefix string
	proc.RegisterPrefix(fs, &prefix, os.Getenv)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return cli.ParseExit(err)
	}
	if ver.Print(os.Stdout, "mqctl") {
		return cli.ExitOK
	}
	cmd, rest, ok := lookup(fs.Args())
	if !ok {
		fs.Usage()
		return cli.ExitUsage
	}
	names, err := wire.NewNames(prefix)
	if err != nil {
		return cli.Usage("mqctl", fmt.Errorf("--prefix: %w", err))
	}
	dial, err := natsOpts.Resolve()
	if err != nil {
		return cli.Usage("mqctl", err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	nc, js, err := queue.ConnectJetStream(dial.URL, "multiquery-mqctl", ops.Logger("mqctl", "warn"), dial.Opts...)
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	if err := queue.WaitConnected(ctx, nc, 10*time.Second); err != nil {
		return fail(err)
	}
	return cmd.run(ctx, conn{nc: nc, js: js, names: names}, rest)
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "mqctl: %v\n", err)
	return cli.ExitFailed
}

// provisionCmd: provision [--limits FILE] [--replicas N] [--update] [--dry-run]. It
// needs a NATS user with stream-admin rights.
func provisionCmd(ctx context.Context, c conn, args []string) int {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	limitsPath := fs.String("limits", "", "limits file (YAML; default: the built-in limits, see docs/OPERATIONS.md)")
	replicas := fs.Int("replicas", 0, "stream and bucket replicas (overrides the file's replicas; 3 in a NATS cluster)")
	update := fs.Bool("update", false, "apply the limits and replicas to existing streams and buckets that differ")
	dryRun := fs.Bool("dry-run", false, "change nothing: report what exists, what is missing and what differs")
	if err := fs.Parse(args); err != nil {
		return cli.ParseExit(err)
	}
	if fs.NArg() > 0 {
		return cli.Usage("mqctl", fmt.Errorf("provision: unexpected argument %q", fs.Arg(0)))
	}
	l := provision.Default()
	if *limitsPath != "" {
		var err error
		if l, err = provision.Load(*limitsPath); err != nil {
			return cli.Usage("mqctl", err)
		}
	}
	if *replicas != 0 {
		if *replicas < 1 || *replicas > 5 {
			return cli.Usage("mqctl", fmt.Errorf("--replicas %d: not between 1 and 5", *replicas))
		}
		l.Replicas = *replicas
	}
	results, err := provision.Run(ctx, c.js, c.names, l, provision.Options{Update: *update, DryRun: *dryRun})
	for _, r := range results {
		fmt.Println(r)
	}
	if err != nil {
		return fail(err)
	}
	return cli.ExitOK
}

// statusCmd: status RUN [--watch] [--json].
func statusCmd(ctx context.Context, c conn, args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	watch := fs.Bool("watch", false, "refresh every 2 s until the run completes")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return cli.ParseExit(err)
	}
	for {
		r, err := status.Get(ctx, c.nc, c.js, c.names, args[0], 600*time.Millisecond)
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			b, _ := json.MarshalIndent(r, "", "  ")
			fmt.Println(string(b))
		} else {
			fmt.Print(r.Text())
		}
		if !*watch || r.State == wire.RunCompleted || r.State == wire.SubmitRejected {
			return cli.ExitOK
		}
		select {
		case <-ctx.Done():
			return cli.ExitOK
		case <-time.After(2 * time.Second):
		}
	}
}

// controlCmd: pause|resume|cancel RUN, writing the run's control record.
func controlCmd(state string) func(context.Context, conn, []string) int {
	return func(ctx context.Context, c conn, args []string) int {
		if err := status.SetControl(ctx, c.js, c.names, args[0], state); err != nil {
			return fail(err)
		}
		fmt.Printf("run %s: %s\n", args[0], state)
		return cli.ExitOK
	}
}

// getCmd: get RUN [--out DIR], or get --list.
func getCmd(ctx context.Context, c conn, args []string) int {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	out := fs.String("out", "", "directory to write the run's files to (default ./RUN)")
	list := fs.Bool("list", false, "list the runs with stored files")
	run, rest := "", args
	if !strings.HasPrefix(args[0], "-") {
		run, rest = args[0], args[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return cli.ParseExit(err)
	}
	switch {
	case fs.NArg() > 0 || (*list && (run != "" || *out != "")):
		return cli.Usage("mqctl", errors.New("get: give a run id, or --list alone"))
	case *list:
		return listStored(ctx, c)
	case run == "":
		return cli.Usage("mqctl", errors.New("get: a run id (or --list) is required"))
	}
	dir := *out
	if dir == "" {
		dir = run
	}
	files, err := archive.Fetch(ctx, c.js, c.names, run, dir)
	if err != nil {
		return fail(err)
	}
	for _, f := range files {
		fmt.Printf("%s\t%d bytes\n", filepath.Join(dir, f.Name), f.Size)
	}
	return cli.ExitOK
}

// exitRowErrors is resubmit's exit code when the run still has error rows (as the
// producer's).
const exitRowErrors = 3

// resubmitCmd: resubmit RUN [--only-failed-queries] [--config FILE] [--no-wait]
// [--json]. It waits for the resubmission to be merged into the run's files, then
// prints the run's counts.
func resubmitCmd(ctx context.Context, c conn, args []string) int {
	fs := flag.NewFlagSet("resubmit", flag.ContinueOnError)
	onlyFailed := fs.Bool("only-failed-queries", false, "ask only the failed queries again; the others keep their answers")
	pipeline := fs.String("config", "", "the run's pipeline file (as given to the producer), to render again the queries that had succeeded (needed to ask every query of a row)")
	noWait := fs.Bool("no-wait", false, "return once the resubmission is published")
	asJSON := fs.Bool("json", false, "print JSON")
	if strings.HasPrefix(args[0], "-") {
		return cli.Usage("mqctl", errors.New("resubmit: the run id comes first"))
	}
	if err := fs.Parse(args[1:]); err != nil {
		return cli.ParseExit(err)
	}
	if fs.NArg() > 0 {
		return cli.Usage("mqctl", fmt.Errorf("resubmit: unexpected argument %q", fs.Arg(0)))
	}
	opts := resubmit.Options{OnlyFailed: *onlyFailed}
	if *pipeline != "" {
		p, err := config.LoadPipeline(*pipeline)
		if err != nil {
			return cli.Usage("mqctl", err)
		}
		opts.Pipeline = p
	}
	rep, err := resubmit.Start(ctx, c.js, c.names, args[0], opts, ops.Logger("mqctl", "warn"))
	if errors.Is(err, resubmit.ErrNeedsPipeline) {
		return cli.Usage("mqctl", fmt.Errorf("resubmit: %w: give it with --config FILE, or ask only the failed queries (--only-failed-queries)", err))
	}
	if err != nil {
		return fail(err)
	}
	out := struct {
		resubmit.Report
		Status *wire.RunStatus `json:"status,omitempty"`
	}{Report: rep}
	if !*noWait {
		if rep.Rows > 0 {
			if _, err := status.WaitRun(ctx, c.js, c.names, rep.Resubmission, nil); err != nil {
				return fail(err)
			}
		}
		st, err := status.WaitRun(ctx, c.js, c.names, rep.Run, nil)
		if err != nil {
			return fail(err)
		}
		out.Status = &st
	}
	if *asJSON {
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Println(string(b))
	} else {
		fmt.Printf("run %s: attempt %d (%s): %d error rows asked again (%d queries, %d rendered from the pipeline, %d answers kept), %d cannot be asked again (an error known before any call)\n",
			rep.Run, rep.Attempt, rep.Resubmission, rep.Rows, rep.Jobs, rep.Rendered, rep.Reused, rep.Skipped)
		if out.Status != nil {
			fmt.Printf("run %s: %d rows: %d ok, %d failed\n", rep.Run, out.Status.Total, out.Status.OK, out.Status.Failed)
		}
	}
	if out.Status != nil && out.Status.Failed > 0 {
		return exitRowErrors
	}
	return cli.ExitOK
}

// listStored: get --list.
func listStored(ctx context.Context, c conn) int {
	runs, err := archive.List(ctx, c.js, c.names)
	if err != nil {
		return fail(err)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tFILES\tBYTES\tSTORED")
	for _, r := range runs {
		when := r.Stored.UTC().Format(time.RFC3339)
		if !r.Complete {
			when = "storing (incomplete)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Run, r.Files, r.Bytes, when)
	}
	_ = tw.Flush()
	return cli.ExitOK
}

// deadListCmd: dead list [--run ID].
func deadListCmd(ctx context.Context, c conn, args []string) int {
	fs := flag.NewFlagSet("dead list", flag.ContinueOnError)
	runID := fs.String("run", "", "only this run")
	if err := fs.Parse(args); err != nil {
		return cli.ParseExit(err)
	}
	letters, err := deadletter.List(ctx, c.js, c.names, *runID)
	if err != nil {
		return fail(err)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tSUBJECT\tBYTES\tREASON")
	for _, l := range letters {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", l.Seq, l.Time.UTC().Format(time.RFC3339), l.Subject, l.Size, l.Reason)
	}
	_ = tw.Flush()
	return cli.ExitOK
}

// deadReplayCmd: dead replay SEQ... A replay refused because the query has a result or
// its row is written is reported but is no failure.
func deadReplayCmd(ctx context.Context, c conn, args []string) int {
	code := cli.ExitOK
	for _, a := range args {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return fail(fmt.Errorf("replay: %q is not a sequence number", a))
		}
		if err := deadletter.Replay(ctx, c.js, c.names, seq); err != nil {
			fmt.Fprintf(os.Stderr, "mqctl: %v\n", err)
			if !errors.Is(err, deadletter.ErrHasResult) && !errors.Is(err, deadletter.ErrRowWritten) {
				code = cli.ExitFailed
			}
			continue
		}
		fmt.Printf("replayed dead letter %d\n", seq)
	}
	return code
}

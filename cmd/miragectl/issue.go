package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
)

func newIssue() *cobra.Command {
	var (
		cf      clientFlags
		target  string
		timeout time.Duration
		asJSON  bool

		maxConcurrency, maxErrors, planPath string
		deliverWithin                       time.Duration
		asJSONL                             bool
		noWait                              bool
	)
	c := &cobra.Command{
		Use:   "issue --target SCOPE SEED OPERATION [KEY=VALUE ...] [--timeout DURATION] [--deliver-within DURATION] [--json|--jsonl] [--no-wait] [--max-concurrency N|N%] [--max-errors N|N%] [--plan FILE]",
		Short: "Run an operation of a seed on target Ghosts and report the outcome",
		Long: `issue sends an intent to Mirage: run OPERATION of SEED with the given arguments on every
Ghost in SCOPE. Mirage sends one command per target; issue waits for the terminal report,
printing one line per target (ghost, outcome, exit code, first line of output or error) as
its result arrives, then a summary line; on a terminal, a fan-out shows a progress bar on
stderr meanwhile, below the lines. Targets Mirage does not expect to hear from soon
(unregistered, offline, or stale: heartbeats missed) are named in a note on stderr.
--json prints the terminal report as one JSON object; --jsonl prints one JSON object per
target result as it arrives ({"intent_id", "ghost_id", "outcome", "exit_code", ...}); a
report holds what fits in 1 MiB, so for tens of thousands of targets some results may be
in no report: a note on stderr counts them.

SCOPE is one of:
  all                     every registered Ghost that is not offline
  KEY=VALUE[,KEY=VALUE]   registered Ghosts carrying every one of these labels (role=db,site=lab)
  a comma list of ghost ids and globs (local,edge-1 or edge-* or edge-?1,db-[ab]):
                          a glob matches the ids of registered Ghosts; an id need not be
                          registered (a headless Ghost)
A glob, label selector or all that matches no registered Ghost is refused (exit 2), as is
a registered target that does not host SEED and OPERATION.
A target that gives no terminal event within --timeout is reported as timeout.

Rollout: --max-concurrency N|N% runs at most that many targets at once; --max-errors N|N%
stops the rollout once more targets than that failed: targets not yet started are skipped.

Plans: --plan FILE runs ordered steps as one intent; a step starts when the previous one
is satisfied, and a failure stops the plan (later steps are skipped). A step marked
blocking holds a lock on ghost_id::seed for each of its targets; another intent that needs
one waits, and its reports say which lock. The file:
  target = "edge-*"                 # default scope of the steps (or --target)
  [[step]]
  name = "plan"
  seed = "seed.flow"
  operation = "step"
  args = { name = "plan" }
  blocking = true
  target = "edge-1"                 # optional: this step's own scope

Exit codes: 0 satisfied (every target succeeded); 1 finished but not satisfied; 2 invalid
input or refused by Mirage (reason on stderr); 3 NATS unreachable, no Mirage answered, or
Mirage could not take the issue now (1501 busy: its JetStream store has no room; nothing ran).`,
		Example: `  miragectl issue --target local seed.flow status
  miragectl issue --target local,edge-1 seed.kv put key=a value=b --json
  miragectl issue --target 'edge-*' seed.system uptime
  miragectl issue --target role=db,site=lab seed.flow status --jsonl
  miragectl issue --target edge-1 seed.flow sleep ms=5000 --no-wait
  miragectl issue --target role=db --max-concurrency 2 --max-errors 1 seed.flow sleep ms=200
  miragectl issue --plan deploy/plans/example.toml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var steps []bus.PlanStep
			if planPath != "" {
				if len(args) > 0 {
					return cli.Invalid("--plan takes its steps from the file: no SEED OPERATION arguments")
				}
				planTarget, ps, err := readPlan(planPath)
				if err != nil {
					return err
				}
				steps = ps
				if target == "" {
					target = planTarget
				}
				if target == "" {
					target = firstStepTarget(ps)
				}
				args = []string{ps[0].SeedSelector, ps[0].Operation}
			}
			if target == "" {
				return cli.Invalid("--target is required: a ghost id, a comma list of ids and globs, a label selector KEY=VALUE, or all")
			}
			if asJSON && asJSONL {
				return cli.Invalid("--json and --jsonl exclude each other")
			}
			if asJSONL && noWait {
				return cli.Invalid("--jsonl streams results as they arrive: it cannot be used with --no-wait")
			}
			if len(args) < 2 {
				return cli.Invalid("expected SEED OPERATION [KEY=VALUE ...], got %d argument(s); see miragectl issue --help", len(args))
			}
			if timeout < time.Millisecond || timeout.Milliseconds() > bus.MaxTimeout {
				return cli.Invalid("--timeout %s: must be at least 1ms and at most 24h", shortDuration(timeout))
			}
			kv, err := parseArgs(args[2:])
			if err != nil {
				return err
			}
			for _, l := range []struct{ flag, value string }{{"max-concurrency", maxConcurrency}, {"max-errors", maxErrors}} {
				if _, err := bus.ParseLimit(l.value, 1, 0); err != nil {
					return cli.Invalid("--%s %s: use N (a number of targets) or N%% (0-100%% of them)", l.flag, l.value)
				}
			}
			if deliverWithin < 0 || deliverWithin > timeout || (deliverWithin > 0 && deliverWithin < time.Millisecond) {
				return cli.Invalid("--deliver-within %s: must be 0 (the intent's deadline) or from 1ms to --timeout (%s)", shortDuration(deliverWithin), shortDuration(timeout))
			}
			now := time.Now()
			is := &bus.Issue{
				Header:      bus.NewHeader(bus.TypeIssue, "", now),
				IntentID:    subjects.NewID(subjects.PrefixIntent),
				Actor:       actor(),
				TargetScope: target,
				Objective:   bus.Objective{SeedSelector: args[0], Operation: args[1], Args: kv},
				TimeoutMS:   timeout.Milliseconds(),
				Plan:        steps,

				MaxConcurrency: maxConcurrency,
				MaxErrors:      maxErrors,
			}
			if len(steps) > 0 {
				is.Objective = bus.Objective{}
			}
			if deliverWithin > 0 {
				// A duration, which Mirage counts on its own clock: this machine's may be
				// minutes off it (a deliver_by_ms from a clock 5 minutes behind was refused
				// as past). deliver_by_ms too, for a Mirage of an earlier version, which
				// ignores deliver_within_ms.
				is.DeliverWithinMS = deliverWithin.Milliseconds()
				is.DeliverByMS = now.Add(deliverWithin).UnixMilli()
			}
			if err := is.Validate(); err != nil {
				return cli.Invalid("%s", bus.AsError(err).Message)
			}
			if _, err := bus.Encode(is); err != nil { // over 1 MiB (1101): the input's fault
				return cli.Invalid("%s", bus.AsError(err).Message)
			}
			ctx := cmd.Context()
			// A waiting issue outlives a restart of 'up' or of its server: its connection
			// keeps reconnecting (the wait below bounds it), and the report watch, an
			// ordered consumer, picks up where it was.
			var reconnect []nats.Option
			if !noWait {
				reconnect = waitReconnect()
			}
			client, done, err := cf.client(ctx, "miragectl issue", reconnect...)
			if err != nil {
				return err
			}
			defer done()
			reply, err := client.Issue(ctx, is)
			switch {
			case errors.Is(err, mirage.ErrRejected):
				return refusedExit("issue", reply.Error)
			case err != nil && bus.AsError(err).Code == bus.CodeTooLarge:
				return cli.Invalid("%s", bus.AsError(err).Message)
			case errors.Is(err, mirage.ErrNoMirage) && errors.Is(err, nats.ErrNoResponders):
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("%w: is 'miragectl up' running?", err))
			case errors.Is(err, mirage.ErrNoMirage):
				// No answer in time: a Mirage may have accepted it all the same. Issuing
				// again would be a new intent; this one can be looked up.
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("%w: is 'miragectl up' running? if it is, the intent may have been accepted: check with '%s' before issuing again", err, cf.reportHint(is.IntentID)))
			case errors.Is(err, mirage.ErrAnswerLost):
				// The issue went out and the connection closed before the answer (the
				// server died or was cut off): as above, it may have been accepted.
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("%w: the intent may have been accepted: check with '%s' before issuing again", err, cf.reportHint(is.IntentID)))
			case err != nil:
				return cli.Exit(cli.ExitUnavailable, err)
			}
			noteAbsent(cmd.ErrOrStderr(), reply, timeout)
			out := cmd.OutOrStdout()
			if noWait {
				if asJSON {
					return printJSON(out, map[string]string{"intent_id": reply.IntentID})
				}
				fmt.Fprintln(out, reply.IntentID)
				return nil
			}
			wctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
			defer cancel()
			f := &follower{intentID: reply.IntentID, steps: planNames(steps), lastStep: -1}
			switch {
			case asJSONL:
				f.jsonl = out
			case !asJSON:
				// Each target's line as its result arrives: in a pipe, ssh or cron, where
				// there is no bar, a slow target does not hide the others' results.
				f.lines, f.width = out, ghostWidth(reply.Targets)
			}
			if !asJSON && !asJSONL && len(reply.Targets) > 1 && cli.IsTerminal(os.Stderr) {
				f.what = is.Objective.SeedSelector + " " + is.Objective.Operation
				f.bar = newProgress(cmd.ErrOrStderr(), len(reply.Targets), f.what)
			}
			rep, err := f.follow(wctx, client)
			if err != nil {
				var ee *cli.ExitError
				if errors.As(err, &ee) {
					return err
				}
				if ctx.Err() != nil {
					return cli.Exit(cli.ExitNotSatisfied, fmt.Errorf("interrupted; the intent goes on: %s", cf.reportHint(reply.IntentID)))
				}
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("the intent %s was accepted and goes on, but its report could not be followed (%v): follow it with: %s", reply.IntentID, err, cf.reportHint(reply.IntentID)))
			}
			switch {
			case asJSONL:
			case asJSON:
				if err := printJSON(out, rep); err != nil {
					return err
				}
			default:
				if err := f.printEnd(out, rep); err != nil {
					return err
				}
			}
			return reportExit(rep)
		},
	}
	cf.register(c)
	f := c.Flags()
	f.StringVar(&target, "target", "", "the Ghosts to run on: ids and globs (a,b,edge-*), a label selector (role=db,site=lab) or all (required)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long the intent may take; targets without a terminal event by then are timeout")
	f.BoolVar(&asJSON, "json", false, "print the terminal report envelope as one JSON object")
	f.BoolVar(&asJSONL, "jsonl", false, "print one JSON object per target result as it arrives, and nothing else")
	f.BoolVar(&noWait, "no-wait", false, "print the intent id and return without waiting")
	f.StringVar(&maxConcurrency, "max-concurrency", "", "run at most N targets (or N% of them) at once; the rest start as others finish")
	f.StringVar(&maxErrors, "max-errors", "", "once more than N targets (or N%) failed, skip the targets not yet started")
	f.StringVar(&planPath, "plan", "", "run the ordered steps of a TOML plan file as one intent (see 'miragectl issue --help')")
	f.DurationVar(&deliverWithin, "deliver-within", 0, "commands not delivered within this are not run (expired); default: the whole --timeout")
	return c
}

// waitReconnect are the connection options of a command that waits for a report (issue,
// report --wait or --watch): it outlives a restart of 'up' or of its server, reconnecting
// for as long as it waits, and says once on stderr that it lost the connection.
func waitReconnect() []nats.Option {
	var said atomic.Bool
	return []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil && said.CompareAndSwap(false, true) {
				fmt.Fprintln(os.Stderr, "lost the connection to NATS; reconnecting and waiting for the report (the intent goes on)")
			}
		})}
}

// noteAbsent tells the user, on stderr, which targets Mirage does not expect to hear from
// soon (bus.IssueReply): unregistered, offline, or stale (heartbeats missed, not offline
// yet). Their commands wait for them, so a mistyped id or a stopped Ghost would otherwise
// show only as a timeout at the end.
func noteAbsent(w io.Writer, reply *bus.IssueReply, timeout time.Duration) {
	list := func(ids []string) string {
		s := strings.Join(ids, ", ")
		if len(ids) >= 10 {
			s += " (the first 10)"
		}
		return s
	}
	if len(reply.Unregistered) > 0 {
		fmt.Fprintf(w, "note: not registered with Mirage: %s; a command waits for a Ghost of that id to connect, up to the timeout (%s)\n", list(reply.Unregistered), shortDuration(timeout))
	}
	if len(reply.Offline) > 0 {
		fmt.Fprintf(w, "note: offline: %s; a command waits for its Ghost to reconnect, up to the timeout (%s)\n", list(reply.Offline), shortDuration(timeout))
	}
	if len(reply.Stale) > 0 {
		heard := make([]string, len(reply.Stale))
		for i, st := range reply.Stale {
			heard[i] = fmt.Sprintf("%s last heard %s ago", st.GhostID, shortDuration(time.Duration(st.SilentMS/1000)*time.Second))
		}
		waits := "its command waits for it"
		if len(reply.Stale) > 1 {
			waits = "their commands wait for them"
		}
		fmt.Fprintf(w, "note: %s (missed heartbeats: stopped or cut off?); %s, up to the timeout (%s)\n", list(heard), waits, shortDuration(timeout))
	}
}

// reportHint is the command that follows an intent to its end, with the --server this
// command needed, so that it can be copied as it is.
func (f *clientFlags) reportHint(intentID string) string {
	return "miragectl report " + intentID + " --wait" + serverFlagFor(bus.ServerURL(f.server))
}

// parseArgs reads KEY=VALUE operation arguments.
func parseArgs(kvs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range kvs {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, cli.Invalid("argument %q: expected KEY=VALUE", a)
		}
		if _, dup := out[k]; dup {
			return nil, cli.Invalid("argument %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// actor names who issued an intent: user@host.
func actor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return name
}

// follower follows an intent's reports to the terminal one, streaming each target's
// result once as it arrives, as a JSON line (jsonl) or as a human line (lines), and
// driving a progress bar (bar), when set.
type follower struct {
	intentID string
	jsonl    io.Writer
	lines    io.Writer
	width    int // of the ghost column of lines
	bar      *progressbar.ProgressBar
	what     string          // the operation, named beside the bar
	printed  map[string]bool // results streamed (resultKey)
	writeErr error
	// A plan's steps (names by index, "" for a step without one): human lines go under a
	// "step 2/3 apply:" line whenever the step changes (stepHeader).
	steps    []string
	lastStep int // of the last human line written; -1 before the first
}

// writeLine writes a result's human line, under its step's header when it is a plan's
// and the last line written was of another step.
func (f *follower) writeLine(w io.Writer, res bus.TargetResult) error {
	if len(f.steps) > 1 && res.Step != f.lastStep {
		f.lastStep = res.Step
		if _, err := io.WriteString(w, stepHeader(res.Step, max(len(f.steps), res.Step+1), f.steps)+"\n"); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, targetLine(res, f.width))
	return err
}

func (f *follower) follow(ctx context.Context, client *mirage.Client) (*bus.Report, error) {
	f.printed = map[string]bool{}
	var final *bus.Report
	err := client.WatchReports(ctx, f.intentID, func(r *bus.Report) bool {
		if (f.jsonl != nil || f.lines != nil) && !f.stream(r) {
			return false
		}
		if f.bar != nil {
			showProgress(f.bar, f.what, r.Counts)
		}
		if bus.Terminal(r.Phase) {
			final = r
			return false
		}
		return true
	})
	if f.bar != nil && !f.bar.IsFinished() {
		_ = f.bar.Exit()
	}
	if f.writeErr != nil {
		return nil, f.writeErr
	}
	if final != nil {
		if missing := final.Counts.Targets - len(f.printed); f.jsonl != nil && missing > 0 {
			// A report holds what fits in one envelope: the results of a large intent
			// that no report carried were not streamed. Say so rather than end short.
			fmt.Fprintf(os.Stderr, "note: %d of %d results were in no report (a report holds what fits in 1 MiB): see 'miragectl report %s --json' for the counts, EDGE_EVT for their events\n", missing, final.Counts.Targets, f.intentID)
		}
		return final, nil
	}
	if err == nil {
		err = errors.New("the report stream ended")
	}
	return nil, err
}

// stream writes the results that left pending since the last report; false when stdout
// is gone. Human lines go above the progress bar: it is cleared first, and drawn again
// below them by showProgress.
func (f *follower) stream(r *bus.Report) bool {
	cleared := false
	for _, res := range r.Results {
		if res.Outcome == bus.OutcomePending || f.printed[resultKey(res)] {
			continue
		}
		f.printed[resultKey(res)] = true
		var err error
		if f.jsonl != nil {
			err = printJSON(f.jsonl, resultLine{IntentID: r.IntentID, Step: res.Step, TargetResult: res})
		} else {
			if f.bar != nil && !cleared && !f.bar.IsFinished() {
				_ = f.bar.Clear()
				cleared = true
			}
			err = f.writeLine(f.lines, res)
		}
		if err != nil {
			f.writeErr = cli.Exit(cli.ExitUnavailable, fmt.Errorf("writing results: %w", err))
			return false
		}
	}
	return true
}

// resultKey names a result among an intent's: its command_id, or its step and ghost.
func resultKey(res bus.TargetResult) string {
	if res.CommandID != "" {
		return res.CommandID
	}
	return fmt.Sprintf("%d/%s", res.Step, res.GhostID)
}

// printEnd ends issue's human output once the report is terminal: the lines of the
// results not streamed yet (timeouts, skipped and expired targets come with the terminal
// report), in the report's order, then what printReport writes below its lines.
func (f *follower) printEnd(w io.Writer, r *bus.Report) error {
	for _, res := range r.Results {
		if f.printed[resultKey(res)] {
			continue
		}
		f.printed[resultKey(res)] = true
		if err := f.writeLine(w, res); err != nil {
			return err
		}
	}
	return printReportEnd(w, r)
}

// targetLine is a target's line of issue's human output: ghost, outcome, exit code, first
// line of output or error, in columns as printReport writes them. Lines are written as
// results arrive, so the columns are set in advance: the ghost column as wide as the
// longest target id (ghostWidth), the outcome one as the longest outcome, the exit code
// one three characters.
func targetLine(res bus.TargetResult, width int) string {
	line := fmt.Sprintf("%-*s  %-7s  %-3s  %s", width, res.GhostID, res.Outcome, exitColumn(res), firstLine(res))
	return strings.TrimRight(line, " ") + "\n"
}

// ghostWidth is the width of the ghost column for these targets.
func ghostWidth(targets []string) int {
	w := 0
	for _, id := range targets {
		w = max(w, len(id))
	}
	return w
}

// newProgress returns a progress bar of done/total targets on w.
func newProgress(w io.Writer, total int, what string) *progressbar.ProgressBar {
	return progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
}

// showProgress sets the bar to the targets done, naming the errors so far (error, timeout
// and expired outcomes).
func showProgress(bar *progressbar.ProgressBar, what string, c bus.Counts) {
	bad := c.Error + c.Timeout + c.Expired
	desc := fmt.Sprintf("%s, errors: %d", what, bad)
	if c.Skipped > 0 {
		desc += fmt.Sprintf(", %d skipped", c.Skipped)
	}
	bar.Describe(desc)
	_ = bar.Set(c.Targets - c.Pending)
}

// firstStepTarget is the scope of a plan whose steps all name their own.
func firstStepTarget(steps []bus.PlanStep) string {
	for _, s := range steps {
		if s.TargetScope == "" {
			return ""
		}
	}
	return steps[0].TargetScope
}

// shortDuration writes d as an operator writes it: 25h, 1h30m, 90s (not 25h0m0s).
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// refusedExit is the exit of an issue (what: "issue", "install") Mirage refused: 2, the
// issue's fault, or 3 when Mirage could not take it now (1501 busy: its JetStream store
// has no room), nothing run or recorded: the same issue may be sent again later.
func refusedExit(what string, perr *bus.Error) error {
	if perr.Code == bus.CodeBusy {
		return cli.Exit(cli.ExitUnavailable, fmt.Errorf("Mirage could not take the %s now: %s", what, perr.Message))
	}
	return cli.Exit(cli.ExitInvalid, fmt.Errorf("Mirage refused the %s: %s", what, perr.Message))
}

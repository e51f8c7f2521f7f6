package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
)

func newReport() *cobra.Command {
	var (
		cf     clientFlags
		asJSON bool
		wait   bool
		watch  bool
		limit  time.Duration
	)
	c := &cobra.Command{
		Use:   "report INTENT_ID [--json] [--wait | --watch] [--timeout DURATION]",
		Short: "Print the latest report of an intent, or follow it",
		Long: `report prints the latest report Mirage published for an intent (from the EDGE_REPORT
stream, so it works after the fact). With --wait it blocks until the report is terminal.
With --watch it prints the latest report and then each new one as Mirage publishes it,
until the terminal one: a line with the phase and counts each time, then the per-target
lines of the terminal report; with --json, one report envelope per line. Waiting or
watching, it reconnects when its connection is lost, and gives up --timeout after it
started, by default 30 s after the intent's deadline: by then Mirage has published the
terminal report unless no Mirage is running (exit 3). A --timeout that ends the wait before
that leaves the intent running (exit 1, with its deadline).

Exit codes: 0 printed (and, when terminal, satisfied); 1 the intent failed, or --timeout
ended the wait before the intent did; 2 no such intent; 3 NATS unreachable, or no terminal
report 30 s after the intent's deadline.`,
		Example: `  miragectl report int_RQCvydW4imscmOSQZcYhDi
  miragectl report int_RQCvydW4imscmOSQZcYhDi --watch
  miragectl report int_RQCvydW4imscmOSQZcYhDi --wait --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := subjects.ValidateToken("intent_id", id); err != nil {
				return cli.Invalid("%v", err)
			}
			if wait && watch {
				return cli.Invalid("--wait and --watch: use one (--watch also ends at the terminal report)")
			}
			if limit < 0 {
				return cli.Invalid("--timeout %s: give a positive duration", shortDuration(limit))
			}
			if limit > 0 && !wait && !watch {
				return cli.Invalid("--timeout %s bounds a wait: it needs --wait or --watch", shortDuration(limit))
			}
			ctx := cmd.Context()
			var reconnect []nats.Option
			if wait || watch {
				reconnect = waitReconnect()
			}
			client, done, err := cf.client(ctx, "miragectl report", reconnect...)
			if err != nil {
				return err
			}
			defer done()
			// The latest report first, so that an unknown intent fails now instead of
			// being waited for forever.
			rep, err := client.LatestReport(ctx, id)
			var w waitBound
			if err == nil && !bus.Terminal(rep.Phase) && (wait || watch) {
				w = waitBoundFor(ctx, client, rep, limit, time.Now())
				wctx, cancel := context.WithDeadline(ctx, w.until)
				defer cancel()
				if watch {
					rep, err = watchReport(wctx, client, cmd.OutOrStdout(), id, asJSON)
				} else {
					rep, err = client.WaitTerminal(wctx, id)
				}
			}
			switch {
			case errors.Is(err, mirage.ErrIntentNotFound):
				return cli.Exit(cli.ExitInvalid, fmt.Errorf("no report for intent %s", id))
			case err != nil && ctx.Err() != nil:
				return cli.Exit(cli.ExitNotSatisfied, fmt.Errorf("interrupted before the report was terminal"))
			case err != nil && !w.until.IsZero() && !time.Now().Before(w.until):
				return w.ended(id, time.Now(), cf.reportHint(id))
			case err != nil:
				return cli.Exit(cli.ExitUnavailable, err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				err = printJSON(out, rep)
			} else {
				err = printReportSteps(out, rep, recordedStepNames(ctx, client, rep))
			}
			if err != nil {
				return err
			}
			return reportExit(rep)
		},
	}
	cf.register(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print the report envelope as one JSON object (with --watch: one per line)")
	c.Flags().BoolVar(&wait, "wait", false, "wait until the report is terminal")
	c.Flags().BoolVar(&watch, "watch", false, "print each new report as it arrives, until the terminal one")
	c.Flags().DurationVar(&limit, "timeout", 0, "with --wait or --watch: give up after this long (exit 1 while the intent may still run); default: 30 s after the intent's deadline")
	return c
}

// waitGrace is how long past an intent's deadline a wait for its terminal report goes on:
// Mirage publishes it within a second or so of the deadline; more time than that covers a
// Mirage restarting.
const waitGrace = 30 * time.Second

// waitBound is how long a wait for the terminal report of an open intent goes on, and the
// intent's own deadline.
type waitBound struct {
	until    time.Time // when the wait gives up
	deadline time.Time // the intent's deadline (from its record, else the latest it can be)
	limit    time.Duration
	recorded bool // deadline was read from the intent's record
}

// waitBoundFor is waitUntil for this machine's clock at now, told how far it is ahead of
// the NATS server's (Mirage's, which stamps deadlines and reports, should agree with the
// server's): a client 5 minutes ahead gave up on a 2-minute intent 30 s into it, and
// blamed Mirage (exit 3). When the server does not say its time, this clock is taken
// for it.
func waitBoundFor(ctx context.Context, client *mirage.Client, latest *bus.Report, limit time.Duration, now time.Time) waitBound {
	var ahead time.Duration
	if server, err := client.ServerNow(ctx); err == nil {
		ahead = now.Sub(server)
	}
	return waitUntil(ctx, client, latest, limit, now, ahead)
}

// waitUntil is when a wait for the terminal report of an open intent gives up: limit after
// now when one is given, else waitGrace after the intent's deadline (read from its record)
// or after now, whichever is later. Without a readable record, the longest an intent may
// last (bus.MaxTimeout) counts from its latest report. Those times are on Mirage's clock,
// and now on this machine's, ahead of Mirage's by ahead: the bound and the deadline are
// given on this machine's clock.
func waitUntil(ctx context.Context, client *mirage.Client, latest *bus.Report, limit time.Duration, now time.Time, ahead time.Duration) waitBound {
	w := waitBound{deadline: time.UnixMilli(latest.TimestampMS + bus.MaxTimeout).Add(ahead), limit: limit}
	if rec, err := client.Intent(ctx, latest.IntentID); err == nil && rec.DeadlineMS > 0 {
		w.deadline, w.recorded = time.UnixMilli(rec.DeadlineMS).Add(ahead), true
	}
	if limit > 0 {
		w.until = now.Add(limit)
		return w
	}
	w.until = w.deadline
	if w.until.Before(now) {
		w.until = now
	}
	w.until = w.until.Add(waitGrace)
	return w
}

// ended is the error of a wait that gave up at w.until (now) with the intent still open.
// Only waitGrace past the intent's deadline does the missing report point at Mirage (it
// publishes the terminal report within a second or so of the deadline): exit 3. Before
// that, the wait's own --timeout ended it while the intent may still be running, as an
// interruption would: exit 1, with the deadline and how to follow it.
func (w waitBound) ended(id string, now time.Time, hint string) error {
	if !now.Before(w.deadline.Add(waitGrace)) {
		why := "by --timeout"
		if w.limit == 0 {
			why = "30 s after the intent's deadline"
		}
		return cli.Exit(cli.ExitUnavailable, fmt.Errorf("no terminal report of intent %s %s (%s): is a Mirage running? It publishes the outcome once it is; check again with: %s",
			id, why, w.until.Format(time.TimeOnly), hint))
	}
	deadline := "its deadline is " + w.deadline.Format(time.TimeOnly)
	if !w.recorded {
		deadline = "it ends by " + w.deadline.Format(time.DateTime) + " at the latest"
	}
	if w.deadline.Before(now) {
		deadline = "its deadline passed at " + w.deadline.Format(time.TimeOnly) + " and Mirage reports its outcome shortly"
	}
	return cli.Exit(cli.ExitNotSatisfied, fmt.Errorf("intent %s has not ended by --timeout %s (%s): it may still be running (%s); follow it with: %s",
		id, shortDuration(w.limit), w.until.Format(time.TimeOnly), deadline, hint))
}

// recordedStepNames are the names of the steps of a plan's report, from its intent's
// record; nil for an intent of one step, or when the record cannot be read (the step
// headers then go without names).
func recordedStepNames(ctx context.Context, client *mirage.Client, r *bus.Report) []string {
	if planSteps(r, nil) < 2 {
		return nil
	}
	rec, err := client.Intent(ctx, r.IntentID)
	if err != nil {
		return nil
	}
	names := make([]string, len(rec.Steps))
	for i, s := range rec.Steps {
		names[i] = s.Name
	}
	return names
}

// watchReport prints each report of an open intent but the terminal one, which it returns
// for the caller to print: with asJSON one envelope per line, else "time  summary".
func watchReport(ctx context.Context, client *mirage.Client, w io.Writer, id string, asJSON bool) (*bus.Report, error) {
	var final *bus.Report
	var werr error
	err := client.FollowReports(ctx, id, func(r *bus.Report) bool {
		if bus.Terminal(r.Phase) {
			final = r
			return false
		}
		if asJSON {
			werr = printJSON(w, r)
		} else {
			_, werr = fmt.Fprintf(w, "%s  %s\n", time.UnixMilli(r.TimestampMS).Format(time.TimeOnly), r.Summary)
		}
		return werr == nil
	})
	switch {
	case werr != nil:
		return nil, werr
	case final != nil:
		return final, nil
	case err == nil:
		return nil, errors.New("the report stream ended")
	}
	return nil, err
}

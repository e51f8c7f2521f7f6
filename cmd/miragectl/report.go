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
		Use:   "report INTENT_ID [--json] [--wait | --watch]",
		Short: "Print the latest report of an intent, or follow it",
		Long: `report prints the latest report Mirage published for an intent (from the EDGE_REPORT
stream, so it works after the fact). With --wait it blocks until the report is terminal.
With --watch it prints the latest report and then each new one as Mirage publishes it,
until the terminal one: a line with the phase and counts each time, then the per-target
lines of the terminal report; with --json, one report envelope per line. Waiting or
watching, it reconnects when its connection is lost, and gives up (exit 3) --timeout after
it started, by default 30 s after the intent's deadline: by then Mirage has published the
terminal report unless no Mirage is running.

Exit codes: 0 printed (and, when terminal, satisfied); 1 the intent failed; 2 no such
intent; 3 NATS unreachable, or no terminal report by --timeout.`,
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
			if limit < 0 || (limit > 0 && !wait && !watch) {
				return cli.Invalid("--timeout %s: give a positive duration, with --wait or --watch", shortDuration(limit))
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
			var until time.Time
			if err == nil && !bus.Terminal(rep.Phase) && (wait || watch) {
				until = waitUntil(ctx, client, rep, limit, time.Now())
				wctx, cancel := context.WithDeadline(ctx, until)
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
			case err != nil && !until.IsZero() && !time.Now().Before(until):
				why := "by --timeout"
				if limit == 0 {
					why = "30 s after the intent's deadline"
				}
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("no terminal report of intent %s %s (%s): is a Mirage running? It publishes the outcome once it is; check again with: %s",
					id, why, until.Format(time.TimeOnly), cf.reportHint(id)))
			case err != nil:
				return cli.Exit(cli.ExitUnavailable, err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				err = printJSON(out, rep)
			} else {
				err = printReport(out, rep)
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
	c.Flags().DurationVar(&limit, "timeout", 0, "with --wait or --watch: give up after this long (exit 3); default: 30 s after the intent's deadline")
	return c
}

// waitGrace is how long past an intent's deadline a wait for its terminal report goes on:
// Mirage publishes it within a second or so of the deadline; more time than that covers a
// Mirage restarting.
const waitGrace = 30 * time.Second

// waitUntil is when a wait for the terminal report of an open intent gives up: limit after
// now when one is given, else waitGrace after the intent's deadline (read from its record)
// or after now, whichever is later. Without a readable record, the longest an intent may
// last (bus.MaxTimeout) counts from its latest report.
func waitUntil(ctx context.Context, client *mirage.Client, latest *bus.Report, limit time.Duration, now time.Time) time.Time {
	if limit > 0 {
		return now.Add(limit)
	}
	deadline := time.UnixMilli(latest.TimestampMS + bus.MaxTimeout)
	if rec, err := client.Intent(ctx, latest.IntentID); err == nil && rec.DeadlineMS > 0 {
		deadline = time.UnixMilli(rec.DeadlineMS)
	}
	if deadline.Before(now) {
		deadline = now
	}
	return deadline.Add(waitGrace)
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

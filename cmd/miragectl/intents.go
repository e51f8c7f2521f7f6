package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
)

// intentLine is one intent of the listing (and of intents --json).
type intentLine struct {
	IntentID    string     `json:"intent_id"`
	Phase       string     `json:"phase"`
	Counts      bus.Counts `json:"counts"`
	CreatedMS   int64      `json:"created_ms"`
	FinishedMS  int64      `json:"finished_ms"`
	TargetScope string     `json:"target_scope"`
	Seed        string     `json:"seed"`
	Operation   string     `json:"operation"`
	Summary     string     `json:"summary"`
	steps       int        // of a plan
}

func newIntents() *cobra.Command {
	var (
		cf     clientFlags
		asJSON bool
		limit  int
	)
	c := &cobra.Command{
		Use:   "intents [--json] [--limit N]",
		Short: "List recent intents with their phase and counts",
		Long: `intents lists the most recent intents recorded in KV edge_intents (kept 7 days), newest
first, with their phase and counts by outcome. An open intent shows the phase and counts of
its latest report.

--json prints a JSON array of {intent_id, phase, counts, created_ms, finished_ms,
target_scope, seed, operation, summary}; finished_ms is 0 while the intent is open.`,
		Example: `  miragectl intents
  miragectl intents --limit 5 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return cli.Invalid("--limit %d: must be 0 (every intent) or more", limit)
			}
			ctx := cmd.Context()
			client, done, err := cf.client(ctx, "miragectl intents")
			if err != nil {
				return err
			}
			defer done()
			recs, err := client.Intents(ctx, limit)
			if err != nil {
				return cli.Exit(cli.ExitUnavailable, err)
			}
			lines := make([]intentLine, 0, len(recs))
			for _, rec := range recs {
				line, err := describeIntent(cmd, client, rec)
				if err != nil {
					return err
				}
				lines = append(lines, line)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, lines)
			}
			if len(lines) == 0 {
				fmt.Fprintln(out, "no intents recorded")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INTENT\tPHASE\tTARGETS\tSUCCESS\tERROR\tTIMEOUT\tEXPIRED\tSKIPPED\tCREATED\tSEED\tOPERATION")
			// How long ago, on the server's clock (Mirage stamped created_ms on it): this
			// machine's may be minutes off, and every intent read as that much older.
			now := localNow()
			if server, err := client.ServerNow(ctx); err == nil {
				now = server
			}
			for _, l := range lines {
				if l.Seed == "" && l.steps > 0 { // a plan: its steps have their own seeds
					l.Seed, l.Operation = "plan", fmt.Sprintf("%d steps", l.steps)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", l.IntentID, l.Phase, l.Counts.Targets, l.Counts.Success,
					l.Counts.Error, l.Counts.Timeout, l.Counts.Expired, l.Counts.Skipped, ago(now, time.UnixMilli(l.CreatedMS)), l.Seed, l.Operation)
			}
			return tw.Flush()
		},
	}
	cf.register(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of {intent_id, phase, counts, created_ms, finished_ms, target_scope, seed, operation, summary}")
	c.Flags().IntVar(&limit, "limit", 20, "how many intents to list, newest first (0: every one)")
	return c
}

// describeIntent is an intent's line. A record holds the intent as accepted (records of
// earlier versions may be terminal): its phase, counts and end come from its latest
// report, else every target is pending.
func describeIntent(cmd *cobra.Command, client *mirage.Client, rec mirage.IntentRecord) (intentLine, error) {
	l := intentLine{
		IntentID: rec.IntentID, Phase: rec.Phase, Counts: rec.Counts, CreatedMS: rec.CreatedMS, FinishedMS: rec.FinishedMS,
		TargetScope: rec.Issue.TargetScope, Seed: rec.Issue.Objective.SeedSelector, Operation: rec.Issue.Objective.Operation, Summary: rec.Summary,
		steps: len(rec.Issue.Plan),
	}
	if bus.Terminal(rec.Phase) {
		return l, nil
	}
	rep, err := client.LatestReport(cmd.Context(), rec.IntentID)
	switch {
	case err == nil:
		l.Phase, l.Counts, l.Summary = rep.Phase, rep.Counts, rep.Summary
		if bus.Terminal(rep.Phase) {
			l.FinishedMS = rep.TimestampMS
		}
	case errors.Is(err, mirage.ErrIntentNotFound):
		n := len(rec.Targets)
		l.Counts = bus.Counts{Targets: n, Pending: n}
		l.Summary = mirage.Summary(l.Phase, l.Counts)
	default:
		return l, cli.Exit(cli.ExitUnavailable, err)
	}
	return l, nil
}

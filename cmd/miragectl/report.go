package main

import (
	"errors"
	"fmt"

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
	)
	c := &cobra.Command{
		Use:   "report INTENT_ID [--json] [--wait]",
		Short: "Print the latest report of an intent",
		Long: `report prints the latest report Mirage published for an intent (from the EDGE_REPORT
stream, so it works after the fact). With --wait it blocks until the report is terminal.

Exit codes: 0 printed (and, when terminal, satisfied); 1 the intent failed; 2 no such
intent; 3 NATS unreachable.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := subjects.ValidateToken("intent_id", id); err != nil {
				return cli.Invalid("%v", err)
			}
			ctx := cmd.Context()
			nc, err := cli.Connect(ctx, cf.server, "miragectl report")
			if err != nil {
				return err
			}
			defer nc.Close()
			client, err := mirage.NewClient(nc)
			if err != nil {
				return cli.Exit(cli.ExitUnavailable, err)
			}
			var rep *bus.Report
			if wait {
				rep, err = client.WaitTerminal(ctx, id)
			} else {
				rep, err = client.LatestReport(ctx, id)
			}
			switch {
			case errors.Is(err, mirage.ErrIntentNotFound):
				return cli.Exit(cli.ExitInvalid, fmt.Errorf("no report for intent %s", id))
			case err != nil && ctx.Err() != nil:
				return cli.Exit(cli.ExitNotSatisfied, fmt.Errorf("interrupted before the report was terminal"))
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
	c.Flags().BoolVar(&asJSON, "json", false, "print the report envelope as one JSON object")
	c.Flags().BoolVar(&wait, "wait", false, "wait until the report is terminal")
	return c
}

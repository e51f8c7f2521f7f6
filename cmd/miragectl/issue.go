package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

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
		noWait  bool
	)
	c := &cobra.Command{
		Use:   "issue --target SCOPE SEED OPERATION [KEY=VALUE ...] [--timeout DURATION] [--json] [--no-wait]",
		Short: "Run an operation of a seed on target Ghosts and report the outcome",
		Long: `issue sends an intent to Mirage: run OPERATION of SEED with the given arguments on every
Ghost in SCOPE. Mirage sends one command per target; issue waits for the terminal report
and prints one line per target (ghost, outcome, exit code, first line of output or error)
and a summary line.

SCOPE is a ghost id or a comma list of ghost ids (local,edge-1).
A target that gives no terminal event within --timeout is reported as timeout.

Exit codes: 0 satisfied (every target succeeded); 1 finished but not satisfied; 2 invalid
input or refused by Mirage (reason on stderr); 3 NATS unreachable or no Mirage answered.`,
		Example: `  miragectl issue --target local seed.flow status
  miragectl issue --target local,edge-1 seed.kv put key=a value=b --json
  miragectl issue --target edge-1 seed.flow sleep ms=5000 --no-wait`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return cli.Invalid("--target is required: a ghost id or a comma list of ghost ids")
			}
			if len(args) < 2 {
				return cli.Invalid("expected SEED OPERATION [KEY=VALUE ...], got %d argument(s); see miragectl issue --help", len(args))
			}
			if timeout <= 0 || timeout.Milliseconds() > bus.MaxTimeout {
				return cli.Invalid("--timeout %s: must be positive and at most 24h", timeout)
			}
			kv, err := parseArgs(args[2:])
			if err != nil {
				return err
			}
			now := time.Now()
			is := &bus.Issue{
				Header:      bus.NewHeader(bus.TypeIssue, "", now),
				IntentID:    subjects.NewID(subjects.PrefixIntent),
				Actor:       actor(),
				TargetScope: target,
				Objective:   bus.Objective{SeedSelector: args[0], Operation: args[1], Args: kv},
				TimeoutMS:   timeout.Milliseconds(),
			}
			if err := is.Validate(); err != nil {
				return cli.Invalid("%s", bus.AsError(err).Message)
			}
			ctx := cmd.Context()
			nc, err := cli.Connect(ctx, cf.server, "miragectl issue")
			if err != nil {
				return err
			}
			defer nc.Close()
			client, err := mirage.NewClient(nc)
			if err != nil {
				return cli.Exit(cli.ExitUnavailable, err)
			}
			reply, err := client.Issue(ctx, is)
			switch {
			case errors.Is(err, mirage.ErrRejected):
				return cli.Exit(cli.ExitInvalid, fmt.Errorf("Mirage refused the issue: %s", reply.Error.Message))
			case errors.Is(err, mirage.ErrNoMirage):
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("%w: is 'miragectl up' running?", err))
			case err != nil:
				return cli.Exit(cli.ExitUnavailable, err)
			}
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
			rep, err := client.WaitTerminal(wctx, reply.IntentID)
			if err != nil {
				if ctx.Err() != nil {
					return cli.Exit(cli.ExitNotSatisfied, fmt.Errorf("interrupted; the intent goes on: miragectl report %s --wait", reply.IntentID))
				}
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("no terminal report for %s: %v (is Mirage running?)", reply.IntentID, err))
			}
			if asJSON {
				if err := printJSON(out, rep); err != nil {
					return err
				}
			} else if err := printReport(out, rep); err != nil {
				return err
			}
			return reportExit(rep)
		},
	}
	cf.register(c)
	f := c.Flags()
	f.StringVar(&target, "target", "", "the Ghosts to run on: a ghost id or a comma list (required)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long the intent may take; targets without a terminal event by then are timeout")
	f.BoolVar(&asJSON, "json", false, "print the terminal report envelope as one JSON object")
	f.BoolVar(&noWait, "no-wait", false, "print the intent id and return without waiting")
	return c
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

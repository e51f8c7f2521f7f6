package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
)

func newAttach() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "attach GHOST_ID",
		Short: "Bring a headless Ghost into the registry: it registers and heartbeats from now on",
		Long: `attach asks a running Ghost, through Mirage, to register now. A Ghost with policy headless
serves commands without registering; once attached it appears in 'miragectl ghosts',
sends heartbeats, and registers again whenever a Mirage restarts.

Exit codes: 0 attached; 2 invalid id or refused; 3 NATS, Mirage or the Ghost unreachable.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := subjects.ValidateGhostID(args[0]); err != nil {
				return cli.Invalid("%v", err)
			}
			ctx := cmd.Context()
			nc, err := cf.connect(ctx, "miragectl attach")
			if err != nil {
				return err
			}
			defer nc.Close()
			data, _ := json.Marshal(mirage.AttachRequest{GhostID: args[0]})
			rctx, cancel := context.WithTimeout(ctx, bus.AttachClientWait)
			defer cancel()
			msg, err := nc.RequestWithContext(rctx, subjects.Attach, data)
			if err != nil {
				if errors.Is(err, nats.ErrNoResponders) || errors.Is(rctx.Err(), context.DeadlineExceeded) {
					return cli.Exit(cli.ExitUnavailable, fmt.Errorf("no Mirage answered on %s: is 'miragectl up' running?", subjects.Attach))
				}
				return cli.Exit(cli.ExitUnavailable, err)
			}
			var reply struct{ Status, Reason string }
			if err := json.Unmarshal(msg.Data, &reply); err != nil {
				// Something other than a Mirage of this version answered: no intent to
				// judge (exit 1), the control plane is not usable (exit 3).
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("malformed reply on %s: %w", subjects.Attach, err))
			}
			switch reply.Status {
			case "accepted":
				fmt.Fprintf(cmd.OutOrStdout(), "attached %s: it is registered and sends heartbeats\n", args[0])
				return nil
			case "unreachable":
				return cli.Exit(cli.ExitUnavailable, errors.New(reply.Reason))
			default:
				return cli.Invalid("attach %s refused: %s", args[0], reply.Reason)
			}
		},
	}
	cf.register(c)
	return c
}

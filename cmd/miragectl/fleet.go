package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

func newFleet() *cobra.Command {
	c := &cobra.Command{
		Use:   "fleet add GHOST_ID PUBLIC_NKEY | rm GHOST_ID | ls | auth-config",
		Short: "Enroll and revoke Ghost identities (nkeys)",
		Long: `fleet manages which Ghost identities may connect. 'fleet add' binds a ghost id to the
public nkey that 'ghostctl init' printed; 'fleet rm' revokes it. With 'miragectl up --auth'
both take effect at once: a revoked Ghost is disconnected and refused. For an external
server or cluster, 'fleet auth-config' prints the accounts block to install there.
These requests need the operator key (--nkey DATA_DIR/keys/operator.nk).`,
	}
	c.AddCommand(newFleetAdd(), newFleetRm(), newFleetLs(), newFleetAuthConfig())
	return c
}

// fleetRequest sends one request to Mirage's fleet service.
func fleetRequest(cmd *cobra.Command, cf *clientFlags, subject string, req mirage.FleetRequest) (*mirage.FleetReply, error) {
	ctx := cmd.Context()
	nc, err := cf.connect(ctx, "miragectl fleet")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	data, _ := json.Marshal(req)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subject, data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(rctx.Err(), context.DeadlineExceeded) {
			return nil, cli.Exit(cli.ExitUnavailable, fmt.Errorf("no Mirage answered on %s: is 'miragectl up' running?", subject))
		}
		if cli.IsPermission(err) {
			return nil, cli.Invalid("permission denied on %s: fleet requests need the operator key (--nkey)", subject)
		}
		return nil, cli.Exit(cli.ExitUnavailable, err)
	}
	var reply mirage.FleetReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return nil, cli.Exit(cli.ExitUnavailable, fmt.Errorf("malformed fleet reply on %s: %w", subject, err))
	}
	if reply.Status != "accepted" {
		return &reply, cli.Invalid("Mirage refused: %s", reply.Error.Message)
	}
	if !nc.AuthRequired() {
		warnNotEnforced(cmd, subject, req.GhostID, nc.ConnectedUrlRedacted())
	}
	return &reply, nil
}

// warnNotEnforced says, after an enrollment change, that a server without authentication
// lets every Ghost connect whatever its key: the change is recorded, and 'fleet rm' drops
// the Ghost from the registry, but nothing keeps it out. The server's own INFO says
// whether it requires authentication, which 'up --auth' turns on. A running Ghost does not
// register again on its own: it does when it starts or reconnects, on a Mirage's announce
// (a Mirage starting) or on attach; its heartbeats alone do not bring it back.
func warnNotEnforced(cmd *cobra.Command, subject, ghostID, url string) {
	const head = "warning: enrollment is not enforced: the NATS server at %s does not require authentication (run 'miragectl up --auth')"
	switch subject {
	case subjects.FleetAdd:
		fmt.Fprintf(cmd.ErrOrStderr(), head+"; any Ghost connects, enrolled or not\n", url)
	case subjects.FleetRemove:
		fmt.Fprintf(cmd.ErrOrStderr(), head+"; %[2]s can still connect, and a running %[2]s keeps serving: an issue naming %[2]s still reaches it, but globs, label selectors and all leave it out, and 'miragectl ghosts' does not list it, until it registers again (when it restarts or reconnects to NATS, when Mirage restarts, or now with 'miragectl attach %[2]s')\n", url, ghostID)
	}
}

func newFleetAdd() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "add GHOST_ID PUBLIC_NKEY",
		Short: "Enroll a Ghost: bind its id to the public nkey 'ghostctl init' printed",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := subjects.ValidateGhostID(args[0]); err != nil {
				return cli.Invalid("%v", err)
			}
			if err := bus.ValidatePublicKey(args[1]); err != nil {
				return cli.Invalid("%v", err)
			}
			if _, err := fleetRequest(cmd, &cf, subjects.FleetAdd, mirage.FleetRequest{GhostID: args[0], PublicKey: args[1]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled %s (%s)\n", args[0], args[1])
			return nil
		},
	}
	cf.register(c)
	return c
}

func newFleetRm() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "rm GHOST_ID",
		Short: "Revoke a Ghost: it is disconnected and refused from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := subjects.ValidateGhostID(args[0]); err != nil {
				return cli.Invalid("%v", err)
			}
			if _, err := fleetRequest(cmd, &cf, subjects.FleetRemove, mirage.FleetRequest{GhostID: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])
			return nil
		},
	}
	cf.register(c)
	return c
}

func newFleetLs() *cobra.Command {
	var (
		cf     clientFlags
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "ls [--json]",
		Short: "List enrolled Ghost identities",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Read from KV edge_fleet, where Mirage keeps the enrollments: a fleet of
			// thousands does not fit one reply of Mirage's.
			fleet, _, err := readEnrollments(cmd, &cf, "miragectl fleet ls")
			if err != nil {
				return err
			}
			if asJSON {
				if fleet == nil {
					fleet = []mirage.Enrollment{} // an empty fleet is [], not null
				}
				return printJSON(cmd.OutOrStdout(), fleet)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GHOST\tPUBLIC NKEY\tENROLLED")
			for _, e := range fleet {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", e.GhostID, e.PublicKey, time.UnixMilli(e.EnrolledMS).UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cf.register(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return c
}

func newFleetAuthConfig() *cobra.Command {
	var cf clientFlags
	c := &cobra.Command{
		Use:   "auth-config",
		Short: "Print the nats-server accounts block for the enrolled fleet",
		Long: `auth-config prints the nats-server accounts block that gives the operator, Mirage and
every enrolled Ghost exactly their permissions, for an external nats-server or cluster:
account EDGE holds JetStream, Mirage and the operator, account EDGE_GHOSTS the Ghosts, which
reach EDGE only through its exports (docs/security.md, "Two accounts"). It reads the
enrollments from KV edge_fleet. Include the output in nats-server.conf and reload the server
after every 'fleet add' or 'fleet rm'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, roles, err := readEnrollments(cmd, &cf, "miragectl fleet auth-config")
			if err != nil {
				return err
			}
			ghosts := map[string]string{}
			for _, e := range list {
				ghosts[e.GhostID] = e.PublicKey
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), natsd.AuthConfig(roles[mirage.FleetKeyOperator], roles[mirage.FleetKeyMirage], ghosts))
			return err
		},
	}
	cf.register(c)
	return c
}

// readEnrollments reads the enrolled Ghosts and the role keys from KV edge_fleet. A key
// that holds no valid enrollment is skipped with a warning on stderr.
func readEnrollments(cmd *cobra.Command, cf *clientFlags, name string) ([]mirage.Enrollment, map[string]string, error) {
	ctx := cmd.Context()
	nc, err := cf.connect(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, cli.Exit(cli.ExitUnavailable, err)
	}
	if _, err := js.KeyValue(ctx, bus.BucketFleet); err != nil {
		if cli.IsPermission(err) {
			return nil, nil, cli.Invalid("permission denied reading KV %s: it needs the operator key (--nkey)", bus.BucketFleet)
		}
		return nil, nil, cli.Exit(cli.ExitUnavailable, fmt.Errorf("KV %s: %w (has Mirage run against this server?)", bus.BucketFleet, err))
	}
	warn := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	list, roles, err := mirage.ReadEnrollments(ctx, js, warn)
	if err != nil {
		return nil, nil, cli.Exit(cli.ExitUnavailable, err)
	}
	return list, roles, nil
}

// Command miragectl runs and drives Mirage, the edgectl control plane: it turns an intent
// ("run operation X of seed S on these machines") into one command per target Ghost,
// follows the events that come back, and reports progress and the outcome.
package main

import (
	"context"
	"os"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/mirage"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	cli.Main(func(ctx context.Context) error { return newRoot().ExecuteContext(ctx) })
}

// clientFlags are the flags every client command takes.
type clientFlags struct {
	server string
	nkey   string
}

func (f *clientFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.server, "server", "", "NATS server URL (default $NATS_URL, else "+bus.DefaultURL+")")
	c.Flags().StringVar(&f.nkey, "nkey", "", "nkey seed file to authenticate with (default $EDGE_NKEY; 'up --auth' writes the operator's as DATA_DIR/keys/operator.nk)")
}

// client opens the connection and a Mirage client on it; close ends both. Extra options
// adjust the connection (a waiting issue reconnects: see issue.go).
func (f *clientFlags) client(ctx context.Context, name string, opts ...nats.Option) (client *mirage.Client, close func(), err error) {
	nc, err := f.connect(ctx, name, opts...)
	if err != nil {
		return nil, nil, err
	}
	client, err = mirage.NewClient(nc)
	if err != nil {
		nc.Close()
		return nil, nil, cli.Exit(cli.ExitUnavailable, err)
	}
	return client, nc.Close, nil
}

// connect opens the client connection, authenticated with --nkey when given.
func (f *clientFlags) connect(ctx context.Context, name string, opts ...nats.Option) (*nats.Conn, error) {
	path, source := f.nkey, "--nkey"
	if path == "" {
		path, source = os.Getenv("EDGE_NKEY"), "EDGE_NKEY"
	}
	if path != "" {
		id, err := bus.LoadIdentity(path)
		if err != nil {
			return nil, cli.Invalid("%s: %v", source, err)
		}
		opts = append(opts, id.NATSOption())
	}
	nc, err := cli.Connect(ctx, f.server, name, opts...)
	if err != nil && path != "" && strings.Contains(err.Error(), "nkeys not supported") {
		return nil, cli.Invalid("%s %s: the NATS server does not use authentication (miragectl up without --auth): drop %s", source, path, source)
	}
	if err != nil && path != "" && strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		return nil, cli.Invalid("%s %s: the NATS server does not accept this key (nats: Authorization Violation): client commands need the operator key, DATA_DIR/keys/operator.nk of 'miragectl up --auth'", source, path)
	}
	return nc, err
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "miragectl",
		Short: "Run edgectl's control plane and run operations across a fleet of Ghosts",
		Long: `miragectl runs Mirage, edgectl's control plane, and talks to it.

  miragectl up                                      embedded NATS + Mirage + a local Ghost
  miragectl issue --target local seed.flow status   run an operation and wait for its report
  miragectl report INTENT_ID                        the latest report of an intent
  miragectl ghosts                                  the registered Ghosts and their presence

Exit codes: 0 success (issue: satisfied), 1 finished but not satisfied, 2 invalid input or
refused by Mirage, 3 NATS unreachable or no Mirage answered.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Invalid("%v", err) })
	root.AddCommand(newUp(), newIssue(), newReport(), newGhosts(), newIntents(), newFleet(), newSeed(), newAttach(), newBench())
	cli.Harden(root)
	return root
}

// Command ghostctl runs a Ghost, the edgectl agent on each machine: it takes commands from
// cmd.<its id>, runs operations of its seeds, and emits one terminal event per command.
package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/cmd/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	cli.Main(func(ctx context.Context) error { return newRoot().ExecuteContext(ctx) })
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "ghostctl",
		Short: "Run an edgectl Ghost: the agent that executes seed operations on this machine",
		Long: `ghostctl runs a Ghost, the edgectl agent on a machine. A Ghost takes commands from
the NATS subject cmd.<its id>, checks them, runs the requested operation of one of its
seeds, and emits exactly one terminal event per command on evt.<its id>.

Start with 'ghostctl init --id ID' to write a config, then 'ghostctl run --config DIR/config.toml'.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Invalid("%v", err) })
	root.AddCommand(newInit(), newRun(), newSeeds())
	cli.Harden(root)
	return root
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/ghost/seeds"
)

func newSeeds() *cobra.Command {
	var (
		cfgPath string
		asJSON  bool
	)
	c := &cobra.Command{
		Use:   "seeds [--config FILE] [--json]",
		Short: "List the seeds this Ghost hosts, with their operations and params",
		Long: `seeds lists the built-in seeds the config enables (its seeds key), each with its
operations: name, description, whether it is idempotent, and its params (name, required,
allowed pattern). It reads the config (and creates its state directory if missing): no NATS
connection, no running Ghost needed.
The running Ghost also hosts the control seed "ghost" and the declarative seeds installed
by 'miragectl seed push'; it registers every seed it hosts, and 'miragectl ghosts --json'
lists their ids.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cfgPath, nil)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("state directory: %w", err))
			}
			reg, err := seeds.Registry(cfg.Seeds, cfg.StateDir)
			if err != nil { // a seed's directory under the state directory: as for run
				return cli.Exit(cli.ExitUnavailable, err)
			}
			infos := reg.Infos()
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(infos)
			}
			if len(infos) == 0 {
				fmt.Fprintln(out, "no seeds: this Ghost hosts none (seeds = [] in its config)")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEED\tOPERATION\tIDEMPOTENT\tPARAMS\tDESCRIPTION")
			for _, s := range infos {
				for _, op := range s.Operations {
					var params []string
					for _, p := range op.Params {
						name := p.Name
						if !p.Required {
							name += "?"
						}
						params = append(params, name)
					}
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", s.ID, op.Name, op.Idempotent, strings.Join(params, ","), op.Description)
				}
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "config.toml", "the Ghost's config file")
	c.Flags().BoolVar(&asJSON, "json", false, "print the seed declarations as JSON")
	return c
}

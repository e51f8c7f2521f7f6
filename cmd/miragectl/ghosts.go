package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
)

func newGhosts() *cobra.Command {
	var (
		cf     clientFlags
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "ghosts [--json]",
		Short: "List the registered Ghosts with their presence (online, stale, offline)",
		Long: `ghosts lists the Ghosts registered with Mirage (KV edge_ghosts) and their presence:
online (a heartbeat within 15 s), stale (none for 15 s), offline (none for 60 s), sorted by
ghost id, with how long ago each was last seen.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			client, done, err := cf.client(ctx, "miragectl ghosts")
			if err != nil {
				return err
			}
			defer done()
			list, err := client.Ghosts(ctx)
			if err != nil {
				return cli.Exit(cli.ExitUnavailable, err)
			}
			sort.Slice(list, func(i, j int) bool { return list[i].GhostID < list[j].GhostID })
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, list)
			}
			if len(list) == 0 {
				fmt.Fprintln(out, "no ghosts registered")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GHOST\tSTATUS\tVERSION\tLAST SEEN\tLABELS\tSEEDS")
			// How long ago, by the server's clock (Client.Ghosts): this machine's may differ.
			now := time.Now()
			var skewed []string
			for _, g := range list {
				var labels []string
				for k, v := range g.Labels {
					labels = append(labels, k+"="+v)
				}
				sort.Strings(labels)
				seen := ago(now, now.Add(-g.SilentFor))
				if off := time.Duration(g.ClockOffsetMS) * time.Millisecond; off.Abs() > bus.ClockWarnAt {
					way := "ahead of"
					if off < 0 {
						way = "behind"
					}
					skewed = append(skewed, fmt.Sprintf("note: ghost %s's clock was %s %s Mirage's when it registered; synchronise it (NTP)", g.GhostID, off.Abs().Round(time.Second), way))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", g.GhostID, g.Status, printable(g.Version), seen, printable(strings.Join(labels, ",")), strings.Join(g.Seeds, ","))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, line := range skewed {
				fmt.Fprintln(out, line)
			}
			return nil
		},
	}
	cf.register(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of {ghost_id, status, version, labels, seeds, last_seen_ms, clock_offset_ms}")
	return c
}

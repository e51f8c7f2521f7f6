package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/ghost/seeds/control"
	"github.com/edgectl/edgectl/subjects"
)

func newInit() *cobra.Command {
	var (
		id, server, out, policy, seedList string
		labels, trust, allowSeeds         []string
		force                             bool
	)
	c := &cobra.Command{
		Use:   "init --id ID [--server URL] [--out DIR] [--label KEY=VALUE ...] [--policy headless|auto|required] [--seeds ID,ID|all|none] [--allow-seeds ID|GLOB,...] [--trust MIRAGE_KEY ...] [--force]",
		Short: "Write a Ghost's config.toml, its nkey and its state directory; print its public key",
		Long: `init writes DIR/config.toml for a new Ghost and creates its state directory DIR/state.
It also writes the Ghost's identity, an nkey seed in DIR/ghost.nk (mode 0600), and prints
its public key (U...) as the last line of stdout, for 'miragectl fleet add'.
Run the Ghost with 'ghostctl run --config DIR/config.toml'.

Policies: headless serves commands without registering with a Mirage; auto registers
whenever a Mirage is present; required refuses to start without one.
Seeds: a comma list of built-in seeds (` + strings.Join(seeds.All, ", ") + `), all (default), or none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.Required("id", id); err != nil {
				return err
			}
			if err := subjects.ValidateGhostID(id); err != nil {
				return cli.Invalid("--id: %s", subjects.Reason(err))
			}
			switch policy {
			case ghost.PolicyHeadless, ghost.PolicyAuto, ghost.PolicyRequired:
			default:
				return cli.Invalid("--policy %q: use headless, auto or required", policy)
			}
			if server != "" {
				if err := bus.CheckServerURL(server); err != nil {
					return cli.Invalid("--server: %v", err)
				}
			}
			ids, err := seeds.Parse(seedList)
			if err != nil {
				return cli.Invalid("--seeds: %v", err)
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			if out == "" {
				out = id
			}
			dir, err := filepath.Abs(out)
			if err != nil {
				return cli.Invalid("--out: %v", err)
			}
			path := filepath.Join(dir, "config.toml")
			if _, err := os.Stat(path); err == nil && !force {
				return cli.Invalid("%s exists; use --force to overwrite it", path)
			} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return cli.Invalid("--out %s: %v", out, err)
			}
			if err := control.ValidateAllow(allowSeeds); err != nil {
				return cli.Invalid("--allow-seeds: %v", err)
			}
			for _, k := range trust {
				if err := bus.ValidatePublicKey(k); err != nil {
					return cli.Invalid("--trust: %v", err)
				}
			}
			state := filepath.Join(dir, "state")
			if err := os.MkdirAll(state, 0o700); err != nil {
				return cli.Invalid("--out %s: create the state directory: %v", out, err)
			}
			keyPath := filepath.Join(dir, "ghost.nk")
			if force {
				_ = os.Remove(keyPath)
			}
			identity, err := bus.LoadOrCreateIdentity(keyPath)
			if err != nil {
				return cli.Invalid("--out %s: the Ghost's key: %v", out, err)
			}
			doc := map[string]any{
				"id":                  id,
				"server":              bus.ServerURL(server),
				"state_dir":           state,
				"policy":              policy,
				"seeds":               ids,
				"labels":              lbl,
				"nkey_file":           keyPath,
				"trusted_mirage_keys": append([]string{}, trust...),
				"auth":                len(trust) > 0,
				"seed_allowlist":      append([]string{}, allowSeeds...),
			}
			var buf bytes.Buffer
			buf.WriteString("# edgectl Ghost configuration, written by 'ghostctl init'.\n")
			buf.WriteString("# Environment variables EDGE_<KEY> override these keys (EDGE_LABELS__ROLE for labels.role);\n")
			buf.WriteString("# flags of 'ghostctl run' override both.\n")
			if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
				return err
			}
			if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
				return cli.Invalid("--out %s: write the config: %v", out, err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "wrote %s and the Ghost's key %s (mode 0600)\n", path, keyPath)
			fmt.Fprintf(out, "run it with: ghostctl run --config %s\n", path)
			fmt.Fprintf(out, "enroll it (with 'miragectl up --auth'): miragectl fleet add %s %s\n", id, identity.PublicKey())
			fmt.Fprintln(out, identity.PublicKey())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&id, "id", "", "the Ghost's id: 1-64 of A-Z a-z 0-9 - _ (required)")
	f.StringVar(&server, "server", "", "NATS server URL (default $NATS_URL, else "+bus.DefaultURL+")")
	f.StringVar(&out, "out", "", "directory to write config.toml into (default ./ID)")
	f.StringArrayVar(&labels, "label", nil, "a label KEY=VALUE; repeat for more")
	f.StringVar(&policy, "policy", ghost.PolicyAuto, "Mirage policy: headless, auto or required")
	f.StringVar(&seedList, "seeds", "all", "built-in seeds to host: a comma list, all, or none")
	f.BoolVar(&force, "force", false, "overwrite an existing config.toml (and make a new key)")
	f.StringSliceVar(&allowSeeds, "allow-seeds", nil, "declarative seeds Mirage may install here ('miragectl seed push'): ids or globs, comma separated (default: none)")
	f.StringArrayVar(&trust, "trust", nil, "a Mirage public nkey whose signed commands this Ghost accepts; with any, unsigned commands are refused and the Ghost authenticates to NATS with its key (auth = true) (repeat for more)")
	return c
}

func parseLabels(kvs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.Contains(v, "=") || strings.Contains(k, ",") || strings.Contains(v, ",") {
			return nil, cli.Invalid("--label %q: expected KEY=VALUE without , or a second =", kv)
		}
		out[k] = v
	}
	return out, nil
}

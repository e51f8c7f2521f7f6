package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/ghost/seeds/control"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
)

func newSeed() *cobra.Command {
	c := &cobra.Command{
		Use:   "seed push --target SCOPE SPEC.toml [--file PATH ...]",
		Short: "Push declarative seeds to Ghosts",
		Long: `seed manages declarative seeds: seeds defined by a TOML spec (docs/seeds.md) rather
than built into ghostctl. 'seed push' stores a spec and its files in the object store
edge_seeds and has the target Ghosts install it.`,
	}
	c.AddCommand(newSeedPush())
	return c
}

func newSeedPush() *cobra.Command {
	var (
		cf      clientFlags
		target  string
		files   []string
		timeout time.Duration
		asJSON  bool
	)
	c := &cobra.Command{
		Use:   "push --target SCOPE SPEC.toml [--file PATH ...] [--timeout DURATION] [--json]",
		Short: "Store a seed spec and its files in edge_seeds and install it on target Ghosts",
		Long: `push validates SPEC.toml (errors name the key), stores it and the files it declares in
the object store edge_seeds as <id>/<version>/spec.toml and <id>/<version>/files/<name>
with their SHA-256 digests, then issues 'ghost seed.install' to the Ghosts in SCOPE with
the object names and digests. Each Ghost checks its seed_allowlist, fetches and verifies
every digest, installs the seed under its state directory, hosts it and registers again,
so that 'miragectl issue --target SCOPE ID OPERATION' works right after.

Every file the spec declares in [[files]] is given with --file PATH (its base name must be
the declared name). A version is immutable: pushing the same version with the same content
again changes nothing, with other content it is refused; push a new version to replace it.
SCOPE is as for 'issue'. Output is as for 'issue': one line per target, then a summary;
--json prints the terminal report.

Exit codes: 0 installed on every target; 1 finished but not satisfied; 2 invalid spec,
files or scope (reason on stderr); 3 NATS unreachable, no edge_seeds or no Mirage.`,
		Example: `  miragectl seed push --target edge-1 deploy/seeds/node.system.toml
  miragectl seed push --target 'edge-*' deploy/seeds/service.example.toml --file deploy/seeds/service.example.sh`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return cli.Invalid("--target is required: a ghost id, a comma list of ids and globs, a label selector KEY=VALUE, or all")
			}
			if timeout <= 0 || timeout.Milliseconds() > bus.MaxTimeout {
				return cli.Invalid("--timeout %s: must be positive and at most 24h", shortDuration(timeout))
			}
			bundle, err := readBundle(args[0], files)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			nc, err := cf.connect(ctx, "miragectl seed push")
			if err != nil {
				return err
			}
			defer nc.Close()
			m, err := storeBundle(ctx, cmd, nc, bundle)
			if err != nil {
				return err
			}
			client, err := mirage.NewClient(nc)
			if err != nil {
				return cli.Exit(cli.ExitUnavailable, err)
			}
			is := &bus.Issue{
				Header:      bus.NewHeader(bus.TypeIssue, "", time.Now()),
				IntentID:    subjects.NewID(subjects.PrefixIntent),
				Actor:       actor(),
				TargetScope: target,
				Objective:   bus.Objective{SeedSelector: control.ID, Operation: control.OpInstall, Args: m.InstallArgs()},
				TimeoutMS:   timeout.Milliseconds(),
			}
			if err := is.Validate(); err != nil {
				return cli.Invalid("%s", bus.AsError(err).Message)
			}
			reply, err := client.Issue(ctx, is)
			switch {
			case errors.Is(err, mirage.ErrRejected):
				return refusedExit("install", reply.Error)
			case errors.Is(err, mirage.ErrNoMirage) && errors.Is(err, nats.ErrNoResponders):
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("%w: is 'miragectl up' running?", err))
			case errors.Is(err, mirage.ErrNoMirage), errors.Is(err, mirage.ErrAnswerLost):
				// Sent, but no answer came: a Mirage may have accepted the install.
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("%w: the install may have been accepted: check with '%s' before pushing again", err, cf.reportHint(is.IntentID)))
			case err != nil:
				return cli.Exit(cli.ExitUnavailable, err)
			}
			noteAbsent(cmd.ErrOrStderr(), reply, timeout) // as issue: the early sign of a timeout
			wctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
			defer cancel()
			rep, err := client.WaitTerminal(wctx, reply.IntentID)
			if err != nil {
				if ctx.Err() != nil {
					return cli.Exit(cli.ExitNotSatisfied, fmt.Errorf("interrupted; the install goes on: miragectl report %s --wait", reply.IntentID))
				}
				return cli.Exit(cli.ExitUnavailable, fmt.Errorf("no terminal report for %s: %v (is Mirage running?)", reply.IntentID, err))
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(out, rep); err != nil {
					return err
				}
			} else if err := printReport(out, rep); err != nil {
				return err
			}
			noteNotAllowed(cmd.ErrOrStderr(), rep, bundle.Spec.ID)
			return reportExit(rep)
		},
	}
	cf.register(c)
	f := c.Flags()
	f.StringVar(&target, "target", "", "the Ghosts to install on: ids and globs (a,b,edge-*), a label selector (role=db) or all (required)")
	f.StringArrayVar(&files, "file", nil, "a file the spec declares in [[files]]; repeat for more")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long the install may take; targets without a terminal event by then are timeout")
	f.BoolVar(&asJSON, "json", false, "print the terminal report envelope as one JSON object")
	return c
}

// readBundle reads and validates the spec and the files given with --file.
func readBundle(specPath string, paths []string) (*declarative.Bundle, error) {
	spec, err := os.ReadFile(specPath)
	if err != nil {
		return nil, cli.Invalid("spec: %v", err)
	}
	files := map[string][]byte{}
	for _, p := range paths {
		name := filepath.Base(p)
		if err := declarative.ValidateFileName(name); err != nil {
			return nil, cli.Invalid("--file %s: %v", p, err)
		}
		if _, dup := files[name]; dup {
			return nil, cli.Invalid("--file %s: a file named %s is given twice", p, name)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, cli.Invalid("--file: %v", err)
		}
		files[name] = data
	}
	b, err := declarative.NewBundle(spec, files)
	if err != nil {
		return nil, cli.Invalid("%s: %v", specPath, err)
	}
	return b, nil
}

// storeBundle puts the bundle in edge_seeds and says so on stderr.
func storeBundle(ctx context.Context, cmd *cobra.Command, nc *nats.Conn, b *declarative.Bundle) (declarative.Manifest, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return declarative.Manifest{}, cli.Exit(cli.ExitUnavailable, err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	obs, err := js.ObjectStore(sctx, bus.BucketSeeds)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return declarative.Manifest{}, cli.Exit(cli.ExitUnavailable, fmt.Errorf("object store %s not found: is 'miragectl up' (a Mirage of this version) running against this server?", bus.BucketSeeds))
	}
	if err != nil {
		if cli.IsPermission(err) {
			return declarative.Manifest{}, cli.Invalid("permission denied reading %s: pushing seeds needs the operator key (--nkey)", bus.BucketSeeds)
		}
		return declarative.Manifest{}, cli.Exit(cli.ExitUnavailable, fmt.Errorf("object store %s: %w", bus.BucketSeeds, err))
	}
	m, unchanged, err := declarative.Publish(sctx, obs, b)
	switch {
	case errors.Is(err, declarative.ErrVersionConflict):
		return m, cli.Invalid("%v", err)
	case err != nil:
		return m, cli.Exit(cli.ExitUnavailable, err)
	}
	state := "stored"
	if unchanged {
		state = "already stored (same digests)"
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s %s %s in %s: %s (sha256 %s), %d file(s)\n", state, m.ID, m.Version, bus.BucketSeeds, m.Spec.Object, m.Spec.SHA256, len(m.Files))
	return m, nil
}

// noteNotAllowed says on stderr, once, how to allow a seed that targets refused because it
// is not on their seed_allowlist (1800): the report's line is cut at 160 characters, and
// the way that lasts is the config file, not the environment of one run.
func noteNotAllowed(w io.Writer, rep *bus.Report, seedID string) {
	var ids []string
	for _, res := range rep.Results {
		if res.Error != nil && res.Error.Code == bus.CodeSecurity && strings.Contains(res.Error.Message, "seed_allowlist") {
			ids = append(ids, res.GhostID)
		}
	}
	if len(ids) == 0 {
		return
	}
	fmt.Fprintf(w, "note: not on the seed_allowlist of: %s; to allow %s, set seed_allowlist in each Ghost's config file (e.g. seed_allowlist = [%q], or 'ghostctl init --allow-seeds %s' when writing it; EDGE_SEED_ALLOWLIST lasts one run only), restart the Ghost, then push again\n",
		strings.Join(ids, ", "), seedID, control.AllowGlob(seedID), control.AllowGlob(seedID))
}

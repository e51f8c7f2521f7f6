package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"text/tabwriter"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bench"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/natsd"
)

func newBench() *cobra.Command {
	var (
		syncMode, cpuProfile, memProfile string
		intents                          int
		ghosts                           []int
		phases                           []string
		quick, asJSON                    bool
	)
	c := &cobra.Command{
		Use:   "bench [--sync always|interval] [--intents N] [--ghosts N[,N...]] [--quick] [--json]",
		Short: "Measure edgectl against the raw NATS floor on this machine",
		Long: `bench measures, in one process with an embedded nats-server in a temporary directory:

  raw     the floor with no edgectl code: a JetStream double hop (command stream → consumer
          → event stream → consumer) with edgectl's storage, sync setting and message sizes
  e2e     single-target intents through Mirage and one Ghost: intents/s reaching a terminal
          report, and the issue → terminal report latency one at a time (p50, p99)
  fanout  for each --ghosts N: time for N in-process Ghosts to register, time from issuing
          one intent to all N to its terminal report, and the raw fan-out floor for N
  flow    (opt-in) the contract's message flow for one intent with no edgectl code: the
          ceiling of e2e, measured beside raw
  rss     the resident memory of an idle, registered ghostctl process: the one beside
          miragectl, else one built as an agent ships (CGO_ENABLED=0 go build -trimpath
          -ldflags="-s -w" ./cmd/ghostctl)

--quick runs small counts (a few seconds, for CI). --json prints exactly one JSON object.
docs/performance.md explains each figure and the targets.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := bench.Full
			if quick {
				cfg = bench.Quick
			}
			cfg.Sync = syncMode
			if syncMode != natsd.SyncAlways && syncMode != natsd.SyncInterval {
				return cli.Invalid("--sync %q: use always or interval", syncMode)
			}
			if cmd.Flags().Changed("intents") {
				if intents <= 0 {
					return cli.Invalid("--intents %d: must be positive", intents)
				}
				cfg.Intents, cfg.Sequential = intents, 0
			}
			if cmd.Flags().Changed("ghosts") {
				for _, n := range ghosts {
					if n <= 0 {
						return cli.Invalid("--ghosts %d: a fleet size must be positive", n)
					}
				}
				cfg.Ghosts = ghosts
			}
			for _, p := range phases {
				if p != "all" {
					cfg.Phases = append(cfg.Phases, p)
				}
			}
			if cli.IsTerminal(os.Stderr) {
				bar := progressbar.NewOptions(1, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetWidth(30),
					progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(false), progressbar.OptionShowElapsedTimeOnFinish(),
					progressbar.OptionShowDescriptionAtLineEnd(), progressbar.OptionSetRenderBlankState(true),
					progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }))
				cfg.Progress = func(step string, i, steps int) {
					bar.ChangeMax(steps)
					bar.Describe(step)
					_ = bar.Set(i)
				}
			}
			if cpuProfile != "" {
				prof := &stepProfiles{base: cpuProfile}
				defer prof.stop()
				progress := cfg.Progress
				cfg.Progress = func(step string, i, steps int) {
					prof.next(step, i == steps)
					if progress != nil {
						progress(step, i, steps)
					}
				}
			}
			res, err := bench.Run(cmd.Context(), cfg)
			if errors.Is(err, bench.ErrConfig) {
				return cli.Invalid("%v", err)
			} else if err != nil {
				return err
			}
			if memProfile != "" {
				if err := writeAllocs(memProfile); err != nil {
					return err
				}
			}
			for _, n := range res.Notes {
				fmt.Fprintln(cmd.ErrOrStderr(), "note: "+n)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			return printBench(cmd.OutOrStdout(), res)
		},
	}
	c.Flags().StringVar(&syncMode, "sync", natsd.SyncAlways, "JetStream sync: always (fsync every write) or interval (the server's default interval)")
	c.Flags().IntVar(&intents, "intents", bench.Full.Intents, "intents of the e2e throughput run (the raw run sends 5× as many double hops); a quarter as many run one at a time for latency")
	c.Flags().IntSliceVar(&ghosts, "ghosts", bench.Full.Ghosts, "fleet sizes of the fan-out runs (with --quick: 100,500)")
	c.Flags().StringSliceVar(&phases, "phases", []string{"all"}, "phases to run: raw, e2e, fanout, rss, and flow (opt-in: the contract's message flow with no edgectl code); the figures of the others stay 0")
	c.Flags().BoolVar(&quick, "quick", false, "small counts: a few seconds, for CI")
	c.Flags().BoolVar(&asJSON, "json", false, "print exactly one JSON object")
	c.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of each step to FILE.<step> (e.g. FILE.e2e-intents)")
	c.Flags().StringVar(&memProfile, "memprofile", "", "write an allocation profile of the run to FILE")
	return c
}

// stepProfiles writes one CPU profile per step of the run, FILE.<step>: the steps share
// long-lived goroutines (connections, servers), so one profile of the whole run could not
// be split by step afterwards.
type stepProfiles struct {
	base string
	f    *os.File
	err  error
}

func (p *stepProfiles) next(step string, last bool) {
	p.stop()
	if last || p.err != nil {
		return
	}
	f, err := os.Create(p.base + "." + bench.StepLabel(step))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		p.err = err
		fmt.Fprintln(os.Stderr, "note: no CPU profile: "+err.Error())
		return
	}
	p.f = f
}

func (p *stepProfiles) stop() {
	if p.f != nil {
		pprof.StopCPUProfile()
		_ = p.f.Close()
		p.f = nil
	}
}

// writeAllocs writes the allocation profile (every allocation since the start).
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return cli.Invalid("--memprofile: %v", err)
	}
	defer f.Close()
	runtime.GC()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// printBench writes the figures as tables, then the targets that apply.
func printBench(w io.Writer, r *bench.Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "sync: %s\n\n", r.Sync)
	fmt.Fprintln(tw, "MEASURE\tRATE/S\tP50 MS\tP99 MS")
	fmt.Fprintf(tw, "raw double hop\t%.1f\t%.3f\t%.3f\n", r.Raw.RatePerS, r.Raw.P50MS, r.Raw.P99MS)
	fmt.Fprintf(tw, "e2e intent\t%.1f\t%.3f\t%.3f\n", r.E2E.RatePerS, r.E2E.P50MS, r.E2E.P99MS)
	fmt.Fprintf(tw, "ratio e2e/raw\t%.3f\t\t\n", r.Ratio)
	if r.Flow != nil {
		fmt.Fprintf(tw, "flow (no edgectl code)\t%.1f\t%.3f\t%.3f\n", r.Flow.RatePerS, r.Flow.P50MS, r.Flow.P99MS)
		fmt.Fprintf(tw, "ratio flow/raw\t%.3f\t\t\n", r.FlowRatio)
	}
	if len(r.Fanout) > 0 {
		fmt.Fprintln(tw, "\nGHOSTS\tREGISTER S\tREPORT S\tRAW S\tREPORT/RAW\tSATISFIED")
		for _, f := range r.Fanout {
			x := 0.0
			if f.RawS > 0 {
				x = f.ReportS / f.RawS
			}
			fmt.Fprintf(tw, "%d\t%.3f\t%.3f\t%.3f\t%.2f\t%t\n", f.Ghosts, f.RegisterS, f.ReportS, f.RawS, x, f.Satisfied)
		}
	}
	fmt.Fprintf(tw, "\nidle ghostctl RSS\t%.1f MB\n", r.GhostRSSMB)
	if err := tw.Flush(); err != nil {
		return err
	}
	targets := r.Targets()
	if len(targets) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\ntargets:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, t := range targets {
		met := "met"
		if !t.Met {
			met = "NOT MET"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Name, t.Want, t.Got, met)
	}
	return tw.Flush()
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/edgectl/edgectl/natsd"
)

// Phases of a run, as --phases names them.
const (
	PhaseRaw    = "raw"
	PhaseE2E    = "e2e"
	PhaseFanout = "fanout"
	PhaseRSS    = "rss"
	// PhaseFlow is opt-in (not in AllPhases): the contract's message flow with no edgectl
	// code, the ceiling of e2e (rawFlow).
	PhaseFlow = "flow"
)

// AllPhases is every phase a default run takes, in order.
var AllPhases = []string{PhaseRaw, PhaseE2E, PhaseFanout, PhaseRSS}

// knownPhases are the phases --phases accepts.
var knownPhases = []string{PhaseRaw, PhaseE2E, PhaseFlow, PhaseFanout, PhaseRSS}

// Config says what a run measures.
type Config struct {
	// Sync is natsd.SyncAlways or natsd.SyncInterval (the server's default interval).
	Sync string
	// Intents is how many intents the e2e throughput run sends; the raw one sends five
	// times as many double hops, so that it lasts long enough to be steady.
	Intents int
	// Sequential is how many are sent one at a time for the latency percentiles.
	Sequential int
	// Ghosts are the fleet sizes of the fan-out runs.
	Ghosts []int
	// InFlight bounds the intents (and raw double hops) in flight at once (default 256).
	InFlight int
	// Phases to run (default AllPhases); the figures of the others stay 0.
	Phases []string
	// Dir is where temporary stores go (default the system's temp dir).
	Dir string
	// Progress, when set, is told each step as it starts: its name, its index and the
	// number of steps.
	Progress func(step string, i, steps int)
	// Log receives Mirage's, the Ghosts' and the harness's logs (default: discarded).
	Log *slog.Logger
}

// Defaults of a full run and of a quick one (CI).
var (
	Full  = Config{Intents: 2000, Sequential: 500, Ghosts: []int{1000, 10000}}
	Quick = Config{Intents: 200, Sequential: 50, Ghosts: []int{100, 500}}
)

// Result is what one run measured; its JSON is what 'miragectl bench --json' prints.
type Result struct {
	Sync  string  `json:"sync"`
	Raw   Rate    `json:"raw"`
	E2E   Rate    `json:"e2e"`
	Ratio float64 `json:"ratio"`
	// Flow is the contract's message flow with no edgectl code (phase flow, opt-in; absent
	// from the JSON otherwise), and FlowRatio its rate over raw's: the most e2e could reach.
	Flow      *Rate   `json:"flow,omitempty"`
	FlowRatio float64 `json:"flow_ratio,omitempty"`
	Fanout    []Fan   `json:"fanout"`
	// GhostRSSMB is the resident memory of an idle, registered ghostctl process in MiB;
	// -1 when no ghostctl could be built or found.
	GhostRSSMB float64 `json:"ghost_rss_mb"`
	// Notes say why a figure could not be measured; they are not part of the JSON.
	Notes []string `json:"-"`
}

// Rate is a pipelined throughput and the latency of one-at-a-time sends.
type Rate struct {
	RatePerS float64 `json:"rate_per_s"`
	P50MS    float64 `json:"p50_ms"`
	P99MS    float64 `json:"p99_ms"`
}

// Fan is one fan-out measurement.
type Fan struct {
	Ghosts int `json:"ghosts"`
	// RegisterS is the time from starting N Ghosts (connections open) to Mirage having
	// all N in its registry.
	RegisterS float64 `json:"register_s"`
	// ReportS is the time from issuing one intent to all N to its terminal report.
	ReportS float64 `json:"report_s"`
	// RawS is the raw floor: N commands stored and received by N subscribers, N events
	// stored and consumed.
	RawS float64 `json:"raw_s"`
	// Satisfied is whether the intent ended satisfied.
	Satisfied bool `json:"satisfied"`
}

// ErrConfig is wrapped by the errors of an invalid Config.
var ErrConfig = errors.New("invalid bench configuration")

func (c *Config) defaults() error {
	switch c.Sync {
	case "":
		c.Sync = natsd.SyncAlways
	case natsd.SyncAlways, natsd.SyncInterval:
	default:
		return fmt.Errorf("%w: sync %q: use %s or %s", ErrConfig, c.Sync, natsd.SyncAlways, natsd.SyncInterval)
	}
	if c.Intents <= 0 {
		c.Intents = Full.Intents
	}
	if c.Sequential <= 0 {
		c.Sequential = max(10, c.Intents/4)
	}
	if c.InFlight <= 0 {
		c.InFlight = 256
	}
	if len(c.Phases) == 0 {
		c.Phases = AllPhases
	}
	for _, p := range c.Phases {
		if !slices.Contains(knownPhases, p) {
			return fmt.Errorf("%w: phase %q: use %s", ErrConfig, p, strings.Join(knownPhases, ", "))
		}
	}
	for _, n := range c.Ghosts {
		if n <= 0 {
			return fmt.Errorf("%w: ghosts %d: a fleet size must be positive", ErrConfig, n)
		}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

func (c *Config) wants(phase string) bool { return slices.Contains(c.Phases, phase) }

// step is one unit of a run, named for the progress bar and the CPU profile's labels.
type step struct {
	name  string
	phase string
	run   func(ctx context.Context) error
}

// Run measures what cfg asks for. Each step runs under the pprof label phase=<step>, so a
// CPU profile of a whole run can be focused on one step (go tool pprof -tagfocus).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(cfg.Dir, "edgectl-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	pl := newPayloads()
	res := &Result{Sync: cfg.Sync, Fanout: []Fan{}}
	env := &runEnv{cfg: cfg, dir: dir, pl: pl}
	defer env.cleanup()

	var steps []step
	add := func(phase, name string, f func(ctx context.Context) error) {
		if cfg.wants(phase) {
			steps = append(steps, step{name: name, phase: phase, run: f})
		}
	}
	add(PhaseRaw, "raw double hop", func(ctx context.Context) (err error) {
		res.Raw, err = env.rawDoubleHop(ctx)
		return err
	})
	add(PhaseE2E, "e2e intents", func(ctx context.Context) (err error) {
		res.E2E, err = env.e2e(ctx)
		return err
	})
	add(PhaseFlow, "raw intent flow", func(ctx context.Context) error {
		r, err := env.rawFlow(ctx)
		res.Flow = &r
		return err
	})
	for _, n := range cfg.Ghosts {
		fan := len(res.Fanout)
		res.Fanout = append(res.Fanout, Fan{Ghosts: n})
		add(PhaseFanout, fmt.Sprintf("raw fan-out %d", n), func(ctx context.Context) error {
			d, err := env.rawFanout(ctx, n)
			res.Fanout[fan].RawS = roundPositive(d.Seconds(), 3)
			return err
		})
		var fl *fleet
		add(PhaseFanout, fmt.Sprintf("fan-out %d register", n), func(ctx context.Context) (err error) {
			fl, err = env.register(ctx, &res.Fanout[fan])
			return err
		})
		add(PhaseFanout, fmt.Sprintf("fan-out %d report", n), func(ctx context.Context) error {
			defer fl.close()
			return fl.report(ctx, &res.Fanout[fan])
		})
	}
	if !cfg.wants(PhaseFanout) {
		res.Fanout = []Fan{}
	}
	add(PhaseRSS, "ghostctl RSS", func(ctx context.Context) (err error) {
		res.GhostRSSMB, err = env.ghostRSS(ctx)
		return err
	})
	for i, s := range steps {
		if cfg.Progress != nil {
			cfg.Progress(s.name, i, len(steps))
		}
		var err error
		pprof.Do(ctx, pprof.Labels("phase", StepLabel(s.name)), func(ctx context.Context) { err = s.run(ctx) })
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	if cfg.Progress != nil {
		cfg.Progress("done", len(steps), len(steps))
	}
	res.Notes = env.notes
	if res.Raw.RatePerS > 0 {
		res.Ratio = round(res.E2E.RatePerS/res.Raw.RatePerS, 3)
		if res.Flow != nil {
			res.FlowRatio = round(res.Flow.RatePerS/res.Raw.RatePerS, 3)
		}
	}
	return res, nil
}

// StepLabel is the pprof label value (and file name part) of a step named name.
func StepLabel(name string) string { return strings.ReplaceAll(name, " ", "-") }

// runEnv is what the steps of one run share.
type runEnv struct {
	cfg Config
	dir string
	pl  payloads
	n   int // servers started, for distinct store dirs
	// notes say why a figure could not be measured.
	notes []string
	// closers stop what a step left running for the next one, should the run end early.
	closers []func()
}

func (e *runEnv) cleanup() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

func (e *runEnv) note(s string) {
	e.notes = append(e.notes, s)
	e.cfg.Log.Warn(s, "component", "bench")
}

// startServer starts an embedded server (in-process only, or on a loopback port) with a
// fresh store under the run's directory and the run's sync setting.
func (e *runEnv) startServer(listen bool) (*natsd.Server, func(), error) {
	e.n++
	store := filepath.Join(e.dir, fmt.Sprintf("server-%d", e.n))
	cfg := natsd.Config{StoreDir: store, Sync: e.cfg.Sync, DontListen: !listen}
	if listen {
		cfg.Listen = "127.0.0.1:0"
	}
	srv, err := natsd.Start(cfg)
	if err != nil {
		return nil, nil, err
	}
	stop := func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(store)
	}
	return srv, stop, nil
}

// settle collects the garbage the setup of a timed section left, just before its clock
// starts. Every timed section, raw and edgectl alike, starts from a collected heap: the
// process holds up to ten thousand simulated machines' connections (about 1 GB), and a
// collection that setup made due would otherwise land in whichever section ran next, a
// cost of the simulation that no real Mirage or Ghost carries, charged at random.
func settle() { runtime.GC() }

// waitFor polls cond every interval until it holds, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// gate is a test seed shared by a fleet of in-process Ghosts: it observes how many of its
// executions run at once, and fails on the Ghosts told to.
type gate struct {
	running, peak atomic.Int32
	failOn        map[string]bool
}

func (g *gate) Info() bus.SeedInfo {
	return bus.SeedInfo{ID: "test.gate", Name: "Gate", Operations: []bus.OperationInfo{{
		Name: "hold", Idempotent: true, Params: []bus.ParamInfo{{Name: "ms", Required: true, Pattern: "[0-9]{1,4}"}},
	}}}
}

func (g *gate) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	g.observe(g.running.Add(1))
	defer g.running.Add(-1)
	var ms int
	fmt.Sscan(req.Args["ms"], &ms)
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
	case <-ctx.Done():
		return bus.Result{}, ctx.Err()
	}
	return bus.Result{Status: "ok", Stdout: "held " + req.Args["ms"] + "ms"}, nil
}

// perGhost binds the shared counters to one Ghost's id.
type perGhost struct {
	*gate
	id string
}

func (p perGhost) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	if p.failOn[p.id] {
		p.observe(p.running.Add(1))
		time.Sleep(20 * time.Millisecond)
		p.running.Add(-1)
		return bus.Result{Status: "failed", ExitCode: 3, Stderr: "told to fail"}, errors.New("told to fail")
	}
	return p.gate.Execute(ctx, req)
}

func (g *gate) observe(n int32) {
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// gateFleet starts n Ghosts db-00.. with role=db hosting the shared gate seed.
func gateFleet(t *testing.T, env *testenv.Env, n int, failOn map[string]bool) *gate {
	g := &gate{failOn: failOn}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("db-%02d", i)
		reg := ghost.NewRegistry()
		if err := reg.Add(perGhost{g, id}); err != nil {
			t.Fatal(err)
		}
		env.StartGhost(id, testenv.WithRegistry(reg), testenv.Labels(map[string]string{"role": "db"}))
	}
	return g
}

// Max-concurrency is never exceeded, as observed by the executions themselves, and the
// rollout still reaches every target.
func TestMaxConcurrencyIsNeverExceeded(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	g := gateFleet(t, env, 10, nil)
	testenv.Eventually(t, 5*time.Second, "10 registrations", func() bool { return len(m.Fleet().All()) == 10 })
	is := testenv.NewIssue("role=db", "test.gate", "hold", map[string]string{"ms": "150"}, 30*time.Second)
	is.MaxConcurrency = "2"
	r := env.Run(env.Client(), is)
	if r.Phase != bus.PhaseSatisfied || r.Counts.Success != 10 {
		t.Fatalf("%s %+v", r.Summary, r.Counts)
	}
	if peak := g.peak.Load(); peak != 2 {
		t.Fatalf("observed %d executions at once, want exactly 2 (the limit, reached)", peak)
	}
}

// Once errors exceed max-errors, targets not yet started are skipped.
func TestMaxErrorsStopsTheRollout(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	gateFleet(t, env, 10, map[string]bool{"db-00": true, "db-01": true, "db-02": true})
	testenv.Eventually(t, 5*time.Second, "10 registrations", func() bool { return len(m.Fleet().All()) == 10 })
	is := testenv.NewIssue("role=db", "test.gate", "hold", map[string]string{"ms": "10"}, 30*time.Second)
	is.MaxConcurrency, is.MaxErrors = "1", "1"
	r := env.Run(env.Client(), is)
	// db-00 and db-01 fail (2 > 1): the 8 others are never started.
	if r.Phase != bus.PhaseFailed || r.Counts.Error != 2 || r.Counts.Skipped != 8 || r.Counts.Success != 0 {
		t.Fatalf("%s %+v", r.Summary, r.Counts)
	}
	for _, res := range r.Results {
		if res.Outcome == bus.OutcomeSkipped && (res.Error == nil || res.Error.Code != bus.CodeSkipped || !strings.Contains(res.Error.Message, "max-errors")) {
			t.Errorf("skipped result %+v", res)
		}
	}
}

func planGhost(t *testing.T, env *testenv.Env, id string) *kv.Seed {
	store := kv.New()
	reg := ghost.NewRegistry()
	for _, s := range []ghost.Seed{store, flow.New()} {
		if err := reg.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	env.StartGhost(id, testenv.WithRegistry(reg))
	return store
}

// A plan runs its steps in order; a step that fails stops it and the rest are skipped.
func TestPlanRunsInOrderAndStopsOnFailure(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	store := planGhost(t, env, "plan-a")
	client := env.Client()
	ok := testenv.NewIssue("plan-a", "", "", nil, 20*time.Second)
	ok.Plan = []bus.PlanStep{
		{Name: "write", SeedSelector: "seed.kv", Operation: "put", Args: map[string]string{"key": "x", "value": "1"}},
		{Name: "bump", SeedSelector: "seed.kv", Operation: "incr", Args: map[string]string{"key": "x"}},
		{Name: "read", SeedSelector: "seed.kv", Operation: "get", Args: map[string]string{"key": "x"}},
	}
	r := env.Run(client, ok)
	if r.Phase != bus.PhaseSatisfied || len(r.Results) != 3 || r.Results[2].Stdout != "2" {
		t.Fatalf("plan in order: %s %+v", r.Summary, r.Results)
	}
	for i, res := range r.Results {
		if res.Step != i {
			t.Errorf("result %d is of step %d", i, res.Step)
		}
	}
	bad := testenv.NewIssue("plan-a", "", "", nil, 20*time.Second)
	bad.Plan = []bus.PlanStep{
		{Name: "ok", SeedSelector: "seed.flow", Operation: "status", Args: map[string]string{}},
		{Name: "fails", SeedSelector: "seed.kv", Operation: "get", Args: map[string]string{"key": "missing"}},
		{Name: "never", SeedSelector: "seed.kv", Operation: "put", Args: map[string]string{"key": "never", "value": "1"}},
	}
	r = env.Run(client, bad)
	got := []string{r.Results[0].Outcome, r.Results[1].Outcome, r.Results[2].Outcome}
	if r.Phase != bus.PhaseFailed || strings.Join(got, ",") != "success,error,skipped" {
		t.Fatalf("plan whose second step fails: %s %v", r.Summary, got)
	}
	if _, ran := store.Value("never"); ran {
		t.Fatal("the step after the failed one ran")
	}
}

// Two intents contend for a lock: the second waits, says why, and runs after the first.
func TestBlockingStepsContendForALock(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	planGhost(t, env, "lock-g")
	client := env.Client()
	first := testenv.NewIssue("lock-g", "", "", nil, 20*time.Second)
	first.Plan = []bus.PlanStep{{SeedSelector: "seed.flow", Operation: "sleep", Args: map[string]string{"ms": "800"}, Blocking: true}}
	second := testenv.NewIssue("lock-g", "", "", nil, 20*time.Second)
	second.Plan = []bus.PlanStep{{SeedSelector: "seed.flow", Operation: "step", Args: map[string]string{"name": "apply"}, Blocking: true}}
	issueNoWait(t, client, first)
	time.Sleep(100 * time.Millisecond)
	issueNoWait(t, client, second)

	var waited bool
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var final *bus.Report
	err := client.WatchReports(ctx, second.IntentID, func(r *bus.Report) bool {
		if r.Phase == bus.PhaseInProgress && strings.Contains(r.Summary, "waiting for lock lock-g::seed.flow held by intent "+first.IntentID) {
			waited = true
		}
		if bus.Terminal(r.Phase) {
			final = r
			return false
		}
		return true
	})
	if err != nil || final == nil {
		t.Fatalf("second intent: %v", err)
	}
	if !waited {
		t.Fatal("the second intent never reported that it waits for the lock")
	}
	a := waitReport(t, client, first.IntentID, 10*time.Second)
	if a.Phase != bus.PhaseSatisfied || final.Phase != bus.PhaseSatisfied {
		t.Fatalf("first %s, second %s", a.Summary, final.Summary)
	}
	var firstDone, secondStart int64
	for _, ev := range env.Events(env.JetStream()) {
		switch ev.IntentID {
		case first.IntentID:
			firstDone = ev.FinishedMS
		case second.IntentID:
			secondStart = ev.StartedMS
		}
	}
	if secondStart < firstDone {
		t.Fatalf("the second intent started at %d, before the first finished at %d", secondStart, firstDone)
	}
}

// A blocking step's command may start on its Ghost as late as deliver_by (here: the Ghost
// is down when it is sent, and reads it back when it comes up) and run its timeout from
// then, past the intent's deadline. Mirage reports it timeout at the deadline, but the lock
// stays held until the command's event comes: the next blocking step on the same
// ghost::seed never runs beside it.
func TestTimedOutBlockingStepKeepsItsLockUntilItsCommandEnds(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	store := ghost.NewMemoryStore() // its replay position outlives the restart
	g := env.StartGhost("lock-l", testenv.Store(store))
	client := env.Client()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	first := testenv.NewIssue("lock-l", "", "", nil, 3*time.Second)
	first.Plan = []bus.PlanStep{{SeedSelector: "seed.flow", Operation: "sleep", Args: map[string]string{"ms": "5000"}, Blocking: true}}
	second := testenv.NewIssue("lock-l", "", "", nil, 15*time.Second)
	second.Plan = []bus.PlanStep{{SeedSelector: "seed.flow", Operation: "sleep", Args: map[string]string{"ms": "100"}, Blocking: true}}
	issueNoWait(t, client, first)
	issueNoWait(t, client, second)
	// Back half-way to the first intent's deadline: its command, read back then, runs its
	// 3 s timeout from then, ending well past the deadline and its 500 ms of grace.
	time.Sleep(1500 * time.Millisecond)
	env.StartGhost("lock-l", testenv.Store(store))

	a := waitReport(t, client, first.IntentID, 10*time.Second)
	if a.Phase != bus.PhaseFailed || a.Counts.Timeout != 1 {
		t.Fatalf("first intent: %s; want it timed out by Mirage while its command runs", a.Summary)
	}
	b := waitReport(t, client, second.IntentID, 15*time.Second)
	if b.Phase != bus.PhaseSatisfied {
		t.Fatalf("second intent: %s", b.Summary)
	}
	var evA, evB *bus.Event
	for end := time.Now().Add(5 * time.Second); (evA == nil || evB == nil) && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		for _, ev := range env.Events(env.JetStream()) {
			switch ev.IntentID {
			case first.IntentID:
				evA = &ev
			case second.IntentID:
				evB = &ev
			}
		}
	}
	if evA == nil || evB == nil {
		t.Fatalf("events: first %v, second %v", evA, evB)
	}
	if evA.FinishedMS <= a.TimestampMS {
		t.Fatalf("the first intent's command ended (%d) before Mirage timed it out (%d): the test shows nothing", evA.FinishedMS, a.TimestampMS)
	}
	if evB.StartedMS < evA.FinishedMS {
		t.Fatalf("two blocking steps on lock-l::seed.flow ran at once: first %d..%d, second %d..%d", evA.StartedMS, evA.FinishedMS, evB.StartedMS, evB.FinishedMS)
	}
}

// The issue's Done-when: twenty in-process Ghosts with two label sets; the real miragectl
// with --target role=db --max-concurrency 2 --jsonl streams one line per db Ghost, and the
// executions, as the Ghosts recorded them in their events, never overlap more than two at
// once. Then a plan file runs in order through the CLI.
func TestRolloutFromTheCLI(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	for i := 0; i < 20; i++ {
		role := "db"
		if i%2 == 1 {
			role = "web"
		}
		env.StartGhost(fmt.Sprintf("node-%02d", i), testenv.Labels(map[string]string{"role": role, "site": []string{"lab", "prod"}[i/10]}), testenv.Seeds("seed.flow"))
	}
	testenv.Eventually(t, 10*time.Second, "twenty registrations", func() bool { return len(m.Fleet().All()) == 20 })
	r := miragectl(t, env.URL, "issue", "--target", "role=db", "--max-concurrency", "2", "seed.flow", "sleep", "ms=200", "--jsonl")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	type line struct {
		IntentID string `json:"intent_id"`
		bus.TargetResult
	}
	lines := jsonLines[line](t, r.stdout)
	if len(lines) != 10 {
		t.Fatalf("%d JSONL lines, want one per db Ghost (10)", len(lines))
	}
	intent := ""
	seen := map[string]bool{}
	for _, l := range lines {
		if l.Outcome != bus.OutcomeSuccess || seen[l.GhostID] {
			t.Fatalf("line %+v", l)
		}
		seen[l.GhostID] = true
		intent = l.IntentID
	}
	type span struct{ start, end int64 }
	var spans []span
	for _, ev := range env.Events(env.JetStream()) {
		if ev.IntentID == intent {
			spans = append(spans, span{ev.StartedMS, ev.FinishedMS})
		}
	}
	if len(spans) != 10 {
		t.Fatalf("%d events for %s, want 10", len(spans), intent)
	}
	peak := 0
	for _, a := range spans {
		at := 0
		for _, b := range spans {
			if b.start <= a.start && a.start < b.end {
				at++
			}
		}
		peak = max(peak, at)
	}
	if peak > 2 {
		t.Fatalf("%d executions overlapped, more than --max-concurrency 2", peak)
	}
	// A plan file, in order, through the CLI.
	plan := filepath.Join(t.TempDir(), "plan.toml")
	if err := os.WriteFile(plan, []byte(`target = "node-00"
[[step]]
seed = "seed.flow"
operation = "step"
args = { name = "init" }
[[step]]
seed = "seed.flow"
operation = "step"
args = { name = "apply" }
blocking = true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = miragectl(t, env.URL, "issue", "--plan", plan, "--json")
	var rep bus.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 {
		t.Fatalf("plan: exit %d, %v", r.code, err)
	}
	if len(rep.Results) != 2 || !strings.HasPrefix(rep.Results[0].Stdout, "init") || !strings.HasPrefix(rep.Results[1].Stdout, "apply") || rep.Results[1].Step != 1 {
		t.Fatalf("plan results %+v", rep.Results)
	}
}

// A unit whose turn comes after the delivery deadline is skipped (1910), not sent to be
// refused as expired; and a unit sent in a later wave gets only what is left of the
// intent's timeout, so it cannot run past the deadline.
func TestLateWavesRespectDeliveryDeadlineAndTimeout(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	gateFleet(t, env, 3, nil)
	testenv.Eventually(t, 5*time.Second, "3 registrations", func() bool { return len(m.Fleet().All()) == 3 })
	// A Ghost holds the commands it receives in its first 500 ms, until no other
	// instance of its id can still answer its start probes (ghost/idprobe.go): the
	// timing below is that of settled Ghosts.
	time.Sleep(600 * time.Millisecond)
	client := env.Client()

	// Units of 700 ms one at a time, delivery within 1 s: db-00 and db-01 start in time,
	// db-02's turn (at about 1.4 s) comes too late.
	is := testenv.NewIssue("role=db", "test.gate", "hold", map[string]string{"ms": "700"}, 30*time.Second)
	is.MaxConcurrency, is.DeliverByMS = "1", time.Now().Add(time.Second).UnixMilli()
	r := env.Run(client, is)
	if r.Counts.Success != 2 || r.Counts.Skipped != 1 || r.Counts.Expired != 0 {
		t.Fatalf("delivery deadline: %s %+v, want 2 successes and 1 skipped", r.Summary, r.Counts)
	}
	for _, res := range r.Results {
		if res.Outcome == bus.OutcomeSkipped && (res.Error == nil || res.Error.Code != bus.CodeSkipped || !strings.Contains(res.Error.Message, "deliver_by")) {
			t.Errorf("skipped result %+v", res)
		}
	}

	// Units of 1 s one at a time with a 1.5 s timeout: the second is sent at about 1 s
	// with 0.5 s left, and its Ghost times it out (1401) before the intent's deadline.
	is = testenv.NewIssue("db-00,db-01", "test.gate", "hold", map[string]string{"ms": "1000"}, 1500*time.Millisecond)
	is.MaxConcurrency = "1"
	start := time.Now()
	r = env.Run(client, is)
	second := r.Results[1]
	if r.Results[0].Outcome != bus.OutcomeSuccess || second.Outcome != bus.OutcomeError || second.Error == nil || second.Error.Code != bus.CodeExecTimeout {
		t.Fatalf("later wave: %s %+v, want db-01 timed out by its Ghost (1401)", r.Summary, r.Results)
	}
	// The 1401 above says the Ghost ended the second unit at the deadline (run through, it
	// would succeed at about 2 s); this bounds the rest, with room for two busy cores.
	if took := time.Since(start); took > 3500*time.Millisecond {
		t.Errorf("the intent ended after %s, past its deadline (1.5 s) by 2 s", took)
	}
}

// A delivery deadline already past is refused at issue time: every command would expire.
func TestPastDeliveryDeadlineIsRefused(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	is := testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)
	is.DeliverByMS = time.Now().Add(-time.Minute).UnixMilli()
	_, err := env.Client().Issue(context.Background(), is)
	var perr *bus.Error
	if !errors.Is(err, mirage.ErrRejected) || !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || perr.Field != "deliver_by_ms" {
		t.Fatalf("issue with deliver_by_ms in the past: %v, want a 1300 rejection on deliver_by_ms", err)
	}
}

// --deliver-within is sent as a duration (deliver_within_ms) that Mirage counts on its own
// clock: an issue from a machine whose clock is 5 minutes behind Mirage's is not refused
// as past its delivery deadline, and one from a machine 5 minutes ahead does not get 5
// minutes more than asked. The deliver_by_ms such a client sends beside it (for a Mirage
// of an earlier version) is ignored.
func TestDeliverWithinIsCountedOnMiragesClock(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	client := env.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, skew := range []time.Duration{-5 * time.Minute, 5 * time.Minute} {
		is := testenv.NewIssue("local", "seed.flow", "status", nil, 30*time.Second)
		sender := time.Now().Add(skew)
		is.TimestampMS = sender.UnixMilli()
		is.DeliverWithinMS, is.DeliverByMS = 10_000, sender.Add(10*time.Second).UnixMilli()
		before := time.Now()
		if _, err := client.Issue(ctx, is); err != nil {
			t.Fatalf("sender's clock %s off: issue with --deliver-within 10s: %v", skew, err)
		}
		rec, err := client.Intent(ctx, is.IntentID)
		if err != nil {
			t.Fatal(err)
		}
		if lo, hi := before.Add(10*time.Second).UnixMilli(), time.Now().Add(10*time.Second).UnixMilli(); rec.DeliverByMS < lo || rec.DeliverByMS > hi {
			t.Fatalf("sender's clock %s off: the intent's deliver_by_ms is %+d ms from 10 s after acceptance on Mirage's clock", skew, rec.DeliverByMS-lo)
		}
		if r, err := client.WaitTerminal(ctx, is.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
			t.Fatalf("sender's clock %s off: %v %+v", skew, err, r)
		}
	}
}

// A deliver_within_ms longer than the intent's timeout leaves the intent's deadline as the
// delivery deadline, however long: one over 292 years wrapped negative as a time.Duration,
// and every command of the intent was expired (1600) before it was sent. A negative one is
// refused as a duration, not as "unix milliseconds".
func TestDeliverWithinLongerThanTheTimeoutIsTheDeadline(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	client := env.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	is := testenv.NewIssue("local", "seed.flow", "status", nil, 10*time.Second)
	is.DeliverWithinMS = 9_300_000_000_000 // about 295 years
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatal(err)
	}
	rec, err := client.Intent(ctx, is.IntentID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.DeliverByMS != rec.DeadlineMS {
		t.Fatalf("deliver_by_ms %+d ms from the deadline, want the deadline", rec.DeliverByMS-rec.DeadlineMS)
	}
	if r, err := client.WaitTerminal(ctx, is.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("%v %+v, want satisfied", err, r)
	}
	neg := testenv.NewIssue("local", "seed.flow", "status", nil, 10*time.Second)
	neg.DeliverWithinMS = -1
	if err := neg.Validate(); err == nil || !strings.Contains(err.Error(), "duration") {
		t.Fatalf("deliver_within_ms -1: %v, want refused as a duration", err)
	}
}

package ghost_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// requiredGhost makes Ghost id with policy required and no seed, closed with the test;
// start starts it (within 30 s).
func requiredGhost(t *testing.T, env *testenv.Env, id string, registerTimeout time.Duration) (*ghost.Ghost, func() error) {
	t.Helper()
	g, err := ghost.New(env.Conn(id), ghost.Config{ID: id, Policy: ghost.PolicyRequired, RegisterTimeout: registerTimeout},
		ghost.NewRegistry(), ghost.NewMemoryStore(), env.Log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return g.Start(ctx)
	}
}

// With policy required and no Mirage, Start fails soon with an error that says so.
func TestRequiredPolicyWithoutMirageFailsStart(t *testing.T) {
	env := testenv.New(t)
	const registerTimeout = 100 * time.Millisecond
	g, start := requiredGhost(t, env, "needy", registerTimeout)
	begun := time.Now()
	err := start()
	elapsed := time.Since(begun)
	if err == nil {
		t.Fatal("Start succeeded with policy required and no Mirage")
	}
	if !errors.Is(err, ghost.ErrNoMirage) || !strings.Contains(err.Error(), "Mirage") {
		t.Fatalf("Start error %q, want ErrNoMirage naming Mirage", err)
	}
	// Five register timeouts, plus a retry pause and slack for the race detector.
	if limit := 5*registerTimeout + 2*time.Second; elapsed > limit {
		t.Fatalf("Start took %s to give up, want under %s", elapsed, limit)
	}
	if g.Registered() {
		t.Fatal("Registered() after a failed Start")
	}
}

// A Ghost with policy required that no Mirage accepts runs nothing before it refuses to
// start: not a command waiting in EDGE_CMD, not one arriving live while it tries to
// register, not an execution a crash left started.
func TestRequiredGhostThatCannotRegisterRunsNothing(t *testing.T) {
	env := testenv.New(t)
	const id = "needy-idle"
	ctx := context.Background()
	waiting, _ := storeCommand(t, env, id, "echo", map[string]string{"message": "waiting"})
	reg, err := seeds.Registry([]string{"seed.flow"}, filepath.Join(t.TempDir(), "seeds"))
	if err != nil {
		t.Fatal(err)
	}
	store := ghost.NewMemoryStore()
	crashed := ghost.Execution{ExecutionID: subjects.NewID(subjects.PrefixExecution), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), TraceID: subjects.NewTraceID(), SeedID: "seed.flow", Operation: "echo", StartedMS: time.Now().UnixMilli()}
	if _, _, err := store.Begin(ctx, crashed); err != nil {
		t.Fatal(err)
	}
	g, err := ghost.New(env.Conn(id), ghost.Config{ID: id, Policy: ghost.PolicyRequired, RegisterTimeout: 1500 * time.Millisecond}, reg, store, env.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	started := make(chan error, 1)
	go func() { started <- g.Start(ctx) }()
	time.Sleep(300 * time.Millisecond) // Start is trying to register
	live, _ := storeCommand(t, env, id, "echo", map[string]string{"message": "live"})
	if err := <-started; !errors.Is(err, ghost.ErrNoMirage) {
		t.Fatalf("Start: %v, want ErrNoMirage", err)
	}
	time.Sleep(200 * time.Millisecond) // what a subscription would have taken in meanwhile
	for _, c := range []string{waiting, live} {
		if e, err := store.GetByCommandID(ctx, c); !errors.Is(err, ghost.ErrNotFound) {
			t.Errorf("command %s handled before the Ghost refused to start: %+v (%v)", c, e, err)
		}
	}
	if e, err := store.GetByCommandID(ctx, crashed.CommandID); err != nil || e.State != ghost.StateStarted {
		t.Errorf("the execution a crash left started was resumed before the Ghost refused to start: %+v (%v)", e, err)
	}
	for _, ev := range env.Events(env.JetStream()) {
		t.Errorf("event %s (%s) published before the Ghost refused to start", ev.EventID, ev.CommandID)
	}
}

// With policy required, a register.ack that never comes (lost on the way) is asked for
// again within the register timeout: here a stand-in for Mirage drops the first register
// and accepts the next, and Start succeeds.
func TestRequiredPolicyAsksAgainForALostRegisterAck(t *testing.T) {
	env := testenv.New(t)
	const id = "needy-twice"
	var seen atomic.Int32
	sub, err := env.Conn("stand-in for mirage").Subscribe(subjects.Register(id), func(msg *nats.Msg) {
		if seen.Add(1) == 1 {
			return // lost
		}
		data, err := bus.Encode(&bus.RegisterAck{Header: bus.NewHeader(bus.TypeRegisterAck, "", time.Now()), GhostID: id, Status: bus.RegisterAccepted})
		if err == nil {
			_ = msg.Respond(data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	g, start := requiredGhost(t, env, id, 4*time.Second)
	if err := start(); err != nil {
		t.Fatalf("Start with the first register.ack lost: %v", err)
	}
	if !g.Registered() || seen.Load() < 2 {
		t.Fatalf("registered %v after %d registers", g.Registered(), seen.Load())
	}
}

// With policy required, a register sent on a connection that is then lost is asked
// again as soon as the connection is back, not when its try's wait for register.ack runs
// out: the answer went with the connection.
func TestRequiredPolicyAsksAgainWhenTheConnectionIsLost(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	proxy := testenv.NewProxy(t, env.Server.Addr().String())
	const id = "needy-cut"
	first := make(chan struct{})
	var seen atomic.Int32
	sub, err := env.Conn("stand-in for mirage").Subscribe(subjects.Register(id), func(msg *nats.Msg) {
		if seen.Add(1) == 1 {
			close(first) // not answered before the cut: its answer would go with the connection
			return
		}
		data, err := bus.Encode(&bus.RegisterAck{Header: bus.NewHeader(bus.TypeRegisterAck, "", time.Now()), GhostID: id, Status: bus.RegisterAccepted})
		if err == nil {
			_ = msg.Respond(data)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	gc := env.URLConn(id, proxy.URL())
	// Each try waits 5 s for its register.ack.
	g, err := ghost.New(gc, ghost.Config{ID: id, Policy: ghost.PolicyRequired, RegisterTimeout: 15 * time.Second},
		ghost.NewRegistry(), ghost.NewMemoryStore(), env.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	started := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		started <- g.Start(ctx)
	}()
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("no register within 10 s")
	}
	proxy.Cut()
	testenv.Eventually(t, 5*time.Second, "disconnect", func() bool { return !gc.IsConnected() })
	time.Sleep(500 * time.Millisecond)
	back := time.Now()
	proxy.Restore()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Start still waiting 20 s after the link came back")
	}
	took := time.Since(back)
	t.Logf("registered %s after the link came back", took.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Fatalf("registered %s after the link came back; want the register asked again on reconnect, not after the lost try's 5 s", took.Round(time.Millisecond))
	}
}

// A headless Ghost serves a command published by hand, and never joins the fleet even
// when a Mirage comes up and announces itself.
func TestHeadlessGhostServesWithoutRegistering(t *testing.T) {
	env := testenv.New(t)
	const id = "loner"
	g := env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"))
	m := env.StartMirage(mirage.Config{}) // after the Ghost: its announce must be ignored

	now := time.Now()
	cmd := bus.Command{
		Header:       bus.NewHeader(bus.TypeCommand, "", now),
		CommandID:    subjects.NewID(subjects.PrefixCommand),
		IntentID:     subjects.NewID(subjects.PrefixIntent),
		GhostID:      id,
		SeedSelector: "seed.flow",
		Operation:    "echo",
		Args:         map[string]string{"message": "served headless"},
		DeliverByMS:  now.Add(time.Minute).UnixMilli(),
		TimeoutMS:    5000,
	}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	nc := env.Conn("operator")
	if err := nc.Publish(subjects.Command(id), data); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	js := env.JetStream()
	want := bus.EventID(id, cmd.CommandID)
	var got *bus.Event
	testenv.Eventually(t, 10*time.Second, "the headless Ghost's event in EDGE_EVT", func() bool {
		for _, ev := range env.Events(js) {
			if ev.EventID == want {
				got = &ev
				return true
			}
		}
		return false
	})
	if got.Outcome != bus.OutcomeSuccess || got.Result.Stdout != "served headless" || got.CommandID != cmd.CommandID || got.TraceID != cmd.TraceID {
		t.Fatalf("event %+v, want a success echoing the message for the command", got)
	}
	if exec, err := g.Store().GetByCommandID(context.Background(), cmd.CommandID); err != nil || exec.State != ghost.StateFinished {
		t.Fatalf("execution %+v %v, want finished", exec, err)
	}

	if g.Registered() {
		t.Fatal("a headless Ghost registered")
	}
	if _, ok := m.Fleet().Get(id); ok {
		t.Fatal("a headless Ghost is in Mirage's fleet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, id); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("KV %s has key %s (err %v), want none", bus.BucketGhosts, id, err)
	}
}

// An auto Ghost started before any Mirage serves, then registers when Mirage announces.
// The default RegisterTimeout is kept: with policy auto an attempt that times out is not
// retried, so a short timeout would make this test depend on the machine's load.
func TestAutoGhostRegistersWhenMirageAnnounces(t *testing.T) {
	env := testenv.New(t)
	const id = "early"
	start := time.Now()
	g := env.StartGhost(id, testenv.Seeds("seed.flow", "seed.kv"), testenv.Labels(map[string]string{"role": "edge"}))
	// No Mirage: no responders, so Start does not wait out a register timeout.
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("Start with policy auto and no Mirage took %s", elapsed)
	}
	if g.Registered() {
		t.Fatal("registered with no Mirage running")
	}
	m := env.StartMirage(mirage.Config{})
	testenv.Eventually(t, 10*time.Second, "the Ghost in Mirage's fleet", func() bool {
		_, ok := m.Fleet().Get(id)
		return ok
	})
	rec, _ := m.Fleet().Get(id)
	if rec.GhostID != id || rec.Labels["role"] != "edge" || len(rec.Seeds) != 2 {
		t.Fatalf("fleet record %+v, want ghost %s with its labels and 2 seeds", rec, id)
	}
	if _, ok := rec.Seed("seed.kv"); !ok {
		t.Fatalf("fleet record does not list seed.kv: %+v", rec.Seeds)
	}
	if st := rec.Status(time.Now()); st != mirage.StatusOnline {
		t.Fatalf("status %s right after registering, want online", st)
	}
	testenv.Eventually(t, 10*time.Second, "Registered() to report the register.ack", g.Registered)
}

// countingHandler counts the log records by message.
type countingHandler struct {
	mu *sync.Mutex
	n  map[string]int
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.n[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

func (h countingHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[msg]
}

// Messages that are no envelope for the Ghost (with auth, another Ghost can have its
// event's publish ack delivered to every Ghost's mirage.announce, once per event it
// publishes) are refused with one warning per bus.RateLogEvery, not one each, and the
// Ghost keeps serving.
func TestJunkOnGhostSubjectsIsLoggedAtMostOncePerInterval(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{}) // the streams; the headless Ghost does not register
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	const id = "flooded"
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)))
	nc := env.Conn("flooder")
	for i := 0; i < 500; i++ {
		if err := nc.Publish(subjects.Announce, []byte(`{"stream":"EDGE_EVT","seq":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The Ghost still serves: a command published by hand runs.
	now := time.Now()
	cmd := bus.Command{
		Header:    bus.NewHeader(bus.TypeCommand, "", now),
		CommandID: subjects.NewID(subjects.PrefixCommand), IntentID: subjects.NewID(subjects.PrefixIntent),
		GhostID: id, SeedSelector: "seed.flow", Operation: "status", Args: map[string]string{},
		DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 5000,
	}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	js := env.JetStream()
	if _, err := js.PublishMsg(context.Background(), bus.NewMsg(subjects.Command(id), data, cmd.CommandID, cmd.TraceID)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the command's event", func() bool {
		for _, ev := range env.Events(js) {
			if ev.CommandID == cmd.CommandID {
				return true
			}
		}
		return false
	})
	if got := logs.count("refused a malformed announce"); got < 1 || got > 2 {
		t.Fatalf("%d warnings for 500 malformed announces, want 1 (2 if an interval ended)", got)
	}
	// Each subject has its own bound: the flood of announces hides no refusal on another.
	if err := nc.Publish(subjects.AttachGhost(id), []byte(`{"stream":"EDGE_EVT","seq":2}`)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the refused attach request logged", func() bool {
		return logs.count("refused an attach request") == 1
	})
}

// A Ghost whose every execution slot is taken says so, once per bus.RateLogEvery, while
// commands wait for a slot; they all run in the end.
func TestSaturatedGhostSaysSoOnce(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{}) // the streams; the headless Ghost does not register
	logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
	const id = "saturated"
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
		testenv.Tune(func(c *ghost.Config) { c.MaxConcurrent = 1 }))
	var ids []string
	for range 4 {
		id, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": "200"})
		ids = append(ids, id)
	}
	for _, c := range ids {
		eventFor(t, env, id, c)
	}
	if got := logs.count("every execution slot is busy; commands wait for one to free"); got != 1 {
		t.Fatalf("%d warnings that the slots are busy, want 1", got)
	}
}

// queueBehindASlot starts a headless Ghost with one execution slot, gives it a sleep of
// busyMS, then n sleeps of 5 s with the given timeout and deliver_by_ms deliverWithin
// after they are sent, which wait for the slot, and returns the events of those n once
// every command has its event.
func queueBehindASlot(t *testing.T, id, busyMS string, n int, timeout, deliverWithin time.Duration) []bus.Event {
	t.Helper()
	env := testenv.New(t)
	env.StartMirage(mirage.Config{}) // the streams; the headless Ghost does not register
	env.StartGhost(id, testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"),
		testenv.Tune(func(c *ghost.Config) { c.MaxConcurrent = 1 }))
	busy, _ := storeCommand(t, env, id, "sleep", map[string]string{"ms": busyMS})
	waiting := map[string]bool{}
	for range n {
		c, _ := storeCommandDeadlines(t, env, id, "sleep", map[string]string{"ms": "5000"}, timeout, deliverWithin)
		waiting[c] = true
	}
	var ends []bus.Event
	testenv.Eventually(t, 10*time.Second, "the events of every command", func() bool {
		ends = ends[:0]
		busyDone := false
		for _, e := range env.Events(env.JetStream()) {
			switch {
			case e.CommandID == busy:
				busyDone = true
			case waiting[e.CommandID]:
				ends = append(ends, e)
			}
		}
		return busyDone && len(ends) == n
	})
	return ends
}

// A command that waits for an execution slot has the wait taken off its timeout: Mirage's
// deadline for it runs from when it sent it, so the Ghost ends it (1401) once its timeout
// has passed since it arrived, not a slot's wait later, when its event would no longer
// count. Every command queued behind the slot is counted from its own arrival, and one
// that waited its whole timeout is not run: 1401, also when its deliver_by_ms is its
// deadline, as Mirage sets it by default (it has passed too, but the wait is the reason).
func TestWaitForASlotComesOffTheTimeout(t *testing.T) {
	for _, deliverWithin := range []time.Duration{time.Minute, time.Second} {
		for _, ev := range queueBehindASlot(t, "one-slot", "1500", 2, time.Second, deliverWithin) {
			if ev.Error == nil || ev.Error.Code != bus.CodeExecTimeout || !strings.Contains(ev.Error.Message, "not run") {
				t.Errorf("deliver_by_ms %s after sending: a command that waited past its timeout ended %+v (%+v), want a 1401 saying it was not run", deliverWithin, ev.Result, ev.Error)
			}
			if ran := time.Duration(ev.FinishedMS-ev.StartedMS) * time.Millisecond; ran > 500*time.Millisecond {
				t.Errorf("it ran %s once it had a slot, after waiting longer than its 1s timeout for it", ran)
			}
		}
	}
}

// A command that reached the Ghost before its deliver_by_ms and waited for a slot until
// after it is not run (expired, 1600), and its error says it came in time and waited,
// not that it was delivered late.
func TestDeliverByPassedWhileWaitingForASlot(t *testing.T) {
	for _, ev := range queueBehindASlot(t, "one-slot-deliver", "1500", 1, 10*time.Second, 500*time.Millisecond) {
		if ev.Error == nil || ev.Error.Code != bus.CodeExpired || !strings.Contains(ev.Error.Message, "reached the ghost in time but waited") {
			t.Errorf("a command that arrived in time and waited past its deliver_by_ms ended %+v (%+v), want a 1600 saying it came in time and waited", ev.Result, ev.Error)
		}
	}
}

// A command that waited for a slot for part of its timeout runs for what is left of it.
func TestASlotWaitLeavesTheRestOfTheTimeout(t *testing.T) {
	ev := queueBehindASlot(t, "one-slot-rest", "800", 1, 2*time.Second, time.Minute)[0]
	if ev.Error == nil || ev.Error.Code != bus.CodeExecTimeout || !strings.Contains(ev.Error.Message, "waiting to start") {
		t.Fatalf("the command that waited ended %+v (%+v), want a 1401 naming its wait", ev.Result, ev.Error)
	}
	// 0.7-1.2 s of its 2 s were left once the first command (and the Ghost's id claim, just
	// started) freed the slot: it runs that, not nothing and not 2 s.
	if ran := time.Duration(ev.FinishedMS-ev.StartedMS) * time.Millisecond; ran < 300*time.Millisecond || ran > 1800*time.Millisecond {
		t.Fatalf("it ran %s once it had a slot, want what was left of its 2s timeout (0.7-1.2s)", ran)
	}
}

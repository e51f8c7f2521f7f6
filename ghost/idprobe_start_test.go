package ghost_test

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// lateTwin stands for another running instance of a Ghost id whose answers to probes come
// late (a slow route, a busy host): it holds the probes it receives until answer.
type lateTwin struct {
	t      *testing.T
	self   bus.Instance
	probes chan *nats.Msg
}

func newLateTwin(t *testing.T, env *testenv.Env, id string) *lateTwin {
	t.Helper()
	tw := &lateTwin{t: t, probes: make(chan *nats.Msg, 64), self: bus.Instance{GhostID: id,
		InstanceID: subjects.NewID(subjects.PrefixInstance), Hostname: "twin-host", PID: 4242,
		StartedMS: time.Now().Add(-time.Hour).UnixMilli(), Phase: bus.InstanceRunning}}
	nc := env.Conn("late twin of " + id)
	if _, err := nc.ChanSubscribe(subjects.Probe(id), tw.probes); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return tw
}

// answer answers a probe it holds: running, started an hour before the prober.
func (tw *lateTwin) answer() {
	tw.t.Helper()
	select {
	case m := <-tw.probes:
		data, err := bus.Encode(&bus.IDProbeAnswer{Header: bus.NewHeader(bus.TypeProbeAnswer, "", time.Now()), Instance: tw.self})
		if err != nil {
			tw.t.Fatal(err)
		}
		if err := m.Respond(data); err != nil {
			tw.t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		tw.t.Fatal("no probe reached the late twin")
	}
}

// standsDownFor waits until g stood down naming tw.
func (tw *lateTwin) standsDownFor(g *ghost.Ghost) {
	tw.t.Helper()
	select {
	case <-g.Done():
	case <-time.After(5 * time.Second):
		tw.t.Fatal("the Ghost did not stand down after the late twin's answer")
	}
	var dup *ghost.DuplicateIDError
	if err := g.Err(); !errors.As(err, &dup) || dup.Other.InstanceID != tw.self.InstanceID {
		tw.t.Fatalf("the Ghost stood down with %v, want a DuplicateIDError naming the late twin", err)
	}
}

// holdSeed's one operation, hold, is not idempotent and runs until the Ghost stops it.
type holdSeed struct{ running atomic.Int32 }

func (s *holdSeed) Info() bus.SeedInfo {
	return bus.SeedInfo{ID: "test.hold", Name: "test.hold", Description: "holds", Operations: []bus.OperationInfo{
		{Name: "hold", Description: "runs until the Ghost stops it", Idempotent: false, Params: []bus.ParamInfo{}}}}
}

func (s *holdSeed) Execute(ctx context.Context, _ *bus.SeedExecute) (bus.Result, error) {
	s.running.Add(1)
	defer s.running.Add(-1)
	<-ctx.Done()
	return bus.Result{}, ctx.Err()
}

// An execution a crash left started is ended (resumed) only once the start probes
// settle, as commands are: a restarted Ghost that learns late that another instance keeps
// its id stands down having neither run nor answered it (the other's events carry the
// same event_ids), and the next start ends it.
func TestResumedExecutionsWaitForTheStartProbes(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-resume"
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "executions.db")
	seed := &holdSeed{}
	reg := ghost.NewRegistry()
	if err := reg.Add(seed); err != nil {
		t.Fatal(err)
	}
	newGhost := func(nc *nats.Conn, st ghost.ExecutionStore) *ghost.Ghost {
		g, err := ghost.New(nc, ghost.Config{ID: id, Policy: ghost.PolicyHeadless, ShutdownGrace: 100 * time.Millisecond,
			ShutdownFlush: 100 * time.Millisecond}, reg, st, env.Log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = g.Close() })
		return g
	}
	openStore := func() *ghost.BoltStore {
		st, err := ghost.OpenBoltStore(path, ghost.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}

	// Before the crash: the Ghost runs hold, recorded started (it is not idempotent).
	storeCommand(t, env, "nobody", "status", nil) // the streams
	crashConn := env.Conn("before the crash")
	store := openStore()
	if err := startWithin(newGhost(crashConn, store), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cmd := sendHold(t, crashConn, id)
	testenv.Eventually(t, 5*time.Second, "hold to run", func() bool { return seed.running.Load() == 1 })
	// The crash: the process's connection and store are gone, hold recorded started.
	crashConn.Close()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	store = openStore()
	if e, err := store.GetByCommandID(ctx, cmd); err != nil || e.State != ghost.StateStarted {
		t.Fatalf("after the crash hold is %+v (%v), want started", e, err)
	}
	twin := newLateTwin(t, env, id)
	restarted := newGhost(env.Conn("restarted"), store)
	if err := startWithin(restarted, 10*time.Second); err != nil {
		t.Fatalf("the restarted Ghost, the twin's answer not in yet: %v", err)
	}
	twin.answer()
	twin.standsDownFor(restarted)
	if e, err := store.GetByCommandID(ctx, cmd); err != nil || e.State != ghost.StateStarted {
		t.Errorf("the Ghost that stood down ended the execution a crash left started: %+v (%v)", e, err)
	}
	for _, ev := range env.Events(env.JetStream()) {
		if ev.CommandID == cmd {
			t.Errorf("the Ghost that stood down published event %s (%s) for the execution a crash left started", ev.EventID, ev.Error)
		}
	}

	// Started again with the id to itself, it ends the execution: interrupted (1700).
	again := newGhost(env.Conn("started again"), store)
	if err := startWithin(again, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	eventFor(t, env, id, cmd)
	if e, err := store.GetByCommandID(ctx, cmd); err != nil || e.Event == nil || e.Event.Error == nil || e.Event.Error.Code != bus.CodeInterrupted {
		t.Fatalf("hold after the next start: %+v (%v), want interrupted (1700)", e, err)
	}
}

// sendHold publishes a test.hold hold command for ghostID, as a live command arrives.
func sendHold(t *testing.T, nc *nats.Conn, ghostID string) string {
	t.Helper()
	now := time.Now()
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: ghostID, SeedSelector: "test.hold", Operation: "hold",
		Args: map[string]string{}, DeliverByMS: now.Add(time.Minute).UnixMilli(), TimeoutMS: 60000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishMsg(bus.NewMsg(subjects.Command(ghostID), data, cmd.CommandID, cmd.TraceID)); err != nil {
		t.Fatal(err)
	}
	return cmd.CommandID
}

// A Ghost with policy required that learns, while it registers, that another instance
// keeps its id fails Start with the DuplicateIDError at once (ghostctl prints it and exits
// 3), not with what its registration came to after the stand-down: a Mirage's
// register.ack arriving then (which found the Ghost closed: "ghost stopping"), or none.
func TestRequiredGhostStandingDownWhileRegisteringFailsStartWithTheDuplicate(t *testing.T) {
	for _, tc := range []struct {
		name string
		// acks: the stand-in for Mirage accepts the registers it receives once the Ghost
		// stood down; otherwise it never answers.
		acks bool
	}{
		{"a register.ack after the stand-down", true},
		{"no register.ack", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			const id = "needy-twin"
			const registerTimeout = 6 * time.Second
			g, start := requiredGhost(t, env, id, registerTimeout)
			registering := make(chan struct{}, 1)
			_, err := env.Conn("stand-in for mirage").Subscribe(subjects.Register(id), func(m *nats.Msg) {
				select {
				case registering <- struct{}{}:
				default:
				}
				select {
				case <-g.Done():
				default:
					return // not yet
				}
				if !tc.acks {
					return
				}
				data, err := bus.Encode(&bus.RegisterAck{Header: bus.NewHeader(bus.TypeRegisterAck, "", time.Now()), GhostID: id, Status: bus.RegisterAccepted})
				if err == nil {
					_ = m.Respond(data)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			twin := newLateTwin(t, env, id)
			started := make(chan error, 1)
			begun := time.Now()
			go func() { started <- start() }()
			select {
			case <-registering: // the id is claimed: the twin's answer comes late
			case <-time.After(10 * time.Second):
				t.Fatal("the Ghost never registered")
			}
			twin.answer()
			twin.standsDownFor(g)
			err = <-started
			var dup *ghost.DuplicateIDError
			if !errors.As(err, &dup) || dup.Other.InstanceID != twin.self.InstanceID {
				t.Fatalf("Start: %v, want the DuplicateIDError naming the late twin", err)
			}
			if !strings.HasPrefix(err.Error(), "ghost id "+id+" is already running: instance "+twin.self.InstanceID+" on host twin-host, pid 4242") {
				t.Fatalf("Start's error %q does not name the twin", err)
			}
			if took := time.Since(begun); took >= registerTimeout {
				t.Fatalf("Start took %s, the whole register timeout, to report the stand-down", took)
			}
			if g.Registered() {
				t.Fatal("the Ghost that stood down registered")
			}
		})
	}
}

// A Start that fails after the Ghost claimed its id (policy required, no Mirage) leaves
// nothing running, without waiting for Close: no probe loop answers probe.<id> for the id
// (another instance may start at once), and no goroutine of the Ghost is left.
func TestFailedStartLeavesNothingRunning(t *testing.T) {
	env := testenv.New(t)
	const id = "needy-gone"
	g, start := requiredGhost(t, env, id, 300*time.Millisecond)
	if err := start(); !errors.Is(err, ghost.ErrNoMirage) {
		t.Fatalf("Start: %v, want ErrNoMirage", err)
	}
	testenv.Eventually(t, 2*time.Second, "no goroutine of the Ghost whose Start failed", func() bool {
		return ghostGoroutines() == ""
	})
	if s := ghostGoroutines(); s != "" {
		t.Fatalf("goroutines of the Ghost whose Start failed:\n%s", s)
	}
	probe, err := bus.Encode(&bus.IDProbe{Header: bus.NewHeader(bus.TypeProbe, "", time.Now()),
		Instance: bus.Instance{GhostID: id, InstanceID: subjects.NewID(subjects.PrefixInstance), Hostname: "h", PID: 1, StartedMS: time.Now().UnixMilli(), Phase: bus.InstanceStarting}})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := env.Conn("prober").Request(subjects.Probe(id), probe, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("probe.%s after a failed Start: %v (%v), want no responders", id, m, err)
	}
	other, _ := newFlowGhost(t, env, id, "next")
	if err := startWithin(other, 10*time.Second); err != nil {
		t.Fatalf("another Ghost with the id, the failed one not closed: %v", err)
	}
	_ = g.Close()
}

// ghostGoroutines returns the stacks of the goroutines running Ghost methods.
func ghostGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, s := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(s, "edgectl/ghost.(*Ghost)") {
			out = append(out, s)
		}
	}
	return strings.Join(out, "\n\n")
}

// A running instance's answer that comes after the Ghost's probe wait has ended, the
// Ghost serving, still stands it down when that instance started first: a busy host or
// route that answers late must not leave two instances of one id running every command.
// An instance started after this one stands down itself (it read this one's answer, as
// both decide), so this one stays. An answer after lateAnswerWait is not read any more.
func TestAnswerAfterTheProbeWaitStillStandsTheGhostDown(t *testing.T) {
	for _, tc := range []struct {
		name      string
		late      time.Duration // lateAnswerWait
		twinLater bool          // the twin started after the Ghost
		standDown bool
	}{
		{"within the late answer wait", time.Minute, false, true},
		{"within the late answer wait, from one started later", time.Minute, true, false},
		{"after the late answer wait", 200 * time.Millisecond, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			const id = "edge-slow-twin"
			twin := newLateTwin(t, env, id)
			if tc.twinLater {
				twin.self.StartedMS = time.Now().Add(time.Hour).UnixMilli()
			}
			g, _ := newFlowGhost(t, env, id, "newcomer", func(c *ghost.Config) {
				ghost.SetProbeWait(c, 50*time.Millisecond)
				ghost.SetLateAnswerWait(c, tc.late)
			})
			if err := startWithin(g, 10*time.Second); err != nil {
				t.Fatalf("the Ghost, the twin's answer not in yet: %v", err)
			}
			// The probe wait is over: the Ghost serves.
			cmd, _ := storeCommand(t, env, id, "status", nil)
			eventFor(t, env, id, cmd)
			time.Sleep(400 * time.Millisecond) // past the short late answer wait
			twin.answer()
			if tc.standDown {
				twin.standsDownFor(g)
				return
			}
			select {
			case <-g.Done():
				t.Fatalf("the Ghost stood down: %v", g.Err())
			case <-time.After(500 * time.Millisecond):
			}
		})
	}
}

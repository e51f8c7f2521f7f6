package ghost_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/test/testenv"
)

// newFlowGhost builds (not starts) a headless Ghost id hosting seed.flow on connection
// name, with its own store, closed with the test.
func newFlowGhost(t *testing.T, env *testenv.Env, id, conn string, opts ...func(*ghost.Config)) (*ghost.Ghost, *ghost.MemoryStore) {
	t.Helper()
	reg := ghost.NewRegistry()
	if err := reg.Add(flow.New()); err != nil {
		t.Fatal(err)
	}
	cfg := ghost.Config{ID: id, Policy: ghost.PolicyHeadless, ShutdownGrace: time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	store := ghost.NewMemoryStore()
	g, err := ghost.New(env.Conn(conn), cfg, reg, store, env.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g, store
}

func startWithin(g *ghost.Ghost, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return g.Start(ctx)
}

// A second Ghost with the id of a running one refuses to start, naming the first, and
// runs nothing: the first alone runs the commands of the id.
func TestSecondGhostWithSameIDRefusesToStart(t *testing.T) {
	env := testenv.New(t)
	const id = "edge-1"
	first, firstStore := newFlowGhost(t, env, id, "first")
	if err := startWithin(first, 10*time.Second); err != nil {
		t.Fatalf("first Ghost: %v", err)
	}
	second, secondStore := newFlowGhost(t, env, id, "second")
	begun := time.Now()
	err := startWithin(second, 10*time.Second)
	if !errors.Is(err, ghost.ErrDuplicateID) {
		t.Fatalf("second Ghost with id %s started: %v", id, err)
	}
	if took := time.Since(begun); took > 2*time.Second {
		t.Errorf("the refusal took %s", took)
	}
	want := fmt.Sprintf("ghost id %s is already running: instance %s on host %s, pid %d, since ",
		id, first.Instance().InstanceID, first.Instance().Hostname, first.Instance().PID)
	if !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "; two Ghosts with one id would both run every command") {
		t.Fatalf("refusal %q, want it to start %q", err, want)
	}
	_ = second.Close()

	// Commands of the id run on the first Ghost, never on the second.
	var ids []string
	for i := 0; i < 3; i++ {
		c, _ := storeCommand(t, env, id, "status", nil)
		ids = append(ids, c)
	}
	for _, c := range ids {
		eventFor(t, env, id, c)
		if _, err := firstStore.GetByCommandID(context.Background(), c); err != nil {
			t.Errorf("first Ghost has no execution of %s: %v", c, err)
		}
		if _, err := secondStore.GetByCommandID(context.Background(), c); !errors.Is(err, ghost.ErrNotFound) {
			t.Errorf("the refused Ghost ran %s (%v)", c, err)
		}
	}
	select {
	case <-first.Done():
		t.Fatalf("the first Ghost stopped: %v", first.Err())
	default:
	}
	// Once the first is closed the id is free again at once.
	_ = first.Close()
	third, _ := newFlowGhost(t, env, id, "third")
	if err := startWithin(third, 10*time.Second); err != nil {
		t.Fatalf("a Ghost started after the first closed: %v", err)
	}
}

// Two Ghosts with one id started at the same moment never both serve: one refuses, or
// both do, and one that found the other only after starting stands down soon after.
func TestGhostsStartingTogetherNeverBothServe(t *testing.T) {
	env := testenv.New(t)
	for round := 0; round < 12; round++ {
		id := fmt.Sprintf("twin-%d", round)
		var gs [2]*ghost.Ghost
		var stores [2]*ghost.MemoryStore
		var errs [2]error
		for i := range gs {
			// Both use the replay consumer of the id: one's catch-up can fail on the
			// other's, and it resumes on the next tick. The probe's windows are
			// lengthened: what is tested is the exchange, and on a machine busy with
			// other tests its messages can take longer than the 500 ms a Ghost waits.
			gs[i], stores[i] = newFlowGhost(t, env, id, fmt.Sprintf("%s-%d", id, i),
				func(c *ghost.Config) {
					c.CatchUpInterval = 200 * time.Millisecond
					ghost.SetProbeWait(c, 2*time.Second)
				})
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range gs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = startWithin(gs[i], 10*time.Second)
			}()
		}
		// A command stored before both start: each catches up on it at start, only
		// one may run it.
		cmd, _ := storeCommand(t, env, id, "status", nil)
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil && !errors.Is(err, ghost.ErrDuplicateID) {
				t.Fatalf("round %d: Ghost %d: %v", round, i, err)
			}
		}
		serving := func() int {
			n := 0
			for i, g := range gs {
				select {
				case <-g.Done():
				default:
					if errs[i] == nil {
						n++
					}
				}
			}
			return n
		}
		// Late answers are read for the probe wait; give a stand-down time to happen.
		testenv.Eventually(t, 6*time.Second, "at most one of two Ghosts with one id serving", func() bool { return serving() <= 1 })
		if serving() == 1 {
			eventFor(t, env, id, cmd)
		}
		ran := 0
		for _, st := range stores {
			if _, err := st.GetByCommandID(context.Background(), cmd); err == nil {
				ran++
			}
		}
		if ran > 1 {
			t.Fatalf("round %d: both Ghosts with id %s ran command %s", round, id, cmd)
		}
		t.Logf("round %d: start errors %v; stood down: %v, %v", round, errs, gs[0].Err(), gs[1].Err())
		for _, g := range gs {
			_ = g.Close()
		}
	}
}

// After a partition, two running Ghosts with one id find each other when the cut-off
// one reconnects: the one started later (here the second, started during the cut)
// stops by itself with ErrDuplicateID, the first keeps serving.
func TestRunningGhostsWithOneIDKeepTheFirstAfterReconnect(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	const id = "edge-split"
	proxy := testenv.NewProxy(t, strings.TrimPrefix(env.URL, "nats://"))
	firstConn := env.URLConn("first", proxy.URL())
	reg := ghost.NewRegistry()
	if err := reg.Add(flow.New()); err != nil {
		t.Fatal(err)
	}
	first := env.StartGhost(id, testenv.Via(firstConn), testenv.WithRegistry(reg), testenv.Policy(ghost.PolicyHeadless))
	proxy.Cut()
	testenv.Eventually(t, 5*time.Second, "the first Ghost to be cut off", func() bool { return !firstConn.IsConnected() })
	second, _ := newFlowGhost(t, env, id, "second")
	if err := startWithin(second, 10*time.Second); err != nil {
		t.Fatalf("the second Ghost, started while the first was cut off: %v", err)
	}
	proxy.Restore()
	select {
	case <-second.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("two running Ghosts with one id: neither stood down after the reconnect")
	}
	var dup *ghost.DuplicateIDError
	if err := second.Err(); !errors.As(err, &dup) || dup.Other.InstanceID != first.Instance().InstanceID || dup.Other.Phase != bus.InstanceRunning {
		t.Fatalf("second Ghost stood down with %v, want a DuplicateIDError naming the first", err)
	}
	time.Sleep(time.Second) // the first has read the answers to its probe by now
	select {
	case <-first.Done():
		t.Fatalf("the first Ghost stood down too: %v", first.Err())
	default:
	}
	c, _ := storeCommand(t, env, id, "status", nil)
	eventFor(t, env, id, c)
}

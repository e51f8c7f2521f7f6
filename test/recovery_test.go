package test

import (
	"context"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// latestReport reads an intent's newest report; nil while it has none.
func latestReport(c *mirage.Client, intentID string) *bus.Report {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := c.LatestReport(ctx, intentID)
	if err != nil {
		return nil
	}
	return r
}

// A rollout past its max-errors when Mirage restarts: the targets whose commands were
// already sent are followed to their end, not reported "not started".
func TestRestartKeepsSentTargetsPastMaxErrors(t *testing.T) {
	env := testenv.New(t)
	m1 := env.StartMirage(mirage.Config{})
	a, b, c := newFixture(t, env, "edge-e1"), newFixture(t, env, "edge-e2"), newFixture(t, env, "edge-e3")
	for _, f := range []*fixture{a, b, c} {
		f.start()
	}
	client := env.Client()
	// edge-e2 and edge-e3 hold the key, edge-e1 does not: its get fails.
	if r := env.Run(client, testenv.NewIssue("edge-e2,edge-e3", "seed.kv", "put", map[string]string{"key": "x", "value": "1"}, 10*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("put: %s", r.Summary)
	}
	b.stop()
	c.stop()
	get := testenv.NewIssue("edge-e1,edge-e2,edge-e3", "seed.kv", "get", map[string]string{"key": "x"}, 30*time.Second)
	get.MaxErrors = "0"
	issueNoWait(t, client, get)
	// edge-e1's failure is counted; the commands to the two offline Ghosts are stored.
	testenv.Eventually(t, 10*time.Second, "edge-e1's error in a report", func() bool {
		r := latestReport(client, get.IntentID)
		return r != nil && r.Counts.Error == 1
	})
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	env.StartMirage(mirage.Config{})
	time.Sleep(300 * time.Millisecond) // the new Mirage has recovered the intent
	b.start()
	c.start()
	r := waitReport(t, client, get.IntentID, 20*time.Second)
	if r.Counts != (bus.Counts{Targets: 3, Success: 2, Error: 1}) {
		t.Fatalf("after a restart past max-errors: %s %+v, want the two sent targets' successes", r.Summary, r.Counts)
	}
}

// Intents waiting for a blocking step's lock when Mirage restarts: the one that held it
// (its command running) keeps it, and no other intent's command reaches the Ghost before
// that command has ended.
func TestRestartKeepsBlockingLockWithItsHolder(t *testing.T) {
	env := testenv.New(t)
	m1 := env.StartMirage(mirage.Config{})
	f := newFixture(t, env, "edge-l")
	f.start()
	client := env.Client()
	step := func(ms string) *bus.Issue {
		is := testenv.NewIssue("edge-l", "seed.flow", "sleep", map[string]string{"ms": ms}, 30*time.Second)
		is.Plan = []bus.PlanStep{{SeedSelector: "seed.flow", Operation: "sleep", Args: map[string]string{"ms": ms}, Blocking: true}}
		return is
	}
	holder := step("1500")
	issueNoWait(t, client, holder)
	waiters := []*bus.Issue{step("50"), step("50"), step("50")}
	for _, is := range waiters {
		issueNoWait(t, client, is)
	}
	time.Sleep(200 * time.Millisecond)
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	env.StartMirage(mirage.Config{})
	for _, is := range append([]*bus.Issue{holder}, waiters...) {
		if r := waitReport(t, client, is.IntentID, 20*time.Second); r.Phase != bus.PhaseSatisfied {
			t.Fatalf("%s: %s", is.IntentID, r.Summary)
		}
	}
	var held bus.Event
	var others []bus.Event
	for _, ev := range env.Events(env.JetStream()) {
		if ev.IntentID == holder.IntentID {
			held = ev
		} else {
			others = append(others, ev)
		}
	}
	if held.EventID == "" || len(others) != len(waiters) {
		t.Fatalf("events: holder %q, %d others", held.EventID, len(others))
	}
	for _, ev := range others {
		if ev.StartedMS < held.FinishedMS {
			t.Fatalf("intent %s ran on edge-l from %d, while the lock holder's command ran until %d", ev.IntentID, ev.StartedMS, held.FinishedMS)
		}
	}
}

// A record in edge_intents that does not decode cannot be followed, but it does not keep
// Mirage from starting and serving.
func TestCorruptIntentRecordDoesNotStopRecovery(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{}).Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := env.JetStream().KeyValue(ctx, bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "int_corrupt", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-c")
	if r := env.Run(env.Client(), testenv.NewIssue("edge-c", "seed.flow", "status", nil, 10*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("after a corrupt record: %s", r.Summary)
	}
}

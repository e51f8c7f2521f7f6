package mirage

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// otherMirage is a Mirage instance like m's, started at m's start plus by.
func otherMirage(m *Mirage, by time.Duration) bus.MirageInstance {
	o := m.Instance()
	o.InstanceID = subjects.NewID(subjects.PrefixInstance)
	o.PID++
	o.StartedMS += by.Milliseconds()
	o.Phase = bus.InstanceRunning
	return o
}

// After a gap (this Mirage was stopped for longer than the probe wait), an issue waits for
// a new probe: a Mirage that started meanwhile answers it, this one stands down, and the
// issue is neither answered nor recorded.
func TestIssueAfterAGapWaitsForTheProbe(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirageWith(t, ns, Config{}, nil)
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "newer"})
	newer := otherMirage(m, time.Second)
	// The newer Mirage, as far as probes go: it answers every other one's probe.
	if _, err := nc.Subscribe(subjects.MirageProbe, func(msg *nats.Msg) {
		var p bus.MirageProbe
		if bus.Decode(msg.Data, &p) != nil || p.InstanceID == newer.InstanceID || msg.Reply == "" {
			return
		}
		if data, err := bus.Encode(&bus.MirageProbeAnswer{Header: bus.NewHeader(bus.TypeMirageProbeAnswer, "", time.Now()), MirageInstance: newer}); err == nil {
			_ = msg.Respond(data)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	m.claim.wake.mu.Lock()
	m.claim.wake.last = time.Now().Add(-2 * time.Second) // as after a SIGSTOP
	m.claim.wake.mu.Unlock()
	inbox := nc.NewInbox()
	answers, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	is := bus.Issue{Header: bus.NewHeader(bus.TypeIssue, "", time.Now()), IntentID: subjects.NewID(subjects.PrefixIntent), Actor: "t",
		TargetScope: "edge-gap", Objective: bus.Objective{SeedSelector: "seed.flow", Operation: "status", Args: map[string]string{}}, TimeoutMS: 10000}
	data, err := bus.Encode(&is)
	if err != nil {
		t.Fatal(err)
	}
	m.handleIssue(&nats.Msg{Subject: subjects.Issue, Reply: inbox, Data: data, Sub: answers})
	if msg, err := answers.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("a Mirage back from a gap answered an issue before probing: %s", msg.Data)
	}
	var clash *AnotherMirageError
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the Mirage back from a gap did not stand down for the newer one")
	}
	if err := m.Err(); !errors.As(err, &clash) || !clash.StoodDown || clash.Other.InstanceID != newer.InstanceID {
		t.Fatalf("stood down for %v, want %s", err, newer.InstanceID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.intents.Get(ctx, is.IntentID); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("a Mirage back from a gap recorded an issue: %v", err)
	}
}

package mirage

import (
	"context"
	"errors"
	"strings"
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

// publishProbe publishes on mirage.probe the probe of Mirage instance p, answers to reply.
func publishProbe(t *testing.T, nc *nats.Conn, p bus.MirageInstance, reply string) {
	t.Helper()
	data, err := bus.Encode(&bus.MirageProbe{Header: bus.NewHeader(bus.TypeMirageProbe, "", time.Now()), MirageInstance: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishMsg(&nats.Msg{Subject: subjects.MirageProbe, Reply: reply, Data: data}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// The probe of a Mirage that was starting, read by one back from a gap (it waited for
// this one while it was stopped), is not logged as a start refused: the other one stopped
// waiting and went on starting. Read by a Mirage that was there all along, it is.
func TestStartProbeReadAfterAGapIsNotLoggedAsRefused(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	var logs syncBuffer
	m := startTestMirageWith(t, ns, Config{}, warnLog(&logs))
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "starting"})
	answers, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		t.Fatal(err)
	}
	waitLog := func(s string) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), s); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("no %q logged:\n%s", s, logs.String())
			}
		}
	}

	late := otherMirage(m, time.Second)
	late.Phase = bus.InstanceStarting
	m.claim.wake.mu.Lock()
	m.claim.wake.last = time.Now().Add(-2 * time.Second) // as after a SIGSTOP
	m.claim.wake.mu.Unlock()
	publishProbe(t, nc, late, answers.Subject)
	waitLog("another Mirage probed as it started while this one was not answering")
	if strings.Contains(logs.String(), "it refuses") {
		t.Fatalf("the start probe read after a gap was logged as a refused start:\n%s", logs.String())
	}

	m.claim.wake.mu.Lock()
	m.claim.wake.stale, m.claim.wake.last = false, time.Now() // as after the check that follows
	m.claim.wake.mu.Unlock()
	starting := otherMirage(m, 2*time.Second)
	starting.Phase = bus.InstanceStarting
	publishProbe(t, nc, starting, answers.Subject)
	waitLog("another Mirage tried to start on this deployment; it refuses")

}

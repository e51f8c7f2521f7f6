package mirage

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

// probeAsNewer publishes on mirage.probe what a running Mirage started a minute after m
// would: m stands down on reading it.
func probeAsNewer(t *testing.T, ns *natsd.Server, m *Mirage) {
	t.Helper()
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "newer mirage"})
	self := m.Instance()
	p := bus.MirageProbe{Header: bus.NewHeader(bus.TypeMirageProbe, "", time.Now()), MirageInstance: bus.MirageInstance{
		MirageID: self.MirageID, InstanceID: subjects.NewID(subjects.PrefixInstance), Hostname: "other", PID: 1,
		StartedMS: self.StartedMS + time.Minute.Milliseconds(), Phase: bus.InstanceRunning}}
	data, err := bus.Encode(&p)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subjects.MirageProbe, data); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// Close called while Mirage is standing down (SIGTERM to 'up' at that moment) waits for
// the stop under way and returns once it is done: it neither closes what the stand-down
// closes a second time nor returns while Mirage still works. Here the stand-down is held
// by an event callback (taking up an intent not followed).
func TestCloseWhileStandingDownWaitsForTheStop(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	m := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, _ := unfollowedOf(ctx, t, m, "int_heldstanddown", "g1")
	inCallback, release := make(chan struct{}), make(chan struct{})
	m.mu.Lock()
	m.tookUp = func(*liveIntent) {
		close(inCallback)
		<-release
	}
	m.mu.Unlock()
	publishResult(t, m, &rec, 0)
	select {
	case <-inCallback:
	case <-time.After(10 * time.Second):
		t.Fatal("the event did not take its intent up")
	}
	probeAsNewer(t, ns, m)
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m.claim.mu.Lock()
		released := m.claim.down && m.claim.probes == nil
		m.claim.mu.Unlock()
		if released {
			break // the stand-down's Close is under way
		}
		if time.Now().After(end) {
			close(release)
			t.Fatal("Mirage did not stand down")
		}
	}
	closed := make(chan struct{})
	go func() {
		_ = m.Close()
		close(closed)
	}()
	select {
	case <-closed:
		close(release)
		t.Fatal("Close returned while the stand-down's stop waits for an event callback")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return once the callback was done")
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the stand-down")
	}
}

// A stand-down decided while Start still subscribes (the newer Mirage's probe read just as
// this one began to serve) stops what Start set up after it: no subscription or events
// consumer is left running on a Mirage that stopped.
func TestStandDownWhileStartSubscribesStopsWhatStartSetUp(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, nc, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.served = func() {
		probeAsNewer(t, ns, m)
		select { // the stand-down's stop, if it does not wait for Start
		case <-m.stop:
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Mirage did not stand down")
	}
	for _, s := range m.subs {
		if s.IsValid() {
			t.Fatalf("%s is still subscribed after the stand-down", s.Subject)
		}
	}
	if m.cc == nil {
		t.Fatal("Start did not start the events consumer")
	}
	select {
	case <-m.cc.Closed():
	default:
		t.Fatal("the events consumer still runs after the stand-down")
	}
}

// A Mirage refused at the end of its start (the serving Mirage's answer came while it
// recovered: it came late, or NATS was briefly unreachable at its first probe) stores no
// report of the intents it recovered: the serving Mirage follows them, and an in_progress
// report stored after that one's terminal report would make an ended intent read open
// (reportPhase, endedIntents), to be taken up again on its next event or start.
func TestRefusedStartStoresNoReportOfTheServingMiragesIntents(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	a := startTestMirage(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := adoptRec("int_servedbya", "g1", time.Now())
	storeRecord(ctx, t, a, rec)
	a.send(&rec, a.rebuild(a.takeUp(&rec, "test")))
	// b does not wait for the answer to its first probe: it recovers the intent, then
	// reads a's answer and refuses to serve.
	b, err := New(ctx, natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage b"}), Config{ProbeWait: time.Nanosecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = b.Start(ctx)
	if !errors.Is(err, ErrAnotherMirage) {
		_ = b.Close()
		t.Fatalf("second Mirage's start: %v; want it refused", err)
	}
	b.mu.Lock()
	_, recovered := b.live[rec.IntentID]
	b.mu.Unlock()
	if !recovered {
		_ = b.Close()
		t.Fatal("the refused Mirage did not recover the intent; the test sets up nothing")
	}
	publishResult(t, a, &rec, 0)
	if r := waitTerminal(t, ns, rec.IntentID); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("terminal report %s %q; want satisfied", r.Phase, r.Summary)
	}
	_ = b.Close()
	if phase, err := a.reportPhase(ctx, rec.IntentID); err != nil || phase != bus.PhaseSatisfied {
		t.Fatalf("the intent's last report after the refused Mirage stopped: %q (%v); want satisfied", phase, err)
	}
}

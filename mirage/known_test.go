package mirage

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
)

// Every id added is reported as maybe recorded (no false "fresh", which would let the
// commands of a second issue under a recorded id leave), across layer growth; ids never
// added are mostly told apart.
func TestKnownIntentsNeverForgets(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	k := newKnownIntents(0, now) // a bucket that keeps its records
	const n = 300_000            // beyond the first layers' capacity
	for i := range n {
		k.add(fmt.Sprintf("int_known_%d", i), now)
	}
	if len(k.cur.layers) < 2 {
		t.Fatalf("%d layers after %d ids; the filter should have grown", len(k.cur.layers), n)
	}
	for i := range n {
		if id := fmt.Sprintf("int_known_%d", i); !k.mayHave(id, now.Add(1000*time.Hour)) {
			t.Fatalf("%s was added but reads as never recorded", id)
		}
	}
	maybe := 0
	for i := range 100_000 {
		if k.mayHave(fmt.Sprintf("int_other_%d", i), now) {
			maybe++
		}
	}
	// About 1% per layer; a handful of layers stays well under 10%.
	if maybe > 10_000 {
		t.Fatalf("%d of 100000 unknown ids read as maybe recorded", maybe)
	}
	t.Logf("%d layers, %d of 100000 unknown ids read as maybe", len(k.cur.layers), maybe)
}

// With a bucket that forgets records after its max age, the filter keeps every id for at
// least its period (the max age plus knownMargin) after it was added, whatever the
// rotations meanwhile, and forgets ids (and frees their layers) two periods on: its
// false positives, each a read of edge_intents on the issue path, do not pile up.
func TestKnownIntentsRotateWithTheBucketsMaxAge(t *testing.T) {
	const ttl = 7 * 24 * time.Hour
	period := knownPeriod(ttl)
	if period < ttl {
		t.Fatalf("period %s shorter than the bucket's max age %s", period, ttl)
	}
	t0 := time.Unix(1_700_000_000, 0)
	k := newKnownIntents(period, t0)
	// Ids added across three periods, 200 every tenth of a period.
	type added struct {
		id string
		at time.Time
	}
	var ids []added
	for step := range 30 {
		at := t0.Add(time.Duration(step) * period / 10)
		for i := range 200 {
			id := fmt.Sprintf("int_%d_%d", step, i)
			k.setPeriod(period, at) // the bucket's max age, read again whenever a rotation waits for it
			k.add(id, at)
			ids = append(ids, added{id, at})
		}
	}
	// Asked at any later time, every id added less than a period before is known.
	last := ids[len(ids)-1].at
	for _, q := range []time.Duration{0, period / 3, period / 2, period - time.Second} {
		now := last.Add(q)
		k.setPeriod(period, now)
		for _, a := range ids {
			if now.Sub(a.at) < period && !k.mayHave(a.id, now) {
				t.Fatalf("%s added %s before, less than the period %s, reads as never recorded", a.id, now.Sub(a.at), period)
			}
		}
	}
	if len(k.cur.layers)+len(k.prev.layers) > 4 {
		t.Fatalf("%d layers kept for two generations of 2000 ids", len(k.cur.layers)+len(k.prev.layers))
	}
	// Two periods after the last add every id is gone (up to the filter's false positives).
	now := last.Add(2 * period)
	k.setPeriod(period, now)
	still := 0
	for _, a := range ids {
		if k.mayHave(a.id, now) {
			still++
		}
	}
	if still > 0 {
		t.Fatalf("%d of %d ids added over two periods ago still read as maybe recorded", still, len(ids))
	}
	if len(k.cur.layers)+len(k.prev.layers) != 0 {
		t.Fatalf("%d layers kept after every id aged out", len(k.cur.layers)+len(k.prev.layers))
	}
}

// An operator raises edge_intents' max age while Mirage runs: the filter must not forget
// an id on the period read at start, or the next issue under it would be taken as fresh
// and its commands would leave before its Create fails. A rotation waits until the max
// age is read again, and the longer period is taken.
func TestKnownIntentsFollowARaisedMaxAge(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	nc := natsdtest.Connect(t, bus.ConnConfig{InProcess: ns, Name: "mirage"})
	var offset atomic.Int64 // how far the test moved Mirage's clock
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(ctx, nc, Config{Now: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.mu.Lock()
	before := m.known.period
	m.known.add("int_kept", clock())
	m.mu.Unlock()
	// The operator keeps records 30 days from now on.
	stream, err := m.js.Stream(ctx, "KV_"+bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.MaxAge = 30 * 24 * time.Hour
	if _, err := m.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// Two periods (of the max age read at start) later, the record is still there.
	offset.Store(int64(2*before + time.Minute))
	m.mu.Lock()
	kept := m.known.mayHave("int_kept", clock())
	m.mu.Unlock()
	if !kept {
		t.Fatalf("an id added %s ago reads as never recorded; the bucket keeps records 30 days", 2*before+time.Minute)
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m.mu.Lock()
		period := m.known.period
		m.mu.Unlock()
		if period == knownPeriod(cfg.MaxAge) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the filter's period is %s; want %s, read again from the bucket", period, knownPeriod(cfg.MaxAge))
		}
	}
	m.mu.Lock()
	kept = m.known.mayHave("int_kept", clock())
	m.known.setPeriod(before, clock()) // a max age shortened again: not followed
	period := m.known.period
	m.mu.Unlock()
	if !kept || period != knownPeriod(cfg.MaxAge) {
		t.Fatalf("after the max age was read again: id kept %v, period %s; want kept, %s", kept, period, knownPeriod(cfg.MaxAge))
	}
}

// An id claimed while a due rotation waits for the bucket's max age to be read again, after
// Mirage was idle for two periods, is kept a period like any other: the rotation that
// follows must not drop the generation it went into.
func TestKnownIntentKeptWhenAddedWhileARotationWaits(t *testing.T) {
	p := knownPeriod(7 * 24 * time.Hour)
	t0 := time.Unix(1_700_000_000, 0)
	k := newKnownIntents(p, t0)
	k.add("int_old", t0)
	now := t0.Add(2*p + time.Minute) // idle for two periods
	k.mayHave("int_new", now)        // claimIntent: the rotation is due, not yet confirmed
	k.add("int_new", now)
	k.setPeriod(p, now.Add(10*time.Millisecond)) // Mirage's loop reads the max age again
	if !k.mayHave("int_new", now.Add(time.Second)) {
		t.Fatal("int_new, added a second ago, reads as never recorded while edge_intents holds its record for a week")
	}
}

package mirage

import (
	"fmt"
	"testing"
	"time"
)

// Every id added is reported as maybe recorded (no false "fresh", which would let the
// commands of a second issue under a recorded id leave), across layer growth; ids never
// added are mostly told apart.
func TestKnownIntentsNeverForgets(t *testing.T) {
	k := newKnownIntents(0) // a bucket that keeps its records
	now := time.Unix(1_700_000_000, 0)
	const n = 300_000 // beyond the first layers' capacity
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
	k := newKnownIntents(period)
	t0 := time.Unix(1_700_000_000, 0)
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
			k.add(id, at)
			ids = append(ids, added{id, at})
		}
	}
	// Asked at any later time, every id added less than a period before is known.
	last := ids[len(ids)-1].at
	for _, q := range []time.Duration{0, period / 3, period / 2, period - time.Second} {
		now := last.Add(q)
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

package mirage

import (
	"fmt"
	"testing"
)

// Every id added is reported as maybe recorded (no false "fresh", which would let the
// commands of a second issue under a recorded id leave), across layer growth; ids never
// added are mostly told apart.
func TestKnownIntentsNeverForgets(t *testing.T) {
	k := newKnownIntents()
	const n = 300_000 // beyond the first layers' capacity
	for i := range n {
		k.add(fmt.Sprintf("int_known_%d", i))
	}
	if len(k.layers) < 2 {
		t.Fatalf("%d layers after %d ids; the filter should have grown", len(k.layers), n)
	}
	for i := range n {
		if id := fmt.Sprintf("int_known_%d", i); !k.mayHave(id) {
			t.Fatalf("%s was added but reads as never recorded", id)
		}
	}
	maybe := 0
	for i := range 100_000 {
		if k.mayHave(fmt.Sprintf("int_other_%d", i)) {
			maybe++
		}
	}
	// About 1% per layer; a handful of layers stays well under 10%.
	if maybe > 10_000 {
		t.Fatalf("%d of 100000 unknown ids read as maybe recorded", maybe)
	}
	t.Logf("%d layers, %d of 100000 unknown ids read as maybe", len(k.layers), maybe)
}

package ghost

import (
	"runtime"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// Patterns are checked at Add, compiled on first use, and compiled once for every
// operation and registry of the process that declares them; a pattern no hosted seed
// declares any more is dropped.
func TestPatternsCompiledLazilyAndShared(t *testing.T) {
	const declared = `[a-z]{1,200}-shared-by-test` // used by no other test
	expr := "^(?:" + declared + ")$"
	newSeed := func(id string) *testSeed {
		return &testSeed{id: id, ops: []bus.OperationInfo{op("a", param("x", true, declared)), op("b", param("y", true, declared))}}
	}
	regs := []*Registry{NewRegistry(), NewRegistry()}
	for i, r := range regs {
		if err := r.Add(newSeed("test.one")); err != nil {
			t.Fatal(err)
		}
		if err := r.Add(newSeed("test.two")); err != nil {
			t.Fatal(err)
		}
		if i == 0 && cached(expr) {
			t.Fatal("a pattern was compiled at Add")
		}
	}
	var first *pattern
	for _, r := range regs {
		for _, seed := range []string{"test.one", "test.two"} {
			for o, p := range map[string]string{"a": "x", "b": "y"} {
				if _, _, err := r.Resolve(seed, o, map[string]string{p: "abc-shared-by-test"}); err != nil {
					t.Fatalf("Resolve %s %s: %v", seed, o, err)
				}
				if _, _, err := r.Resolve(seed, o, map[string]string{p: "ABC"}); err == nil {
					t.Fatalf("Resolve %s %s accepted a value its pattern refuses", seed, o)
				}
				pat := r.seeds[seed].ops[o].patterns[p]
				if first == nil {
					first = pat
				} else if pat.compiled.Load() != first.compiled.Load() {
					t.Fatalf("%s %s compiled its own copy of a shared pattern", seed, o)
				}
			}
		}
	}
	if !cached(expr) {
		t.Fatal("the compiled pattern is not in the cache")
	}
	// Once no registry hosts a seed that declares it, the pattern is collected.
	for _, r := range regs {
		r.Remove("test.one")
		r.Remove("test.two")
	}
	deadline := time.Now().Add(10 * time.Second)
	for cached(expr) {
		if time.Now().After(deadline) {
			t.Fatal("a pattern no seed declares any more stays cached")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func cached(expr string) bool {
	compiledPatterns.mu.Lock()
	defer compiledPatterns.mu.Unlock()
	_, ok := compiledPatterns.m[expr]
	return ok
}

package bus

import (
	"errors"
	"regexp/syntax"
	"runtime"
	"testing"
	"time"
)

// A pattern is checked when parsed, compiled on its first Match, compiled once for every
// ParamPattern of the process that declares it, and dropped when none is left.
func TestParamPatternCompiledLazilyAndShared(t *testing.T) {
	const declared = `[a-z]{1,200}-shared-by-test` // used by no other test
	expr := "^(?:" + declared + ")$"
	var pats []*ParamPattern
	for range 4 {
		p, err := ParseParamPattern(declared)
		if err != nil {
			t.Fatal(err)
		}
		pats = append(pats, p)
	}
	if cached(expr) {
		t.Fatal("a pattern was compiled when parsed")
	}
	for _, p := range pats {
		if !p.Match("abc-shared-by-test") || p.Match("x abc-shared-by-test") || p.Match("abc-shared-by-test\n") {
			t.Fatal("the pattern does not match whole values only")
		}
		if p.compiled.Load() != pats[0].compiled.Load() {
			t.Fatal("a ParamPattern compiled its own copy of a shared pattern")
		}
	}
	if !cached(expr) {
		t.Fatal("the compiled pattern is not in the cache")
	}
	// The last users gone (pats is not used below), the compiled pattern is collected.
	deadline := time.Now().Add(10 * time.Second)
	for cached(expr) {
		if time.Now().After(deadline) {
			t.Fatal("a pattern no ParamPattern uses any more stays cached")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseParamPattern(t *testing.T) {
	all, err := ParseParamPattern("")
	if err != nil || !all.Match("") || !all.Match("any\nthing") {
		t.Errorf("the empty pattern: %v; it must match any value", err)
	}
	// Patterns that close the anchoring group themselves: wrapped, they would match any
	// value (";" and a leading "-" included).
	for _, escape := range []string{`[a-z]+)|(?:.*`, `x)|.*|(?:y`, `a)(?s:.*`} {
		if p, err := ParseParamPattern(escape); err == nil {
			t.Errorf("%q was accepted (matches %q: %v)", escape, "abc; rm -rf /", p.Match("abc; rm -rf /"))
		}
	}
	for _, bad := range []string{`[0-9`, `a{1,1001}`, `(?<`} {
		_, err := ParseParamPattern(bad)
		var se *syntax.Error
		if !errors.As(err, &se) {
			t.Errorf("%q: %v, want a *syntax.Error", bad, err)
		}
	}
}

func cached(expr string) bool {
	compiledPatterns.mu.Lock()
	defer compiledPatterns.mu.Unlock()
	_, ok := compiledPatterns.m[expr]
	return ok
}

// A pattern that matches every value answers without running, and only such a pattern:
// whatever the value, Match agrees with the compiled expression.
func TestParamPatternMatchingEverything(t *testing.T) {
	values := []string{"", "x", "a\nb", "\n", "\x00", "\xff\xfe", "é", "line\r\n", string(make([]byte, 5000))}
	for _, tt := range []struct {
		declared string
		all      bool
	}{
		{"", true}, {"(?s).*", true}, {"(?s:.*)", true}, {"((?s).*)", true}, {"(?s)(.*)", true},
		{".*", false}, {"(?s).+", false}, {"(?s).*x", false}, {"[^\n]*", false}, {"(?s).?", false},
		{"(?s)(?:.*|x)", false}, {"(?U)(?s).*", true}, {"(?s).*?", true},
	} {
		p, err := ParseParamPattern(tt.declared)
		if err != nil {
			t.Fatal(err)
		}
		if p.all != tt.all {
			t.Errorf("%q: all = %v, want %v", tt.declared, p.all, tt.all)
		}
		re := compiledPatterns.get(p.expr)
		for _, v := range values {
			if got, want := p.Match(v), re.MatchString(v); got != want {
				t.Errorf("%q on %q: Match %v, the expression %v", tt.declared, v, got, want)
			}
		}
	}
}

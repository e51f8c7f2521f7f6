package ghost

import (
	"regexp"
	"regexp/syntax"
	"runtime"
	"sync"
	"sync/atomic"
	"weak"
)

// pattern is a param's pattern, anchored to match whole values. It is checked when its
// seed is added and compiled on first use: a compiled pattern can be large (a class
// repeated {1,256} is hundreds of instructions), and most operations of an idle Ghost are
// never called.
type pattern struct {
	expr     string // "^(?:" + declared + ")$"
	compiled atomic.Pointer[regexp.Regexp]
}

// newPattern anchors a declared pattern (empty: any value) and checks that it parses.
func newPattern(declared string) (*pattern, error) {
	if declared == "" {
		declared = "(?s).*"
	}
	expr := "^(?:" + declared + ")$"
	// regexp.Compile parses the same way (Perl flags) before compiling; a pattern that
	// parses compiles.
	if _, err := syntax.Parse(expr, syntax.Perl); err != nil {
		return nil, err
	}
	return &pattern{expr: expr}, nil
}

// match reports whether v is a full match, compiling the pattern the first time.
func (p *pattern) match(v string) (bool, error) {
	re := p.compiled.Load()
	if re == nil {
		var err error
		if re, err = compiledPatterns.get(p.expr); err != nil {
			return false, err
		}
		p.compiled.Store(re)
	}
	return re.MatchString(v), nil
}

// compiledPatterns shares compiled patterns across the process: the same pattern declared
// by several operations, seeds or registries is compiled once.
var compiledPatterns = &patternCache{m: map[string]weak.Pointer[regexp.Regexp]{}}

// patternCache holds compiled patterns weakly, by expression: the operations that use a
// pattern keep it alive, and it is dropped once no hosted seed uses it (a removed or
// replaced seed), so pushing seeds over months does not grow it.
type patternCache struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[regexp.Regexp]
}

func (c *patternCache) get(expr string) (*regexp.Regexp, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if re := c.m[expr].Value(); re != nil {
		return re, nil
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, err
	}
	wp := weak.Make(re)
	c.m[expr] = wp
	runtime.AddCleanup(re, func(expr string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.m[expr] == wp {
			delete(c.m, expr)
		}
	}, expr)
	return re, nil
}

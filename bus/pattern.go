package bus

import (
	"regexp"
	"regexp/syntax"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"weak"
)

// ParamPattern is a declared param pattern (ParamInfo.Pattern) as args are checked
// against it: anchored, so a value matches only whole. ParseParamPattern checks that it
// parses; it is compiled on the first Match, because a compiled pattern can be large (a
// class repeated {1,256} is hundreds of instructions) and most operations of an idle Ghost
// are never called. The same pattern, wherever declared (several operations or seeds, the
// Ghost's registry and a declarative seed), is compiled once per process.
type ParamPattern struct {
	expr     string // "^(?:" + declared + ")$"
	compiled atomic.Pointer[regexp.Regexp]
	// all: the pattern matches every value (empty, or "(?s).*" however written): Match
	// answers without running it over the value, which for a 4 KiB message costs more
	// than the rest of an issue's checks.
	all bool
}

// ParseParamPattern anchors a declared pattern (empty: any value) and checks that it
// parses; the error is regexp's (*syntax.Error). The declared pattern must parse on its
// own: one that closes the anchoring group itself ("[a-z]+)|(?:.*") would otherwise,
// wrapped, match any value.
func ParseParamPattern(declared string) (*ParamPattern, error) {
	if declared == "" {
		declared = "(?s).*"
	}
	re, err := syntax.Parse(declared, syntax.Perl)
	if err != nil {
		return nil, err
	}
	expr := "^(?:" + declared + ")$"
	if _, err := syntax.Parse(expr, syntax.Perl); err != nil {
		return nil, err
	}
	return &ParamPattern{expr: expr, all: matchesAll(re.Simplify())}, nil
}

// matchesAll reports whether re is any number of any characters, newlines included,
// within capturing groups or not: it then matches every string whole (an invalid UTF-8
// byte is a character too).
func matchesAll(re *syntax.Regexp) bool {
	for re.Op == syntax.OpCapture {
		re = re.Sub[0]
	}
	return re.Op == syntax.OpStar && re.Sub[0].Op == syntax.OpAnyChar
}

// Match reports whether v matches the pattern whole, compiling it the first time.
func (p *ParamPattern) Match(v string) bool {
	if p.all {
		return true
	}
	re := p.compiled.Load()
	if re == nil {
		re = compiledPatterns.get(p.expr)
		p.compiled.Store(re)
	}
	return re.MatchString(v)
}

// compiledPatterns is the process's cache of compiled patterns.
var compiledPatterns = &patternCache{m: map[string]weak.Pointer[regexp.Regexp]{}}

// patternCache holds compiled patterns weakly, by expression: the ParamPatterns that use
// one keep it alive, and it is dropped once none does (its seeds removed or replaced), so
// installing seeds over months does not grow it.
type patternCache struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[regexp.Regexp]
}

func (c *patternCache) get(expr string) *regexp.Regexp {
	c.mu.Lock()
	defer c.mu.Unlock()
	if re := c.m[expr].Value(); re != nil {
		return re
	}
	// ParseParamPattern parsed expr, and regexp fails only to parse (compiling a parsed
	// expression cannot fail).
	re := regexp.MustCompile(expr)
	wp := weak.Make(re)
	c.m[expr] = wp
	runtime.AddCleanup(re, func(expr string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.m[expr] == wp {
			delete(c.m, expr)
		}
	}, expr)
	return re
}

// CheckArgs checks a command's args against the params its operation declares: every
// required param present, no undeclared arg, every value within its param's max_bytes, a
// whole match of its pattern, and within its min and max. pattern returns the parsed pattern of a declared param. The error is a semantic
// one (1300) on field args.<name>, the same on a Ghost and in Mirage.
func CheckArgs(seedID string, op OperationInfo, args map[string]string, pattern func(param string) *ParamPattern) error {
	for _, p := range op.Params {
		v, present := args[p.Name]
		if !present {
			if p.Required {
				return FieldError(CodeSemantic, "args."+p.Name, "required by %s %s but missing", seedID, op.Name)
			}
			continue
		}
		if p.MaxBytes > 0 && len(v) > p.MaxBytes {
			return FieldError(CodeSemantic, "args."+p.Name, "is %d bytes, at most %d are allowed", len(v), p.MaxBytes)
		}
		if pat := pattern(p.Name); pat == nil || !pat.Match(v) {
			return FieldError(CodeSemantic, "args."+p.Name, "value does not match the declared pattern %q", p.Pattern)
		}
		if p.Min != nil || p.Max != nil {
			n, err := strconv.ParseInt(v, 10, 64)
			switch {
			case err != nil:
				return FieldError(CodeSemantic, "args."+p.Name, "value %q is not an integer", v)
			case p.Min != nil && n < *p.Min:
				return FieldError(CodeSemantic, "args."+p.Name, "value %d is below the minimum %d", n, *p.Min)
			case p.Max != nil && n > *p.Max:
				return FieldError(CodeSemantic, "args."+p.Name, "value %d is above the maximum %d", n, *p.Max)
			}
		}
		// Last: a value the param's own limits refuse is told so, not pointed at options.
		if p.NoLeadingDash && strings.HasPrefix(v, "-") {
			return FieldError(CodeSemantic, "args."+p.Name, "value starts with \"-\", which %s %s would pass where it is read as an option", seedID, op.Name)
		}
	}
	for k := range args {
		if !op.declares(k) {
			return FieldError(CodeSemantic, "args."+k, "%s %s declares no such param; %s", seedID, op.Name, op.takes())
		}
	}
	return nil
}

// takes lists the params op declares (TakesParams).
func (op OperationInfo) takes() string { return TakesParams(op.Params) }

// TakesParams lists an operation's params (their names and whether required), for an error
// about one it does not declare: "it takes: a, b?" (? marks an optional one), or "it takes
// no params".
func TakesParams(params []ParamInfo) string {
	if len(params) == 0 {
		return "it takes no params"
	}
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = p.Name
		if !p.Required {
			names[i] += "?"
		}
	}
	return "it takes: " + strings.Join(names, ", ")
}

func (op OperationInfo) declares(param string) bool {
	for _, p := range op.Params {
		if p.Name == param {
			return true
		}
	}
	return false
}

// SharedPattern returns the parsed pattern of a declared pattern, parsed once per process
// (nil when it does not parse): for checking args against params received from elsewhere,
// as Mirage does with those Ghosts register.
func SharedPattern(declared string) *ParamPattern {
	if p, ok := sharedPatterns.Load(declared); ok {
		return p.(*ParamPattern)
	}
	p, err := ParseParamPattern(declared)
	if err != nil {
		return nil
	}
	if sharedCount.Add(1) > maxShared {
		return p // seeds pushed over months with ever new patterns: parse those each time
	}
	actual, _ := sharedPatterns.LoadOrStore(declared, p)
	return actual.(*ParamPattern)
}

var (
	sharedPatterns sync.Map // declared pattern → *ParamPattern
	sharedCount    atomic.Int64
)

const maxShared = 4096

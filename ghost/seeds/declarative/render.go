package declarative

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/edgectl/edgectl/bus"
)

// An argv element is literal text and placeholders: {{param}} or {{file:NAME}}. A
// rendered element is always exactly one argument: a value is inserted as plain bytes,
// never split on spaces, never read by a shell. There is no escape for a literal "{{".

type segment struct {
	text  string // literal text, when param and file are empty
	param string
	file  string
}

type element []segment

// parseElement splits one argv element into literal text and placeholders.
func parseElement(s string) (element, error) {
	var el element
	for {
		i := strings.Index(s, "{{")
		if i < 0 {
			if s != "" {
				el = append(el, segment{text: s})
			}
			return el, nil
		}
		if i > 0 {
			el = append(el, segment{text: s[:i]})
		}
		j := strings.Index(s[i+2:], "}}")
		if j < 0 {
			return nil, fmt.Errorf("%q opens {{ without closing }}", s)
		}
		name := strings.TrimSpace(s[i+2 : i+2+j])
		if f, ok := strings.CutPrefix(name, "file:"); ok {
			el = append(el, segment{file: strings.TrimSpace(f)})
		} else if bus.ValidArgName(name) {
			el = append(el, segment{param: name})
		} else {
			return nil, fmt.Errorf("placeholder {{%s}} is neither a param name nor file:NAME", name)
		}
		s = s[i+2+j+2:]
	}
}

// compile parses the argv template and checks it against the spec: argv[0] is a literal
// program (absolute, or a bare name looked up in the Ghost's fixed PATH) or exactly one
// shipped file; every placeholder names a declared param or file; every param is used.
func (op *Operation) compile(s *Spec, key string) error {
	if len(op.Argv) == 0 {
		return bad(key+".argv", "missing: give the program and its arguments as a list of strings, e.g. [\"uname\", \"-a\"]")
	}
	if len(op.Argv) > MaxArgv {
		return bad(key+".argv", "%d elements, at most %d are allowed", len(op.Argv), MaxArgv)
	}
	used := map[string]bool{}
	for i, a := range op.Argv {
		k := fmt.Sprintf("%s.argv[%d]", key, i)
		if strings.IndexByte(a, 0) >= 0 {
			return bad(k, "contains a NUL byte")
		}
		el, err := parseElement(a)
		if err != nil {
			return bad(k, "%v", err)
		}
		for _, seg := range el {
			switch {
			case seg.file != "":
				if _, ok := s.File(seg.file); !ok {
					return bad(k, "{{file:%s}} names no file declared in [[files]]", seg.file)
				}
			case seg.param != "":
				if _, ok := op.Param(seg.param); !ok {
					return bad(k, "{{%s}} names no param declared in [%s.params]", seg.param, key)
				}
				used[seg.param] = true
			}
		}
		if i == 0 {
			if err := checkProgram(s, el, a); err != nil {
				return bad(k, "%v", err)
			}
		}
		op.tmpl = append(op.tmpl, el)
	}
	progArgs, err := checkCodeArgs(op.Argv, op.tmpl)
	if err != nil {
		return bad(key+".argv", "%v", err)
	}
	// Only a "--" the program itself reads ends its options: one among the options of a
	// wrapper that runs it (sudo -n -- kill …) ends the wrapper's.
	op.optEnd = len(op.Argv)
	for i := max(progArgs, 1); i < len(op.Argv); i++ {
		if op.Argv[i] == "--" {
			op.optEnd = i
			break
		}
	}
	for _, p := range op.Params {
		if !used[p.Name] {
			return bad(key+".params."+p.Name, "declared but no argv element uses {{%s}}", p.Name)
		}
	}
	return nil
}

func checkProgram(s *Spec, el element, raw string) error {
	if len(el) == 1 && el[0].file != "" {
		if f, _ := s.File(el[0].file); !f.Executable {
			return fmt.Errorf("runs file %s, which is not declared executable = true (or run it with an interpreter: [\"/bin/sh\", \"{{file:%s}}\"])", f.Name, f.Name)
		}
		return nil
	}
	for _, seg := range el {
		if seg.param != "" || seg.file != "" {
			return fmt.Errorf("the program must be a literal name or exactly {{file:NAME}}; a param cannot choose the program")
		}
	}
	if raw == "" {
		return fmt.Errorf("the program is empty")
	}
	if !filepath.IsAbs(raw) && strings.ContainsRune(raw, '/') {
		return fmt.Errorf("program %q is a relative path; give an absolute path or a bare name found in PATH", raw)
	}
	return nil
}

// check validates a value of the param against its pattern and type bounds.
func (p Param) check(pat *bus.ParamPattern, v string) error {
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("value contains a NUL byte")
	}
	if p.MaxBytes > 0 && len(v) > p.MaxBytes {
		return fmt.Errorf("value is %d bytes, at most %d are allowed", len(v), p.MaxBytes)
	}
	if !pat.Match(v) {
		return fmt.Errorf("value does not match the pattern %q", p.Pattern)
	}
	if p.Type == TypeInt {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("value %q is not an integer", v)
		}
		if p.Min != nil && n < *p.Min {
			return fmt.Errorf("value %d is below the minimum %d", n, *p.Min)
		}
		if p.Max != nil && n > *p.Max {
			return fmt.Errorf("value %d is above the maximum %d", n, *p.Max)
		}
	}
	return nil
}

// ArgError is an argument a render refused: the param and why.
type ArgError struct {
	Param  string
	Reason string
}

func (e *ArgError) Error() string { return fmt.Sprintf("args.%s: %s", e.Param, e.Reason) }

// Render builds the argv of one execution from args. filesDir is the absolute directory of
// the seed's installed files. An element that uses an optional param given no value and
// without a default is left out whole; every other element is exactly one argument.
//
// A value is one argument, but the program decides what an argument means: one that
// starts with "-" is read as an option by most programs (tar's
// --use-compress-program=CMD runs CMD, kill -TERM -1 signals every process). So a given
// value starting with "-" may not begin an element, unless a literal "--" element stands
// before it among the arguments of the program a wrapper runs, or of argv[0] without one
// (the usual end of options; one among a wrapper's options ends only the wrapper's), or
// its param sets allow_leading_dash. A default is the spec's own text and is not checked.
func (op *Operation) Render(args map[string]string, filesDir string) ([]string, error) {
	for k := range args {
		if _, ok := op.Param(k); !ok {
			return nil, &ArgError{Param: k, Reason: fmt.Sprintf("%s declares no such param; %s", op.Name, op.takes())}
		}
	}
	for _, p := range op.Params {
		v, ok := args[p.Name]
		if !ok {
			if p.Required {
				return nil, &ArgError{Param: p.Name, Reason: "required but missing"}
			}
			continue
		}
		if err := p.check(op.patterns[p.Name], v); err != nil {
			return nil, &ArgError{Param: p.Name, Reason: err.Error()}
		}
	}
	out := make([]string, 0, len(op.tmpl))
	for i, el := range op.tmpl {
		var b strings.Builder
		keep := true
		for _, seg := range el {
			switch {
			case seg.file != "":
				b.WriteString(filepath.Join(filesDir, seg.file))
			case seg.param != "":
				p, _ := op.Param(seg.param)
				v, ok := args[seg.param]
				if !ok {
					if p.Default == nil {
						keep = false
						break
					}
					v = *p.Default
				} else if b.Len() == 0 && i < op.optEnd && strings.HasPrefix(v, "-") && !p.AllowLeadingDash {
					return nil, &ArgError{Param: p.Name, Reason: fmt.Sprintf("value %q starts with \"-\" and would begin argv[%d], "+
						"where %s may read it as an option; give a value that does not start with \"-\" "+
						"(the spec can end options with a literal \"--\" before it, or set allow_leading_dash = true on the param)",
						truncate(v, 40), i, op.Argv[0])}
				}
				b.WriteString(v)
			default:
				b.WriteString(seg.text)
			}
		}
		if keep {
			out = append(out, b.String())
		}
	}
	return out, nil
}

// beginsOption reports whether p opens an argv element before the end of options, where
// Render refuses a value starting with "-". Registered as no_leading_dash, so that Mirage
// refuses such a value at issue time. Render also refuses one behind placeholders given
// empty values; that case is left to the Ghost, so Mirage never refuses what it would run.
func (op *Operation) beginsOption(p Param) bool {
	if p.AllowLeadingDash {
		return false
	}
	for i, el := range op.tmpl {
		if i >= op.optEnd {
			break
		}
		if len(el) > 0 && el[0].param == p.Name {
			return true
		}
	}
	return false
}

// truncate shortens v to at most n bytes, for a message.
func truncate(v string, n int) string {
	if len(v) <= n {
		return v
	}
	return v[:n] + "…"
}

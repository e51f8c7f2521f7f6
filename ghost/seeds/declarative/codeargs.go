package declarative

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Programs that read code from their own command line (sh -c SCRIPT, python -c CODE,
// perl -e CODE, awk PROGRAM, sed SCRIPT): a param inside that code would be read as code,
// the very thing argv templates exist to prevent. For such a program no param may stand
// before its code or script: not in the code, not where an option is read (a value "-c"
// would make the next argument code). Params may follow the code, or the script it runs (a
// shipped {{file:NAME}}, an absolute path, python's -m module): they reach it as its own
// arguments ("$1", sys.argv), which no interpreter reads as code. The program may be named
// directly or after wrappers that run it (env, nice, timeout, sudo, xargs, …: wrappers.go).
//
// This is a lint that catches common mistakes, not a sandbox: programs not named here are
// not inspected, and a spec running one that evaluates its arguments some other way is
// its author's responsibility (docs/seeds.md).

// codeReader says how a program takes code. Single-dash options are read as getopt
// clusters: a letter of codeLetters takes code (the rest of the cluster, or the next
// argument; a shell's -c is a flag and the code is its first operand), one of valueOpts
// a value, one of attachOpts only the rest of the cluster, one of scriptLetters a script or
// module in the rest or the next argument. firstOperandCode programs (awk, sed) take their
// first operand as the program unless -e or -f gave it.
type codeReader struct {
	codeLetters      string
	codeLong         []string
	codeOperand      bool // shells: -c is a flag, the code is the first operand
	codeEnds         bool // after the code every argument is the code's own (sh -c, python -c); else options go on (perl -e A -e B)
	valueOpts        string
	attachOpts       string
	scriptLetters    string
	scriptLong       []string
	firstOperandCode bool
}

var (
	shell   = codeReader{codeLetters: "c", codeOperand: true, codeEnds: true, valueOpts: "oO"}
	python  = codeReader{codeLetters: "c", codeEnds: true, valueOpts: "WX", scriptLetters: "m"}
	awkLike = codeReader{codeLetters: "e", codeLong: []string{"--source"}, valueOpts: "Fv",
		scriptLetters: "fE", scriptLong: []string{"--file", "--exec"}, firstOperandCode: true}
	nodeLike = codeReader{codeLetters: "ep", codeLong: []string{"--eval", "--print"}, valueOpts: "r"}
)

var codeReaders = map[string]codeReader{
	"sh": shell, "bash": shell, "rbash": shell, "dash": shell, "zsh": shell, "ksh": shell, "mksh": shell,
	"ash": shell, "yash": shell, "csh": shell, "tcsh": shell,
	"fish":   {codeLetters: "cC", codeLong: []string{"--command", "--init-command"}, codeEnds: true},
	"python": python, "pypy": python,
	"perl": {codeLetters: "eE", attachOpts: "IMmixdD"},
	"ruby": {codeLetters: "e", valueOpts: "ICEFr", attachOpts: "xWTK"},
	"node": nodeLike, "nodejs": nodeLike, "bun": nodeLike,
	"php":     {codeLetters: "rBRE", valueOpts: "cdz", scriptLetters: "f"},
	"lua":     {codeLetters: "e", valueOpts: "l"},
	"julia":   {codeLetters: "eE", codeLong: []string{"--eval", "--print"}, valueOpts: "tpJCL"},
	"Rscript": {codeLetters: "e"},
	"R":       {codeLetters: "e", scriptLong: []string{"--file"}},
	"elixir":  {codeLetters: "e", codeLong: []string{"--eval"}, valueOpts: "r"},
	"expect":  {codeLetters: "c", scriptLetters: "f"},
	"gnuplot": {codeLetters: "e", scriptLetters: "c"},
	"dc":      {codeLetters: "e", codeLong: []string{"--expression"}, scriptLetters: "f", scriptLong: []string{"--file"}},
	"awk":     awkLike, "gawk": awkLike, "mawk": awkLike, "nawk": awkLike,
	// GNU sed runs commands (the e command, s///e) and writes files (w): its script is code.
	"sed": {codeLetters: "e", codeLong: []string{"--expression"}, valueOpts: "l", attachOpts: "i",
		scriptLetters: "f", scriptLong: []string{"--file"}, firstOperandCode: true},
}

// programName is the name a program is known by: its base name without a version or build
// suffix (python3.12, python3.12-dbg and python-dbg are python; bash-5.2 is bash).
func programName(argv0 string) string {
	n := filepath.Base(argv0)
	if i := strings.IndexAny(n, "0123456789"); i > 0 {
		n = n[:i]
	}
	for _, suffix := range []string{"-dbg", "-debug", "-static", ".static"} {
		n = strings.TrimSuffix(n, suffix)
	}
	return strings.TrimRight(n, "-_.")
}

// checkCodeArgs refuses a param where a shell or interpreter named as the program, directly
// or through wrappers, reads its options or its code; raw are the argv templates, tmpl
// their parsed elements. It returns the index of the first argument of the program the
// wrappers run (1 without wrappers): a literal "--" before it ends a wrapper's options,
// not the program's (sudo -n -- kill -TERM {{pid}}), and is no end of options for Render.
func checkCodeArgs(raw []string, tmpl []element) (int, error) {
	name, start := programName(raw[0]), 1
	for range raw { // each wrapper takes at least one element: this bounds the loop
		if name == "setsid" {
			return 0, fmt.Errorf("argv[%d]: setsid runs the program in a new session, out of the process group "+
				"the Ghost kills at the operation's timeout and when it stops: it would run on unbounded; "+
				"leave setsid out (the program already runs in a process group of its own)", start-1)
		}
		var u unwrapped
		var err error
		if w, ok := wrappers[name]; ok {
			u, err = w.unwrap(name, raw, tmpl, start)
		} else if slices.Contains(opaqueWrappers, name) {
			if name == "systemd-run" && !scoped(raw[start:]) {
				return 0, fmt.Errorf("argv[%d]: systemd-run without --scope hands the program to systemd as a service, "+
					"out of the process group the Ghost kills at the operation's timeout and when it stops: it would "+
					"run on unbounded, and the operation end before it; add --scope before its --", start-1)
			}
			u = unwrapOpaque(raw, tmpl, start)
		} else {
			break
		}
		if err != nil {
			return 0, err
		}
		if u.done {
			return u.next, nil
		}
		name, start = u.name, u.next
	}
	reader, ok := codeReaders[name]
	if !ok {
		return start, nil
	}
	return start, reader.check(name, raw, tmpl, start)
}

type want int

const (
	wantNothing want = iota
	wantValue        // an option's value
	wantCode         // code, the option's value
	wantScript       // a script or module, the option's value
)

// check reads the arguments raw[start:] of program name.
func (r codeReader) check(name string, raw []string, tmpl []element, start int) error {
	before := func(i int) error {
		return fmt.Errorf("argv[%d]: a param before the code or script that %s runs could be read as code or as an option; pass the value after it, as the code's own argument (\"$1\" in a shell script)", i, name)
	}
	var (
		next     = wantNothing
		opt      string // the option next belongs to
		codeFlag bool   // a shell's -c: its first operand is the code
		haveCode bool   // code was given and options go on (perl -e A -e B)
	)
	for i := start; i < len(raw); i++ {
		a, param := raw[i], hasParam(tmpl[i])
		switch next {
		case wantValue:
			next = wantNothing
			if param {
				return fmt.Errorf("argv[%d]: a param as the value of %s %s", i, name, opt)
			}
			continue
		case wantCode:
			next = wantNothing
			if param {
				return before(i)
			}
			if r.codeEnds {
				return nil
			}
			haveCode = true
			continue
		case wantScript:
			if param {
				return before(i)
			}
			return nil // the script: what follows are its arguments
		}
		option := len(a) > 1 && (a[0] == '-' || a[0] == '+') && a != "--"
		switch {
		case a == "--":
			// The end of options: next is the code (after -c), the program (awk) or the
			// script; after it, arguments.
			if !haveCode && i+1 < len(raw) && hasParam(tmpl[i+1]) {
				return before(i + 1)
			}
			return nil
		case !option:
			if param {
				if haveCode {
					return nil // an argument of the code
				}
				return before(i)
			}
			if haveCode || codeFlag || r.firstOperandCode || hasFile(tmpl[i]) || strings.ContainsRune(a, '/') {
				return nil // the code, or the script: what follows are its arguments
			}
			// An option's value we do not know (bash -O nocaseglob): read on.
		case param:
			if haveCode {
				return fmt.Errorf("argv[%d]: a param in an option of %s, which reads more code among its options", i, name)
			}
			return before(i)
		default:
			o := r.option(a)
			codeFlag = codeFlag || o.codeFlag
			switch {
			case o.attached == wantScript, o.attached == wantCode && r.codeEnds:
				return nil // -mjson.tool, -c'code': what follows are its arguments
			case o.attached == wantCode:
				haveCode = true
			}
			next, opt = o.next, o.name
		}
	}
	return nil
}

// readOpt is an option element as read: what its next argument is (next, for option
// name), or what its attached value was (code, a script), and whether it was a shell's -c.
type readOpt struct {
	next     want
	name     string
	attached want
	codeFlag bool
}

func (r codeReader) option(a string) readOpt {
	if strings.HasPrefix(a, "--") {
		name, _, attached := strings.Cut(a, "=")
		w := wantNothing
		switch {
		case slices.Contains(r.codeLong, name):
			w = wantCode
		case slices.Contains(r.scriptLong, name):
			w = wantScript
		}
		if attached {
			return readOpt{attached: w}
		}
		return readOpt{next: w, name: name}
	}
	var o readOpt
	for j := 1; j < len(a); j++ {
		c, rest := a[j], j+1 < len(a)
		w := wantNothing
		switch {
		case strings.IndexByte(r.attachOpts, c) >= 0:
			return o // the rest of the cluster is its value
		case strings.IndexByte(r.codeLetters, c) >= 0 && r.codeOperand:
			o.codeFlag = true // sh -c, -ec: a flag; the code is the first operand
			continue
		case strings.IndexByte(r.valueOpts, c) >= 0:
			w = wantValue
		case strings.IndexByte(r.codeLetters, c) >= 0:
			w = wantCode
		case strings.IndexByte(r.scriptLetters, c) >= 0:
			w = wantScript
		default:
			continue // a flag
		}
		if rest {
			o.attached = w
		} else {
			o.next, o.name = w, a
		}
		return o
	}
	return o
}

func hasFile(el element) bool {
	for _, seg := range el {
		if seg.file != "" {
			return true
		}
	}
	return false
}

func hasParam(el element) bool {
	for _, seg := range el {
		if seg.param != "" {
			return true
		}
	}
	return false
}

// scoped reports whether systemd-run's arguments (up to its first "--") hold --scope:
// the program then runs as its child, in the Ghost's process group, under a scope unit.
func scoped(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--scope":
			return true
		}
	}
	return false
}

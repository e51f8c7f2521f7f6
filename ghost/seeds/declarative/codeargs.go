package declarative

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Programs that read code from their own command line (sh -c SCRIPT, python -c CODE,
// perl -e CODE, awk PROGRAM): a param inside that code would be read as code, the very
// thing argv templates exist to prevent. For such a program no param may stand before
// its code or script: not in the code, not where an option is read (a value "-c" would
// make the next argument code). Params may follow the code, or the script it runs (a
// shipped {{file:NAME}}, an absolute path, python's -m module): they reach it as its own
// arguments ("$1", sys.argv), which no interpreter reads as code. Programs not named here
// are not inspected: a spec running one that evaluates its arguments some other way is
// its author's responsibility (docs/seeds.md).

// codeReader says how a program takes code: single-dash options whose letters include
// one of codeLetters (a cluster such as -ec or -lne counts), or one of codeLong, take the
// code in the next argument (or attached); scriptOpts take a script or module name in
// the next one; awkLike programs take their first operand as the program (-F and -v take
// a value, -f a program file).
type codeReader struct {
	codeLetters string
	codeLong    []string
	scriptOpts  []string
	awkLike     bool
}

var codeReaders = map[string]codeReader{
	"sh": {codeLetters: "c"}, "bash": {codeLetters: "c"}, "dash": {codeLetters: "c"},
	"zsh": {codeLetters: "c"}, "ksh": {codeLetters: "c"}, "mksh": {codeLetters: "c"},
	"ash": {codeLetters: "c"}, "fish": {codeLetters: "c", codeLong: []string{"--command"}},
	"csh": {codeLetters: "c"}, "tcsh": {codeLetters: "c"},
	"python": {codeLetters: "c", scriptOpts: []string{"-m"}}, "pypy": {codeLetters: "c", scriptOpts: []string{"-m"}},
	"perl": {codeLetters: "eE"}, "ruby": {codeLetters: "e"},
	"node": {codeLetters: "ep", codeLong: []string{"--eval", "--print"}},
	"php":  {codeLetters: "r"},
	"lua":  {codeLetters: "e"},
	"awk":  {awkLike: true}, "gawk": {awkLike: true}, "mawk": {awkLike: true}, "nawk": {awkLike: true},
}

// programName is the name a program is known by: its base name without a version suffix
// (python3.12 is python).
func programName(argv0 string) string {
	return strings.TrimRight(filepath.Base(argv0), "0123456789.")
}

// checkCodeArgs refuses a param where a shell or interpreter named as the program reads
// its options or its code; raw are the argv templates, tmpl their parsed elements.
func checkCodeArgs(raw []string, tmpl []element) error {
	start := 1
	name := programName(raw[0])
	switch {
	case name == "env":
		// env [-i] [-u NAME] [-C DIR] [NAME=VALUE ...] PROGRAM ARGS: PROGRAM is read like
		// argv[0]. -S splits a string into the program and its arguments: not analysed, so
		// no param may be used with it.
		for start < len(raw) {
			if hasParam(tmpl[start]) {
				return fmt.Errorf("argv[%d]: a param where env reads its options or the program to run", start)
			}
			a := raw[start]
			switch {
			case a == "-S" || strings.HasPrefix(a, "-S") || strings.HasPrefix(a, "--split-string"):
				for i := range tmpl {
					if hasParam(tmpl[i]) {
						return fmt.Errorf("argv[%d]: a param with env -S, which splits a string into a program and its arguments", i)
					}
				}
				return nil
			case a == "-u" || a == "-C" || a == "--unset" || a == "--chdir":
				if start+1 < len(raw) && hasParam(tmpl[start+1]) {
					return fmt.Errorf("argv[%d]: a param as the value of env %s", start+1, a)
				}
				start += 2
				continue
			case strings.HasPrefix(a, "-") || strings.Contains(a, "="):
				start++
				continue
			}
			break
		}
		if start >= len(raw) {
			return nil
		}
		name, start = programName(raw[start]), start+1
	case name == "busybox" && len(raw) > 1:
		if hasParam(tmpl[1]) {
			return fmt.Errorf("argv[1]: a param where busybox reads the applet to run")
		}
		name, start = programName(raw[1]), 2
	}
	reader, ok := codeReaders[name]
	if !ok {
		return nil
	}
	next := false // the next argument is the code, or the script or module to run
	for i := start; i < len(raw); i++ {
		if hasParam(tmpl[i]) {
			return fmt.Errorf("argv[%d]: a param before the code or script that %s runs could be read as code or as an option; pass the value after it, as the code's own argument (\"$1\" in a shell script)", i, name)
		}
		a := raw[i]
		option := strings.HasPrefix(a, "-") || strings.HasPrefix(a, "+")
		switch {
		case next, hasFile(tmpl[i]), !option && strings.ContainsRune(a, '/'):
			return nil // the code, or the script: what follows are its arguments
		case reader.awkLike && (a == "-F" || a == "-v"):
			if i+1 < len(raw) && hasParam(tmpl[i+1]) {
				return fmt.Errorf("argv[%d]: a param as the value of %s %s", i+1, name, a)
			}
			i++
		case reader.awkLike && a == "-f", slices.Contains(reader.scriptOpts, a):
			next = true
		case reader.awkLike && !option:
			return nil // awk's program, literal
		case reader.takesCode(a):
			next = true
		}
	}
	return nil
}

// takesCode reports whether option a makes the program read code from the next argument.
func (r codeReader) takesCode(a string) bool {
	for _, l := range r.codeLong {
		if a == l {
			return true
		}
	}
	if !strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "+") || strings.HasPrefix(a, "--") || r.codeLetters == "" {
		return false // an operand (an option's value, such as bash -O nocaseglob) takes no code
	}
	return strings.ContainsAny(strings.TrimLeft(a, "-+"), r.codeLetters)
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

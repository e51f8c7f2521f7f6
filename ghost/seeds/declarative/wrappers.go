package declarative

import (
	"fmt"
	"slices"
	"strings"
)

// Programs that run another program named on their command line (env, nice, timeout
// DURATION, sudo -u USER, xargs, chroot NEWROOT, …): checkCodeArgs reads through them to
// the program they run. Their options are read as getopt reads them, from the options
// listed here; an option not listed is taken for a flag. This is a lint for common
// mistakes, not a parser of every version of every tool.
type wrapper struct {
	valueOpts string   // short options taking a value (the rest of the cluster, or the next argument)
	valueLong []string // long options taking a value (after =, or the next argument)
	operands  int      // operands read before the program: timeout's DURATION, chroot's NEWROOT
	assigns   bool     // NAME=VALUE operands before the program (env)
	dashFlag  bool     // a lone "-" is an option (env -, su -)
	codeOpts  string   // options whose value is a shell command: flock FILE -c, su --session-command
	codeLong  []string
	shellOpts string // options that hand the rest to a shell or split it into words: sudo -s, env -S
	shellLong []string
	shellWhy  string // what shellOpts do, for the message
	stopOpts  string // options with which no program is run: taskset -p PID, sudo -l
	stopLong  []string
	userOpt   string // runuser -u USER: the program follows the options
	userLong  []string
	userShell bool // su, runuser without -u: an optional USER, then arguments of the user's shell
	remote    bool // ssh: the arguments after the destination are joined into a remote shell command
	// permutes: its getopt permutes (util-linux su and runuser): it takes an option, and the
	// first "--", from anywhere among its arguments, not only before the program.
	permutes    bool
	sessionOpts string // options that start a new session (setsid) for what it runs: su -c, su --pty
	sessionLong []string
	// progOpts take the program to run as their value (su -s SHELL): a param there would
	// choose the program.
	progOpts string
	progLong []string
}

var wrappers = map[string]wrapper{
	"env": {valueOpts: "uC", valueLong: []string{"--unset", "--chdir"}, assigns: true, dashFlag: true,
		shellOpts: "S", shellLong: []string{"--split-string"}, shellWhy: "splits a string into a program and its arguments"},
	"busybox": {}, "toybox": {},
	"nice":    {valueOpts: "n", valueLong: []string{"--adjustment"}},
	"ionice":  {valueOpts: "cn", valueLong: []string{"--class", "--classdata"}, stopOpts: "pPu", stopLong: []string{"--pid", "--pgid", "--uid"}},
	"timeout": {valueOpts: "ks", valueLong: []string{"--kill-after", "--signal"}, operands: 1},
	"nohup":   {},
	"time":    {valueOpts: "fo", valueLong: []string{"--format", "--output"}},
	"stdbuf":  {valueOpts: "ioe", valueLong: []string{"--input", "--output", "--error"}},
	"sudo": {valueOpts: "aCcDgpRrTtUu", valueLong: []string{"--auth-type", "--close-from", "--login-class", "--chdir", "--group",
		"--host", "--prompt", "--chroot", "--role", "--type", "--command-timeout", "--other-user", "--user"},
		shellOpts: "is", shellLong: []string{"--shell", "--login"}, shellWhy: "runs the command through a shell",
		stopOpts: "elKVv", stopLong: []string{"--edit", "--list", "--remove-timestamp", "--version", "--validate"}},
	"doas": {valueOpts: "aCu", shellOpts: "s", shellWhy: "runs a shell", stopOpts: "L"},
	"runuser": {valueOpts: "gGw", valueLong: []string{"--group", "--supp-group", "--whitelist-environment"}, progOpts: "s", progLong: []string{"--shell"},
		codeLong: []string{"--session-command"}, userOpt: "u", userLong: []string{"--user"}, userShell: true, dashFlag: true,
		permutes: true, sessionOpts: "cP", sessionLong: []string{"--command", "--pty"}},
	"su": {valueOpts: "gGw", valueLong: []string{"--group", "--supp-group", "--whitelist-environment"}, progOpts: "s", progLong: []string{"--shell"},
		codeLong: []string{"--session-command"}, userShell: true, dashFlag: true,
		permutes: true, sessionOpts: "cP", sessionLong: []string{"--command", "--pty"}},
	"setpriv": {valueLong: []string{"--inh-caps", "--ambient-caps", "--ruid", "--euid", "--rgid", "--egid", "--reuid", "--regid",
		"--groups", "--bounding-set", "--securebits", "--pdeathsig", "--ptracer", "--selinux-label", "--apparmor-profile",
		"--landlock-access", "--landlock-rule", "--seccomp-filter"}, stopOpts: "d", stopLong: []string{"--dump", "--list-caps"}},
	"xargs": {valueOpts: "aEdILnPs", valueLong: []string{"--arg-file", "--delimiter", "--max-args", "--max-procs",
		"--max-chars", "--process-slot-var"}},
	"chroot":  {valueLong: []string{"--userspec", "--groups"}, operands: 1},
	"taskset": {stopOpts: "p", stopLong: []string{"--pid"}, operands: 1},
	"flock": {valueOpts: "wE", valueLong: []string{"--timeout", "--wait", "--conflict-exit-code"}, operands: 1,
		codeOpts: "c", codeLong: []string{"--command"}},
	"unshare": {valueOpts: "SGRw", valueLong: []string{"--setuid", "--setgid", "--root", "--wd", "--propagation", "--setgroups",
		"--map-user", "--map-group", "--map-users", "--map-groups", "--monotonic", "--boottime"}},
	"nsenter": {valueOpts: "tSG", valueLong: []string{"--target", "--setuid", "--setgid"}},
	"chrt": {valueOpts: "TPD", valueLong: []string{"--sched-runtime", "--sched-period", "--sched-deadline"}, operands: 1,
		stopOpts: "mp", stopLong: []string{"--max", "--pid"}},
	"ssh": {valueOpts: "BbcDEeFIiJLlmOopQRSWw", operands: 1, remote: true},
}

// Programs known to run a program named after their options, whose options are not read
// here (too many, or changing between versions): the program they run is the one after the
// first "--", which is theirs; without one it is not found, and no "--" after them is
// taken for the program's end of options.
var opaqueWrappers = []string{"prlimit", "numactl", "systemd-run"}

// unwrapped is what a wrapper runs: the program named at raw[next-1] (name), or, for a
// user's shell (su USER ARGS), sh reading raw[next:]; done when nothing is left to check,
// next then being where the wrapper's own reading ended (what follows is no option of
// its: a shell command's arguments, a remote command) or len(raw) when it runs nothing.
type unwrapped struct {
	name string
	next int
	done bool
}

// unwrap reads the options and operands of wrapper name from raw[start:] to the program it
// runs. A param may be an option's value or an operand (timeout's DURATION), never the
// program, an option, a shell command or what a shell reads.
func (w wrapper) unwrap(name string, raw []string, tmpl []element, start int) (unwrapped, error) {
	if w.permutes {
		return w.unwrapPermuted(name, raw, tmpl, start)
	}
	operands, opts, userShell := w.operands, true, w.userShell
	for i := start; i < len(raw); i++ {
		a, param := raw[i], hasParam(tmpl[i])
		if opts && a == "--" {
			opts = false
			continue
		}
		if opts && len(a) > 1 && a[0] == '-' {
			o := w.option(a)
			if err := checkOption(name, o, raw, tmpl, i); err != nil {
				return unwrapped{}, err
			}
			switch o.kind {
			case optShell:
				for j := range tmpl {
					if hasParam(tmpl[j]) {
						return unwrapped{}, fmt.Errorf("argv[%d]: a param with %s %s, which %s", j, name, o.name, w.shellWhy)
					}
				}
				return unwrapped{done: true, next: i + 1}, nil
			case optStop:
				return unwrapped{done: true, next: i + 1}, nil
			case optCode:
				if o.attached {
					if param {
						return unwrapped{}, fmt.Errorf("argv[%d]: a param in the shell command %s %s runs", i, name, o.name)
					}
					return unwrapped{done: true, next: i + 1}, nil // a literal command; what follows are its arguments
				}
				if i+1 < len(raw) && hasParam(tmpl[i+1]) {
					return unwrapped{}, fmt.Errorf("argv[%d]: a param as the shell command %s %s runs", i+1, name, o.name)
				}
				return unwrapped{done: true, next: min(i+2, len(raw))}, nil
			case optUser:
				userShell, operands = false, 0
			}
			if o.kind != optFlag && !o.attached {
				i++ // its value, a param or not
			}
			continue
		}
		if opts && w.dashFlag && a == "-" {
			continue
		}
		if operands > 0 {
			operands--
			continue
		}
		if w.assigns && strings.Contains(a, "=") {
			if param {
				return unwrapped{}, fmt.Errorf("argv[%d]: a param in an assignment %s makes", i, name)
			}
			continue
		}
		if w.remote {
			for j := i; j < len(raw); j++ {
				if hasParam(tmpl[j]) {
					return unwrapped{}, fmt.Errorf("argv[%d]: a param in the command %s joins into one string for a remote shell", j, name)
				}
			}
			return unwrapped{done: true, next: i + 1}, nil
		}
		if userShell {
			// su [USER [ARGS]]: USER (any value) then arguments of the user's shell, read like sh's.
			return unwrapped{name: "sh", next: i + 1}, nil
		}
		if param {
			return unwrapped{}, where(name, i)
		}
		return unwrapped{name: programName(a), next: i + 1}, nil
	}
	return unwrapped{done: true, next: len(raw)}, nil // no program: the wrapper runs nothing of ours to check
}

// unwrapPermuted reads a wrapper whose getopt permutes (su, runuser). An element starting
// with "-" anywhere before the first "--" is its option, and that "--" is its own wherever
// it stands: what it runs reads its other elements, in order, without that "--" (su app --
// -c 'kill "$1"' sh -1 gives the shell -c 'kill "$1"' sh -1: kill -1). So that no "--" or
// option of the wrapper is taken for the program's, its options and its "--" must come
// before the user or the program: what the program (or the user's shell) reads is then
// the tail of argv, uninterrupted.
func (w wrapper) unwrapPermuted(name string, raw []string, tmpl []element, start int) (unwrapped, error) {
	var (
		nonopts   []int // what the wrapper does not take for its options, in order
		code      bool  // --session-command gave a command: what the shell reads after USER are its arguments
		userShell = w.userShell
		i         = start
	)
	for ; i < len(raw) && raw[i] != "--"; i++ {
		a, param := raw[i], hasParam(tmpl[i])
		if len(a) < 2 || a[0] != '-' {
			nonopts = append(nonopts, i) // a lone "-" too: getopt leaves it, su reads it below
			continue
		}
		o := w.option(a)
		if err := checkOption(name, o, raw, tmpl, i); err != nil {
			return unwrapped{}, err
		}
		switch o.kind {
		case optCode:
			if param || (!o.attached && i+1 < len(raw) && hasParam(tmpl[i+1])) {
				return unwrapped{}, fmt.Errorf("argv[%d]: a param in the shell command %s %s runs", i, name, o.name)
			}
			code = true
		case optUser:
			userShell = false
		}
		if o.kind != optFlag && !o.attached {
			i++ // its value, a param or not
		}
	}
	for i++; i < len(raw); i++ { // after the wrapper's "--", nothing is its option
		nonopts = append(nonopts, i)
	}
	k := 0
	if w.dashFlag && k < len(nonopts) && raw[nonopts[k]] == "-" {
		k++ // su -: a login shell
	}
	program := ""
	switch {
	case userShell:
		k = min(k+1, len(nonopts)) // USER (any value); the user's shell reads what follows
	case k < len(nonopts) && !code:
		if hasParam(tmpl[nonopts[k]]) {
			return unwrapped{}, where(name, nonopts[k])
		}
		program = programName(raw[nonopts[k]])
		k++
	}
	rest := nonopts[k:]
	next := len(raw)
	if len(rest) > 0 {
		next = rest[0]
	}
	from := next // after the user or the program, only the wrapper's "--" may stand before what it runs reads
	if k > 0 {
		from = nonopts[k-1] + 1
	}
	for j := from; j < len(raw); j++ {
		switch {
		case len(rest) > 0 && rest[0] == j:
			rest = rest[1:]
		case raw[j] == "--" && j < next:
		default:
			return unwrapped{}, fmt.Errorf("argv[%d]: %s takes an option, and the first \"--\", from anywhere among its "+
				"arguments (its getopt permutes them): %q here is %s's, not read by what it runs; give %s's options "+
				"and its \"--\" before the user or the program", j, name, raw[j], name, name)
		}
	}
	switch {
	case code, next == len(raw):
		return unwrapped{done: true, next: next}, nil // a literal command, its arguments; or nothing to run
	case userShell:
		return unwrapped{name: "sh", next: next}, nil
	default:
		return unwrapped{name: program, next: next}, nil
	}
}

// unwrapOpaque reads past a wrapper of opaqueWrappers to its first "--", after which the
// program is named. Without one, the program is not found, and no later "--" ends options.
// A param after that "--" may be the program, or an argument of the program if that "--"
// was the program's (prlimit --nofile=64 kill -- {{pid}}): not knowing, nothing after it
// is read, and no "--" after it ends options.
func unwrapOpaque(raw []string, tmpl []element, start int) unwrapped {
	i := slices.Index(raw[start:], "--")
	if i < 0 {
		return unwrapped{done: true, next: len(raw)}
	}
	p := start + i + 1
	if p == len(raw) || hasParam(tmpl[p]) {
		return unwrapped{done: true, next: len(raw)}
	}
	return unwrapped{name: programName(raw[p]), next: p + 1}
}

func where(name string, i int) error {
	return fmt.Errorf("argv[%d]: a param where %s reads its options or the program to run", i, name)
}

func newSession(name, opt string, i int) error {
	return fmt.Errorf("argv[%d]: %s %s starts a new session (setsid) for what it runs, out of the process group "+
		"the Ghost kills at the operation's timeout and when it stops: it would run on unbounded; run the program "+
		"as the user with [\"runuser\", \"-u\", USER, \"--\", PROGRAM, …] or [\"sudo\", \"-u\", USER, \"--\", PROGRAM, …]",
		i, name, opt)
}

type optKind int

const (
	optFlag    optKind = iota
	optValue           // takes a value
	optCode            // takes a shell command
	optShell           // hands what follows to a shell
	optStop            // runs no program
	optUser            // runuser -u USER
	optSession         // su -c: what it runs leaves the process group
	optProgram         // su -s SHELL: takes the program to run
)

// checkOption refuses, for option o of wrapper name at raw[i], what both ways of reading
// a wrapper's options refuse: a param in the option itself rather than in its value, an
// option that starts a new session, and a param in the value of an option that names the
// program to run (its value attached, or the next element).
func checkOption(name string, o wrapperOpt, raw []string, tmpl []element, i int) error {
	param := hasParam(tmpl[i])
	switch {
	case param && !o.paramInValue(raw[i]):
		return where(name, i)
	case o.kind == optSession:
		return newSession(name, o.name, i)
	case o.kind == optProgram && ((o.attached && param) || (!o.attached && i+1 < len(raw) && hasParam(tmpl[i+1]))):
		return fmt.Errorf("argv[%d]: a param as the program %s %s runs: a param cannot choose the program", i, name, o.name)
	}
	return nil
}

// wrapperOpt is one option element as read: its kind, its name (for messages), whether its
// value is attached (-n10, --signal=TERM) and where that value starts.
type wrapperOpt struct {
	kind       optKind
	name       string
	attached   bool
	valueStart int
}

// paramInValue reports whether every param of option element a is in its attached value.
func (o wrapperOpt) paramInValue(a string) bool {
	return o.attached && o.kind != optShell && strings.Index(a, "{{") >= o.valueStart
}

func (w wrapper) option(a string) wrapperOpt {
	if strings.HasPrefix(a, "--") {
		name, _, attached := strings.Cut(a, "=")
		o := wrapperOpt{name: name, attached: attached, valueStart: len(name) + 1}
		switch {
		case slices.Contains(w.sessionLong, name):
			o.kind = optSession
		case slices.Contains(w.progLong, name):
			o.kind = optProgram
		case slices.Contains(w.shellLong, name):
			o.kind = optShell
		case slices.Contains(w.stopLong, name):
			o.kind = optStop
		case slices.Contains(w.codeLong, name):
			o.kind = optCode
		case slices.Contains(w.userLong, name):
			o.kind = optUser
		case slices.Contains(w.valueLong, name):
			o.kind = optValue
		default:
			o.attached = false // a flag, or an optional value we do not follow: nothing to skip
		}
		return o
	}
	for j := 1; j < len(a); j++ {
		c := a[j]
		o := wrapperOpt{name: "-" + string(c), attached: j+1 < len(a), valueStart: j + 1}
		switch {
		case strings.IndexByte(w.sessionOpts, c) >= 0:
			o.kind = optSession
		case strings.IndexByte(w.progOpts, c) >= 0:
			o.kind = optProgram
		case strings.IndexByte(w.shellOpts, c) >= 0:
			o.kind = optShell
		case strings.IndexByte(w.stopOpts, c) >= 0:
			o.kind = optStop
		case strings.IndexByte(w.codeOpts, c) >= 0:
			o.kind = optCode
		case strings.IndexByte(w.userOpt, c) >= 0:
			o.kind = optUser
		case strings.IndexByte(w.valueOpts, c) >= 0:
			o.kind = optValue
		default:
			continue // a flag; the next letter is another option
		}
		return o
	}
	return wrapperOpt{kind: optFlag, name: a}
}

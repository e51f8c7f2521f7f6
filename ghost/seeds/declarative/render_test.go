package declarative

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

func mustParse(t *testing.T, spec string) *Spec {
	t.Helper()
	s, err := Parse([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRender(t *testing.T) {
	s := mustParse(t, validSpec+`
[operations.opt]
description = "optional and default params"
argv = ["ls", "--a={{a}}", "{{b}}", "x{{a}}y{{b}}z"]
idempotent = true
[operations.opt.params.a]
pattern = "[a-z]*"
[operations.opt.params.b]
pattern = "[a-z]*"
default = "dflt"
`)
	echo, _ := s.Operation("echo")
	run, _ := s.Operation("run")
	opt, _ := s.Operation("opt")
	for _, tc := range []struct {
		name string
		op   *Operation
		args map[string]string
		want []string
	}{
		{"values stay one argument", echo, map[string]string{"message": "a; rm -rf / $(x) `y` | z > w", "count": "3"},
			[]string{"/bin/echo", "--msg=a; rm -rf / $(x) `y` | z > w", "3"}},
		{"spaces and newlines do not split", echo, map[string]string{"message": "one two\nthree\t--four"},
			[]string{"/bin/echo", "--msg=one two\nthree\t--four"}},
		{"placeholder syntax in a value is not expanded", echo, map[string]string{"message": "{{count}} {{file:run.sh}}", "count": "2"},
			[]string{"/bin/echo", "--msg={{count}} {{file:run.sh}}", "2"}},
		{"empty value is still one argument", echo, map[string]string{"message": ""},
			[]string{"/bin/echo", "--msg="}},
		{"file resolves under the files directory", run, nil, []string{"/state/seeds/node.test/1.2.3/files/run.sh", "x"}},
		{"absent optional drops its elements, default fills", opt, map[string]string{},
			[]string{"ls", "dflt"}},
		{"given optional", opt, map[string]string{"a": "q", "b": "r"}, []string{"ls", "--a=q", "r", "xqyrz"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.op.Render(tc.args, "/state/seeds/node.test/1.2.3/files")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("argv %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRenderRefuses(t *testing.T) {
	s := mustParse(t, validSpec)
	echo, _ := s.Operation("echo")
	for _, tc := range []struct {
		name  string
		args  map[string]string
		param string
	}{
		{"missing required", map[string]string{}, "message"},
		{"undeclared", map[string]string{"message": "m", "extra": "1"}, "extra"},
		{"not an int", map[string]string{"message": "m", "count": "3; ls"}, "count"},
		{"below min", map[string]string{"message": "m", "count": "0"}, "count"},
		{"above max", map[string]string{"message": "m", "count": "11"}, "count"},
		{"NUL byte", map[string]string{"message": "a\x00b"}, "message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := echo.Render(tc.args, "/f")
			var ae *ArgError
			if !errors.As(err, &ae) || ae.Param != tc.param {
				t.Fatalf("err %v, want an ArgError on %s", err, tc.param)
			}
		})
	}
	// An undeclared param is told which ones the operation takes.
	if _, err := echo.Render(map[string]string{"message": "m", "extra": "1"}, "/f"); err == nil || !strings.Contains(err.Error(), "it takes: count?, message") {
		t.Errorf("undeclared param: %v, want the declared params listed", err)
	}
}

// A value starting with "-" that would begin an argument is refused (a program would read
// it as an option), unless a literal "--" ends the options before it or the param opts in.
const dashSpec = `id = "dash.test"
name = "Dash"
version = "1"
[operations.tar]
description = "archive a path"
argv = ["tar", "-cf", "/dev/null", "-C", "/etc", "{{path}}"]
idempotent = true
[operations.tar.params.path]
pattern = "(?s).{1,256}"
[operations.ended]
description = "options ended before the value"
argv = ["grep", "-r", "--", "{{pattern}}", "/etc"]
idempotent = true
[operations.ended.params.pattern]
pattern = "(?s).{1,256}"
[operations.optin]
description = "the program reads it as a value"
argv = ["kill", "-TERM", "{{pid}}"]
idempotent = true
[operations.optin.params.pid]
type = "int"
allow_leading_dash = true
[operations.kill]
description = "an int without opt-in"
argv = ["kill", "-TERM", "{{pid}}"]
idempotent = true
[operations.kill.params.pid]
type = "int"
[operations.inside]
description = "a value inside an element, and one after a literal prefix"
argv = ["echo", "name={{x}}", "{{y}}{{x}}", "-{{x}}"]
idempotent = true
[operations.inside.params.x]
pattern = "-?[a-z]{1,8}"
[operations.inside.params.y]
pattern = "[a-z]*"
[operations.wrapped]
description = "a -- among a wrapper's options ends the wrapper's, not kill's"
argv = ["sudo", "-n", "--", "kill", "-TERM", "{{pid}}"]
idempotent = true
[operations.wrapped.params.pid]
type = "int"
[operations.wrappedended]
description = "a -- the wrapped program reads"
argv = ["sudo", "-n", "--", "grep", "-r", "--", "{{pattern}}", "/etc"]
idempotent = true
[operations.wrappedended.params.pattern]
pattern = "(?s).{1,256}"
[operations.suwrapped]
description = "su takes the first --, wherever it stands: the shell reads -c and sh -1"
argv = ["su", "app", "--", "-c", "kill \"$1\"", "sh", "{{pid}}"]
idempotent = true
[operations.suwrapped.params.pid]
type = "int"
[operations.susession]
description = "su --session-command, with its -- after the user"
argv = ["su", "--session-command", "kill \"$1\"", "app", "--", "sh", "{{pid}}"]
idempotent = true
[operations.susession.params.pid]
type = "int"
[operations.runuserwrapped]
description = "runuser -u takes the first -- after the program for its own"
argv = ["runuser", "-u", "app", "kill", "--", "{{pid}}"]
idempotent = true
[operations.runuserwrapped.params.pid]
type = "int"
[operations.runuserended]
description = "the second -- is the program's"
argv = ["runuser", "-u", "app", "--", "grep", "-r", "--", "{{pattern}}", "/etc"]
idempotent = true
[operations.runuserended.params.pattern]
pattern = "(?s).{1,256}"
[operations.setpriv]
description = "setpriv's -- is not kill's"
argv = ["setpriv", "--reuid=app", "--init-groups", "--", "kill", "-TERM", "{{pid}}"]
idempotent = true
[operations.setpriv.params.pid]
type = "int"
[operations.prlimit]
description = "prlimit's options are not read; its first -- is its own"
argv = ["prlimit", "--nofile=64", "kill", "--", "{{pid}}"]
idempotent = true
[operations.prlimit.params.pid]
type = "int"
[operations.dflt]
description = "a default is the spec's own text"
argv = ["ls", "{{flag}}"]
idempotent = true
[operations.dflt.params.flag]
pattern = "-[a-z]"
default = "-l"
`

func TestRenderLeadingDash(t *testing.T) {
	s := mustParse(t, dashSpec)
	op := func(name string) *Operation {
		o, ok := s.Operation(name)
		if !ok {
			t.Fatalf("no operation %s", name)
		}
		return o
	}
	for _, tc := range []struct {
		name  string
		op    string
		args  map[string]string
		param string   // refused on this param, or
		want  []string // rendered
	}{
		{"tar option injection", "tar", map[string]string{"path": "--use-compress-program=touch /tmp/x;"}, "path", nil},
		{"a single dash", "tar", map[string]string{"path": "-"}, "path", nil},
		{"kill -1", "kill", map[string]string{"pid": "-1"}, "pid", nil},
		{"an empty value before a dash", "inside", map[string]string{"y": "", "x": "-a"}, "x", nil},
		{"a plain value", "tar", map[string]string{"path": "hostname"}, "", []string{"tar", "-cf", "/dev/null", "-C", "/etc", "hostname"}},
		{"after --", "ended", map[string]string{"pattern": "-v"}, "", []string{"grep", "-r", "--", "-v", "/etc"}},
		{"after a wrapper's --", "wrapped", map[string]string{"pid": "-1"}, "pid", nil},
		{"after the wrapped program's --", "wrappedended", map[string]string{"pattern": "-v"}, "",
			[]string{"sudo", "-n", "--", "grep", "-r", "--", "-v", "/etc"}},
		{"su USER -- -c: su takes the --", "suwrapped", map[string]string{"pid": "-1"}, "pid", nil},
		{"su --session-command USER --", "susession", map[string]string{"pid": "-1"}, "pid", nil},
		{"runuser -u USER PROGRAM --", "runuserwrapped", map[string]string{"pid": "-1"}, "pid", nil},
		{"runuser, after the program's --", "runuserended", map[string]string{"pattern": "-v"}, "",
			[]string{"runuser", "-u", "app", "--", "grep", "-r", "--", "-v", "/etc"}},
		{"setpriv OPTIONS --", "setpriv", map[string]string{"pid": "-1"}, "pid", nil},
		{"prlimit OPTIONS PROGRAM --", "prlimit", map[string]string{"pid": "-1"}, "pid", nil},
		{"opted in", "optin", map[string]string{"pid": "-1"}, "", []string{"kill", "-TERM", "-1"}},
		{"not at the start of an element", "inside", map[string]string{"x": "-a", "y": "b"}, "", []string{"echo", "name=-a", "b-a", "--a"}},
		{"a default", "dflt", map[string]string{}, "", []string{"ls", "-l"}},
		{"a given value like the default", "dflt", map[string]string{"flag": "-r"}, "flag", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := op(tc.op).Render(tc.args, "/f")
			if tc.param != "" {
				var ae *ArgError
				if !errors.As(err, &ae) || ae.Param != tc.param || !strings.Contains(ae.Reason, `starts with "-"`) {
					t.Fatalf("argv %q err %v, want an ArgError on %s", got, err, tc.param)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("argv %q, want %q", got, tc.want)
			}
		})
	}
}

// The Ghost registers no_leading_dash on the params that begin an element before the end
// of options, so that Mirage refuses such a value at issue time; Mirage must never refuse
// a value the Ghost would run.
func TestRegisteredParamsRefuseALeadingDashWhereRenderDoes(t *testing.T) {
	seed := New(mustParse(t, dashSpec), t.TempDir())
	info := seed.Info()
	want := map[string]bool{"tar.path": true, "ended.pattern": false, "optin.pid": false, "kill.pid": true,
		"inside.x": false, "inside.y": true, "dflt.flag": true, "wrapped.pid": true, "wrappedended.pattern": false,
		"suwrapped.pid": true, "susession.pid": true, "runuserwrapped.pid": true, "runuserended.pattern": false,
		"setpriv.pid": true, "prlimit.pid": true}
	for _, op := range info.Operations {
		for _, p := range op.Params {
			if p.NoLeadingDash != want[op.Name+"."+p.Name] {
				t.Errorf("%s.%s: no_leading_dash %v, want %v", op.Name, p.Name, p.NoLeadingDash, want[op.Name+"."+p.Name])
			}
		}
	}
	for _, v := range []string{"-a", "--x=y", "-", "a-b", "abc"} {
		for _, op := range info.Operations {
			for _, p := range op.Params {
				args := map[string]string{p.Name: v}
				mirage := bus.CheckArgs(info.ID, op, args, func(name string) *bus.ParamPattern {
					for _, q := range op.Params {
						if q.Name == name {
							return bus.SharedPattern(q.Pattern)
						}
					}
					return nil
				})
				sop, _ := seed.spec.Operation(op.Name)
				_, ghost := sop.Render(args, "/f")
				if mirage != nil && strings.Contains(mirage.Error(), `starts with "-"`) && ghost == nil {
					t.Errorf("%s.%s=%q: Mirage refuses (%v) what the Ghost renders", op.Name, p.Name, v, mirage)
				}
				if p.NoLeadingDash && strings.HasPrefix(v, "-") && (mirage == nil || !strings.Contains(mirage.Error(), `starts with "-"`)) {
					if pat := bus.SharedPattern(p.Pattern); pat != nil && pat.Match(v) {
						t.Errorf("%s.%s=%q: Mirage lets through a leading dash the Ghost refuses: %v", op.Name, p.Name, v, mirage)
					}
				}
			}
		}
	}
}

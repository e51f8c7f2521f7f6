package declarative

import (
	"errors"
	"reflect"
	"testing"
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
}

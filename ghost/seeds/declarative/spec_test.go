package declarative

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const validSpec = `
id = "node.test"
name = "Test"
description = "for tests"
version = "1.2.3"

[[files]]
name = "run.sh"
executable = true

[operations.uname]
description = "uname -a"
argv = ["uname", "-a"]
idempotent = true

[operations.echo]
description = "echo a message"
argv = ["/bin/echo", "--msg={{message}}", "{{count}}"]
timeout = "5s"
idempotent = false
env = ["LANG"]

[operations.echo.params.message]
required = true
pattern = "(?s).*"
max_bytes = 100

[operations.echo.params.count]
type = "int"
min = 1
max = 10

[operations.run]
description = "run the shipped script"
argv = ["{{file:run.sh}}", "x"]
idempotent = true
`

func TestParseValid(t *testing.T) {
	s, err := Parse([]byte(validSpec))
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != "node.test" || s.Version != "1.2.3" || len(s.Files) != 1 || !s.Files[0].Executable {
		t.Fatalf("spec %+v", s)
	}
	var names []string
	for _, op := range s.Operations {
		names = append(names, op.Name)
	}
	if strings.Join(names, ",") != "echo,run,uname" {
		t.Fatalf("operations %v, want sorted echo,run,uname", names)
	}
	echo, _ := s.Operation("echo")
	if echo.Timeout != 5*time.Second || echo.Idempotent || len(echo.Params) != 2 || echo.Env[0] != "LANG" {
		t.Fatalf("echo %+v", echo)
	}
	count, _ := echo.Param("count")
	if count.Type != TypeInt || count.Pattern != typePatterns[TypeInt] || count.Required {
		t.Fatalf("count %+v", count)
	}
	if msg, _ := echo.Param("message"); msg.MaxBytes != 100 {
		t.Fatalf("message %+v, want max_bytes 100", msg)
	}
	uname, _ := s.Operation("uname")
	if uname.Timeout != DefaultTimeout {
		t.Fatalf("default timeout %s", uname.Timeout)
	}
}

// The shipped examples are valid specs.
func TestParseExamples(t *testing.T) {
	paths, _ := filepath.Glob("../../../deploy/seeds/*.toml")
	if len(paths) < 2 {
		t.Fatalf("found %d examples in deploy/seeds", len(paths))
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(data); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// Every invalid spec is refused with an error naming the key at fault.
func TestParseInvalid(t *testing.T) {
	op := "\n[operations.x]\ndescription = \"d\"\nidempotent = true\n"
	head := "id = \"a.b\"\nname = \"n\"\nversion = \"1\"\n"
	for _, tc := range []struct {
		name, spec, key, reason string
	}{
		{"syntax", "id = ", "", "line 1"},
		{"unknown key", head + "colour = 1" + op + "argv = [\"ls\"]", "colour", "unknown key"},
		{"no id", "name = \"n\"\nversion = \"1\"" + op + "argv = [\"ls\"]", "id", "missing"},
		{"upper id", strings.Replace(head, "a.b", "A.b", 1) + op + "argv = [\"ls\"]", "id", "lowercase"},
		{"reserved id", strings.Replace(head, "a.b", "seed.kv", 1) + op + "argv = [\"ls\"]", "id", "reserved"},
		{"control id", strings.Replace(head, "a.b", "ghost", 1) + op + "argv = [\"ls\"]", "id", "reserved"},
		{"dot id", strings.Replace(head, "a.b", "..", 1) + op + "argv = [\"ls\"]", "id", "start with a letter"},
		{"dotdot id", strings.Replace(head, "a.b", "a..b", 1) + op + "argv = [\"ls\"]", "id", `contains ".."`},
		{"dotdot version", strings.Replace(head, "\"1\"", "\"1..2\"", 1) + op + "argv = [\"ls\"]", "version", `contains ".."`},
		{"no version", "id = \"a.b\"\nname = \"n\"" + op + "argv = [\"ls\"]", "version", "missing"},
		{"bad version", strings.Replace(head, "\"1\"", "\"../1\"", 1) + op + "argv = [\"ls\"]", "version", "version"},
		{"record's name as version", strings.Replace(head, "\"1\"", "\"current.json\"", 1) + op + "argv = [\"ls\"]", "version", "record"},
		{"no operations", head, "operations", "missing"},
		{"no argv", head + op, "operations.x.argv", "missing"},
		{"no idempotent", head + "[operations.x]\ndescription = \"d\"\nargv = [\"ls\"]\n", "operations.x.idempotent", "missing"},
		{"no description", head + "[operations.x]\nidempotent = true\nargv = [\"ls\"]\n", "operations.x.description", "missing"},
		{"bad op name", head + "[operations.X]\ndescription = \"d\"\nidempotent = true\nargv = [\"ls\"]\n", "operations.X", "lowercase"},
		{"timeout unit", head + op + "argv = [\"ls\"]\ntimeout = \"10\"", "operations.x.timeout", "duration"},
		{"relative program", head + op + "argv = [\"./ls\"]", "operations.x.argv[0]", "relative"},
		{"param program", head + op + "argv = [\"{{p}}\"]\n[operations.x.params.p]\npattern = \"ls\"", "operations.x.argv[0]", "cannot choose the program"},
		{"undeclared param", head + op + "argv = [\"ls\", \"{{p}}\"]", "operations.x.argv[1]", "no param declared"},
		{"unused param", head + op + "argv = [\"ls\"]\n[operations.x.params.p]\npattern = \"a\"", "operations.x.params.p", "no argv element uses"},
		{"unclosed", head + op + "argv = [\"ls\", \"{{p\"]", "operations.x.argv[1]", "without closing"},
		{"bad placeholder", head + op + "argv = [\"ls\", \"{{a b}}\"]", "operations.x.argv[1]", "neither a param"},
		{"no pattern", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\nrequired = true", "operations.x.params.p.pattern", "missing"},
		{"bad pattern", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\npattern = \"(\"", "operations.x.params.p.pattern", "does not compile"},
		{"bad type", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\ntype = \"float\"", "operations.x.params.p.type", "string, int or bool"},
		{"bad default", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\ntype = \"int\"\nmax = 3\ndefault = \"9\"", "operations.x.params.p.default", "above the maximum"},
		{"max_bytes on an int", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\ntype = \"int\"\nmax_bytes = 4", "operations.x.params.p.max_bytes", "type string"},
		{"negative max_bytes", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\npattern = \".*\"\nmax_bytes = -1", "operations.x.params.p.max_bytes", "positive"},
		{"default past max_bytes", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\npattern = \".*\"\nmax_bytes = 2\ndefault = \"abc\"", "operations.x.params.p.default", "at most 2"},
		{"allow_leading_dash on a bool", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\ntype = \"bool\"\nallow_leading_dash = true", "operations.x.params.p.allow_leading_dash", "string or int"},
		{"allow_leading_dash not a bool", head + op + "argv = [\"ls\", \"{{p}}\"]\n[operations.x.params.p]\ntype = \"int\"\nallow_leading_dash = \"yes\"", "", "true or false"},
		{"PATH env", head + op + "argv = [\"ls\"]\nenv = [\"PATH\"]", "operations.x.env[0]", "PATH is fixed"},
		{"undeclared file", head + op + "argv = [\"/bin/sh\", \"{{file:a.sh}}\"]", "operations.x.argv[1]", "no file declared"},
		{"file not executable", head + "[[files]]\nname = \"a.sh\"\n" + op + "argv = [\"{{file:a.sh}}\"]", "operations.x.argv[0]", "not declared executable"},
		{"file dotdot", head + "[[files]]\nname = \"../a.sh\"\n" + op + "argv = [\"ls\"]", "files[0].name", "contains .."},
		{"file absolute", head + "[[files]]\nname = \"/etc/passwd\"\n" + op + "argv = [\"ls\"]", "files[0].name", "absolute"},
		{"file separator", head + "[[files]]\nname = \"a/b\"\n" + op + "argv = [\"ls\"]", "files[0].name", "separator"},
		{"file twice", head + "[[files]]\nname = \"a\"\n[[files]]\nname = \"a\"\n" + op + "argv = [\"ls\"]", "files[1].name", "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.spec))
			var se *SpecError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("err %v, want a *SpecError", err)
			}
			if se.Key != tc.key || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err %q (key %q), want key %q and %q", err, se.Key, tc.key, tc.reason)
			}
		})
	}
}

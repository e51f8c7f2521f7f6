package declarative

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

const execSpec = `
id = "exec.test"
name = "Exec"
version = "1"

[[files]]
name = "script.sh"

[operations.printf]
description = "print the value as is"
argv = ["printf", "%s", "{{value}}"]
idempotent = true
[operations.printf.params.value]
pattern = "(?s).*"
allow_leading_dash = true # after its format, printf reads every argument as a value

[operations.script]
description = "run the script"
argv = ["/bin/sh", "{{file:script.sh}}", "{{code}}"]
idempotent = true
timeout = "500ms"
[operations.script.params.code]
type = "int"
default = "0"

[operations.env]
description = "print the environment"
argv = ["env"]
idempotent = true
env = ["EDGE_TEST_KEEP"]
`

func execSeed(t *testing.T, script string) *Seed {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "files", "script.sh"), []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	return New(mustParse(t, execSpec), dir)
}

func run(s *Seed, op string, args map[string]string) (bus.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Execute(ctx, &bus.SeedExecute{Operation: op, Args: args})
}

// A value full of shell syntax reaches the program as one argument, byte for byte.
func TestExecuteMetacharactersStayPlain(t *testing.T) {
	s := execSeed(t, "")
	for _, v := range []string{"a; rm -rf / $(x)", "`id` && echo pwned | cat > /tmp/x", "*", "$HOME ~ \"'", "-n"} {
		res, err := run(s, "printf", map[string]string{"value": v})
		if err != nil || res.Stdout != v || res.ExitCode != 0 || res.Status != StatusOK {
			t.Errorf("printf %q: stdout %q exit %d err %v", v, res.Stdout, res.ExitCode, err)
		}
	}
}

// A value that would begin an argument with "-" is refused before anything runs: tar
// would take it as an option, and --use-compress-program runs a shell command.
func TestExecuteRefusesOptionValue(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	s := New(mustParse(t, `id = "backup.app"
name = "backup"
version = "1"
[operations.archive]
description = "archive one path"
idempotent = true
argv = ["tar", "-cf", "/dev/null", "-C", "/etc", "hostname", "{{path}}"]
[operations.archive.params.path]
required = true
pattern = "(?s).{1,256}"
`), dir)
	res, err := run(s, "archive", map[string]string{"path": "--use-compress-program=touch " + marker + ";"})
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || perr.Field != "args.path" || res.Status != "refused" {
		t.Fatalf("%+v %v, want a 1300 on args.path", res, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the value ran a command through tar's option")
	}
}

func TestExecuteScriptExitCode(t *testing.T) {
	s := execSeed(t, "echo out; echo err >&2; exit \"$1\"\n")
	res, err := run(s, "script", nil)
	if err != nil || res.Stdout != "out\n" || res.Stderr != "err\n" {
		t.Fatalf("exit 0: %+v %v", res, err)
	}
	res, err = run(s, "script", map[string]string{"code": "3"})
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeRuntime || res.ExitCode != 3 || res.Status != StatusFailed || res.Stdout != "out\n" {
		t.Fatalf("exit 3: %+v %v", res, err)
	}
}

// The operation's timeout kills the program and its children, promptly.
func TestExecuteTimeout(t *testing.T) {
	s := execSeed(t, "sleep 30 & sleep 30\n")
	start := time.Now()
	res, err := run(s, "script", nil)
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeExecTimeout || res.Status != StatusTimedOut {
		t.Fatalf("%+v %v", res, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %s after a 500ms timeout", took)
	}
}

// Only PATH and the allowed variables reach the program.
func TestExecuteEnvAllowlist(t *testing.T) {
	t.Setenv("EDGE_TEST_KEEP", "kept")
	t.Setenv("EDGE_TEST_SECRET", "leaked")
	res, err := run(execSeed(t, ""), "env", nil)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(res.Stdout)
	want := []string{"PATH=" + Path, "EDGE_TEST_KEEP=kept"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("environment %q, want %q", got, want)
	}
}

func TestExecuteOutputCapped(t *testing.T) {
	s := execSeed(t, "head -c 100000 /dev/zero | tr '\\0' x\n")
	res, err := run(s, "script", nil)
	if err != nil || len(res.Stdout) != bus.MaxOutput || !res.Truncated {
		t.Fatalf("stdout %d bytes truncated %v err %v", len(res.Stdout), res.Truncated, err)
	}
}

func TestExecuteRefusesBadArgs(t *testing.T) {
	res, err := run(execSeed(t, ""), "script", map[string]string{"code": "1; reboot"})
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || perr.Field != "args.code" || res.ExitCode != -1 {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestInfo(t *testing.T) {
	info := execSeed(t, "").Info()
	if info.ID != "exec.test" || info.Version != "1" || len(info.Operations) != 3 {
		t.Fatalf("%+v", info)
	}
	op, _ := info.Operation("script")
	if len(op.Params) != 1 || op.Params[0].Pattern != typePatterns[TypeInt] || !strings.Contains(op.Params[0].Description, `default "0"`) {
		t.Fatalf("%+v", op)
	}
}

// The limits a spec declares reach the register envelope (params' min, max, max_bytes), so
// that Mirage checks them at issue time as the Ghost does.
func TestInfoCarriesLimits(t *testing.T) {
	op, ok := New(mustParse(t, validSpec), t.TempDir()).Info().Operation("echo")
	if !ok {
		t.Fatal("no echo operation")
	}
	byName := map[string]bus.ParamInfo{}
	for _, p := range op.Params {
		byName[p.Name] = p
	}
	if m := byName["message"]; m.MaxBytes != 100 {
		t.Fatalf("message %+v, want max_bytes 100", m)
	}
	if c := byName["count"]; c.Min == nil || *c.Min != 1 || c.Max == nil || *c.Max != 10 {
		t.Fatalf("count %+v, want min 1 and max 10", c)
	}
	for args, want := range map[string]string{"11": "above the maximum 10", "0": "below the minimum 1"} {
		err := bus.CheckArgs("node.test", op, map[string]string{"message": "m", "count": args}, func(name string) *bus.ParamPattern { return bus.SharedPattern(byName[name].Pattern) })
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("count=%s: %v, want %q", args, err, want)
		}
	}
	if err := bus.CheckArgs("node.test", op, map[string]string{"message": strings.Repeat("m", 101)}, func(name string) *bus.ParamPattern { return bus.SharedPattern(byName[name].Pattern) }); err == nil || !strings.Contains(err.Error(), "at most 100") {
		t.Errorf("a 101-byte message: %v", err)
	}
}

//go:build linux

package declarative

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A job the script leaves behind ends with the script: one sent to the background with
// its output closed does not run on past the operation, and one holding the output open
// does not turn a script that succeeded into a failure after waitDelay.
func TestExecuteChildrenEndWithTheScript(t *testing.T) {
	for _, tc := range []struct{ name, script string }{
		{"output closed", "sleep 30 >/dev/null 2>&1 &\necho $!\n"},
		{"output held", "sleep 30 &\necho $!\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := execSeed(t, tc.script)
			start := time.Now()
			res, err := run(s, "script", nil)
			if err != nil || res.Status != StatusOK || res.ExitCode != 0 {
				t.Fatalf("the script exited 0: %+v %v", res, err)
			}
			if took := time.Since(start); took > waitDelay {
				t.Errorf("took %s: the job held the operation open", took)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
			if err != nil {
				t.Fatalf("the script printed no pid: %q", res.Stdout)
			}
			deadline := time.Now().Add(5 * time.Second)
			for alive(pid) {
				if time.Now().After(deadline) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					t.Fatalf("the script's job %d is still running after the operation ended", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// alive reports whether process pid runs: a zombie (an orphan no init has reaped yet,
// as in a container) has ended.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

// A program does not outlive a kill -9 of its Ghost: the test runs the operation in a
// child process standing in for the Ghost, kills that, and the program (its script's
// leader, exec'd into sleep) ends too, where before it ran on to its end, past the
// operation's timeout and beside the re-run a restarted Ghost starts for an idempotent
// command.
func TestProgramDiesWithItsGhost(t *testing.T) {
	if dir := os.Getenv("EDGE_TEST_GHOST_DIR"); dir != "" { // the stand-in Ghost
		script := "echo $$ > pid.tmp && mv pid.tmp pid\nexec sleep 30\n"
		if err := os.MkdirAll(filepath.Join(dir, "files"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "files", "script.sh"), []byte(script), 0o600); err != nil {
			t.Fatal(err)
		}
		spec := strings.Replace(execSpec, `timeout = "500ms"`, `timeout = "60s"`, 1)
		_, _ = run(New(mustParse(t, spec), dir), "script", nil)
		return
	}
	dir := t.TempDir()
	ghost := exec.Command(os.Args[0], "-test.run=^TestProgramDiesWithItsGhost$", "-test.count=1")
	ghost.Env = append(os.Environ(), "EDGE_TEST_GHOST_DIR="+dir)
	if err := ghost.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ghost.Process.Kill(); _ = ghost.Wait() }()
	var pid int
	deadline := time.Now().Add(10 * time.Second)
	for pid == 0 {
		if b, err := os.ReadFile(filepath.Join(dir, "pid")); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("the program never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := ghost.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = ghost.Wait()
	deadline = time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the program %d runs on after its Ghost was killed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

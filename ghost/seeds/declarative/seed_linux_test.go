//go:build linux

package declarative

import (
	"bytes"
	"fmt"
	"os"
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

package test

import (
	"strings"
	"testing"

	"github.com/edgectl/edgectl/test/testenv"
)

// Usage errors (a wrong number of arguments, an unknown or missing subcommand, a missing
// required flag) exit 2 with one line on stderr, whatever part of the command line is
// wrong, and need no server.
func TestUsageErrorsExitTwo(t *testing.T) {
	mctl, gctl := testenv.Binaries(t)
	for _, tc := range []struct {
		bin  string
		args []string
	}{
		{mctl, []string{"report"}},
		{mctl, []string{"attach"}},
		{mctl, []string{"fleet", "add", "edge-1"}},
		{mctl, []string{"seed", "push"}},
		{mctl, []string{"bogus"}},
		{mctl, []string{"up", "extra"}},
		{mctl, []string{"ghosts", "extra"}},
		{mctl, []string{"fleet"}},
		{mctl, []string{"fleet", "bogus"}},
		{mctl, []string{"seed", "pusj", "x.toml"}},
		{mctl, []string{"issue", "--no-such-flag"}},
		{gctl, []string{"init"}},
		{gctl, []string{"init", "--id", "edge-1", "extra"}},
		{gctl, []string{"bogus"}},
	} {
		r := execRun(t, tc.bin, nil, tc.args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 2 || len(lines) != 1 || !strings.HasPrefix(lines[0], "error: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one error line", tc.args, r.code, r.stderr)
		}
	}
}

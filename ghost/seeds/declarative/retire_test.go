package declarative

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// longSeed is execSeed with a script that may run a minute.
func longSeed(t *testing.T, script string) *Seed {
	t.Helper()
	s := execSeed(t, script)
	return New(mustParse(t, strings.Replace(execSpec, `timeout = "500ms"`, `timeout = "60s"`, 1)), s.Dir())
}

type outcome struct {
	res bus.Result
	err error
}

// start runs the seed's script in the background once it has written "started" in its
// directory.
func start(t *testing.T, s *Seed) <-chan outcome {
	t.Helper()
	done := make(chan outcome, 1)
	go func() {
		res, err := run(s, "script", nil)
		done <- outcome{res, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(s.Dir(), "started")); err == nil {
			return done
		}
		if time.Now().After(deadline) {
			t.Fatal("the script never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// A retired seed (replaced by a new version) runs nothing new, lets what runs finish,
// and says when nothing uses its directory any more: only then may it be deleted.
func TestRetireDrains(t *testing.T) {
	s := longSeed(t, "touch started\nwhile [ ! -e release ]; do sleep 0.02; done\ncat files/script.sh >/dev/null && echo done\n")
	done := start(t, s)
	s.Retire()
	if closed(s.Drained()) {
		t.Fatal("drained while an execution runs")
	}
	res, err := run(s, "script", nil)
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeBusy || res.Status != "refused" || !strings.Contains(perr.Message, "replaced") {
		t.Fatalf("a retired seed ran a new execution: %+v %v", res, err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir(), "release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil || o.res.Stdout != "done\n" {
		t.Fatalf("the running execution did not finish as it would have: %+v %v", o.res, o.err)
	}
	select {
	case <-s.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("not drained after its last execution returned")
	}

	idle := longSeed(t, "")
	idle.Retire()
	if !closed(idle.Drained()) {
		t.Fatal("a retired seed with nothing running is not drained")
	}
}

// A cancelled seed (removed) kills what runs at once, says so, and refuses what comes.
func TestCancelKillsRunningExecutions(t *testing.T) {
	s := longSeed(t, "touch started\nexec sleep 30\n")
	done := start(t, s)
	began := time.Now()
	s.Cancel()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the execution runs on after its seed was cancelled")
	}
	var perr *bus.Error
	if !errors.As(o.err, &perr) || perr.Code != bus.CodeRuntime || !strings.Contains(perr.Message, "removed") || o.res.Status != StatusFailed {
		t.Fatalf("%+v %v, want a 1400 saying the seed was removed", o.res, o.err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("took %s to end", took)
	}
	select {
	case <-s.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("not drained after its execution was killed")
	}
	res, err := run(s, "script", nil)
	if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || perr.Field != "seed_selector" || res.Status != "refused" {
		t.Fatalf("a removed seed ran a new execution: %+v %v", res, err)
	}
}

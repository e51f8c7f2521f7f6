package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
)

type outcome struct {
	res bus.Result
	err error
}

// runDisk runs disk.test's operation as the Ghost does (the seed the registry resolves)
// and returns once its script has touched marker.
func runDisk(t *testing.T, reg *ghost.Registry, marker string) <-chan outcome {
	t.Helper()
	seed, _, err := reg.Resolve("disk.test", "run", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan outcome, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := seed.Execute(ctx, &bus.SeedExecute{Operation: "run"})
		done <- outcome{res, err}
	}()
	waitFor(t, "the script to start", func() bool { _, err := os.Stat(marker); return err == nil })
	return done
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// A new version replaces the old at once, but the old version's directory stays while an
// execution of it runs there (its program still reads files/), and goes once it ends.
// The same version cannot be installed again over that directory meanwhile.
func TestReplaceKeepsTheOldVersionWhileItRuns(t *testing.T) {
	state, marks := t.TempDir(), t.TempDir()
	s, reg := newControl(t, state)
	t.Cleanup(s.Close)
	started, release := filepath.Join(marks, "started"), filepath.Join(marks, "release")
	v1 := installDiskScript(t, s, "1", "touch "+started+"\nwhile [ ! -e "+release+" ]; do sleep 0.02; done\n"+
		"cat files/a.sh >/dev/null && echo still there\n")
	done := runDisk(t, reg, started)

	installDisk(t, s, "2")
	if !isHosted(reg, "disk.test", "2") {
		t.Fatal("the new version is not hosted")
	}
	old := filepath.Join(state, "seeds", "disk.test", "1")
	if !exists(old) {
		t.Fatal("the old version's directory was deleted while an execution ran in it")
	}
	s.mu.Lock()
	_, _, err := s.check(v1)
	s.mu.Unlock()
	if perr := bus.AsError(err); err == nil || perr.Code != bus.CodeBusy {
		t.Fatalf("installing 1 again while it drains: %v, want a 1501", err)
	}

	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if o := <-done; o.err != nil || o.res.Stdout != "still there\n" {
		t.Fatalf("the old version's execution: %+v %v", o.res, o.err)
	}
	waitFor(t, "the old version's directory to go", func() bool { return !exists(old) })
	if !exists(filepath.Join(state, "seeds", "disk.test", "2", "spec.toml")) {
		t.Fatal("the current version was deleted with the old one")
	}
}

// seed.remove kills what runs of the seed, the version hosted and a version replaced
// that still runs, before it deletes the files and answers "removed".
func TestRemoveKillsRunningExecutions(t *testing.T) {
	state, marks := t.TempDir(), t.TempDir()
	s, reg := newControl(t, state)
	t.Cleanup(s.Close)
	var running []<-chan outcome
	for _, v := range []string{"1", "2"} {
		mark := filepath.Join(marks, v)
		installDiskScript(t, s, v, "touch "+mark+"\nexec sleep 30\n")
		running = append(running, runDisk(t, reg, mark))
	}
	began := time.Now()
	c, err := s.Remove(context.Background(), "disk.test")
	if err != nil || c.Action != "removed" {
		t.Fatalf("%+v %v", c, err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("remove took %s", took)
	}
	for i, done := range running {
		select {
		case o := <-done:
			var perr *bus.Error
			if !errors.As(o.err, &perr) || perr.Code != bus.CodeRuntime || !strings.Contains(perr.Message, "removed") {
				t.Errorf("execution of version %d: %+v %v, want a 1400 saying the seed was removed", i+1, o.res, o.err)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("an execution of version %d still runs after seed.remove answered", i+1)
		}
	}
	if exists(filepath.Join(state, "seeds", "disk.test")) {
		t.Fatal("files left")
	}
}

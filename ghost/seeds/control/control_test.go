package control

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
)

// host stands in for the Ghost: a registry, never registered. Installs from the object
// store are tested end to end in test/seedpush_test.go; these tests cover the disk.
type host struct{ reg *ghost.Registry }

func (h host) ID() string                       { return "edge-t" }
func (h host) Registry() *ghost.Registry        { return h.reg }
func (h host) Registered() bool                 { return false }
func (h host) Reregister(context.Context) error { return nil }

const spec = `id = "disk.test"
name = "Disk"
version = "%s"
[[files]]
name = "a.sh"
[operations.run]
description = "run a.sh"
argv = ["/bin/sh", "{{file:a.sh}}"]
idempotent = true
`

func newControl(t *testing.T, state string) (*Seed, *ghost.Registry) {
	t.Helper()
	return newControlAllowing(t, state, "disk.*")
}

func newControlAllowing(t *testing.T, state string, allow ...string) (*Seed, *ghost.Registry) {
	t.Helper()
	reg := ghost.NewRegistry()
	s, err := New(host{reg}, Config{StateDir: state, Allow: allow})
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

// installDisk installs a version of disk.test the way seed.install does once verified.
func installDisk(t *testing.T, s *Seed, version string) {
	t.Helper()
	installDiskScript(t, s, version, "echo "+version+"\n")
}

// installDiskScript installs a version of disk.test whose operation run runs script.
func installDiskScript(t *testing.T, s *Seed, version, script string) declarative.Manifest {
	t.Helper()
	data := []byte(sprintf(spec, version))
	sp, err := declarative.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"a.sh": []byte(script)}
	b := &declarative.Bundle{Spec: sp, SpecData: data, Files: files}
	stage, err := s.stage(data)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stage)
	for name, content := range files {
		if err := s.stageFile(stage, sp, name, content); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.activate(sp, stage, b.Manifest()); err != nil {
		t.Fatal(err)
	}
	return b.Manifest()
}

func sprintf(format, v string) string { return fmt.Sprintf(format, v) }

func hosted(reg *ghost.Registry, id string) (bus.SeedInfo, bool) {
	for _, in := range reg.Infos() {
		if in.ID == id {
			return in, true
		}
	}
	return bus.SeedInfo{}, false
}

func TestInstalledSeedsReload(t *testing.T) {
	state := t.TempDir()
	s, reg := newControl(t, state)
	if _, ok := hosted(reg, ID); !ok {
		t.Fatal("the control seed is not hosted")
	}
	installDisk(t, s, "1")
	installDisk(t, s, "2")
	if dirs, _ := filepath.Glob(filepath.Join(state, "seeds", "disk.test", "*", "spec.toml")); len(dirs) != 1 {
		t.Fatalf("version directories after a replace: %v", dirs)
	}
	// Leftovers of interrupted installs are cleaned at start.
	root := filepath.Join(state, "seeds")
	must(t, os.MkdirAll(filepath.Join(root, ".staging-123", "files"), 0o700))
	must(t, os.MkdirAll(filepath.Join(root, "half.done", "1"), 0o700))
	must(t, os.MkdirAll(filepath.Join(root, "disk.test", "3"), 0o700))

	_, reg = newControl(t, state)
	if in, ok := hosted(reg, "disk.test"); !ok || in.Version != "2" {
		t.Fatalf("after reload: %+v %v", in, ok)
	}
	for _, p := range []string{".staging-123", "half.done", "disk.test/3"} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s survived the start", p)
		}
	}

	// A file changed on disk after the install: the seed is not hosted.
	must(t, os.WriteFile(filepath.Join(root, "disk.test", "2", "files", "a.sh"), []byte("rm -rf /\n"), 0o600))
	if _, reg = newControl(t, state); len(reg.Infos()) != 1 {
		t.Fatalf("a seed with a changed file was loaded: %+v", reg.Infos())
	}
}

// seed_allowlist is checked again at start: an installed seed it no longer allows is not
// hosted, and its files are kept, so that allowing it again (or naming it in boot_seeds,
// the Ghost's own config) hosts it again without a push.
func TestLoadChecksTheAllowlist(t *testing.T) {
	state := t.TempDir()
	s, _ := newControl(t, state)
	installDisk(t, s, "1")
	spec := filepath.Join(state, "seeds", "disk.test", "1", "spec.toml")

	_, reg := newControlAllowing(t, state, "other.*")
	if in, ok := hosted(reg, "disk.test"); ok {
		t.Fatalf("a seed off the allowlist is hosted after a restart: %+v", in)
	}
	if _, err := os.Stat(spec); err != nil {
		t.Fatalf("the files of a seed off the allowlist were deleted: %v", err)
	}

	if _, reg = newControl(t, state); !isHosted(reg, "disk.test", "1") {
		t.Fatal("allowed again, the seed is not hosted")
	}

	s, reg = newControlAllowing(t, state)
	if err := s.Boot(context.Background(), []string{"disk.test@1"}); err != nil {
		t.Fatal(err)
	}
	if !isHosted(reg, "disk.test", "1") {
		t.Fatal("a boot seed off the allowlist is not hosted")
	}

	// Removing a seed that is not hosted deletes its files all the same.
	s, _ = newControlAllowing(t, state)
	if c, err := s.Remove(context.Background(), "disk.test"); err != nil || c.Action != "removed" || c.Previous != "1" {
		t.Fatalf("removing a withheld seed: %+v %v", c, err)
	}
	if _, err := os.Stat(filepath.Join(state, "seeds", "disk.test")); !os.IsNotExist(err) {
		t.Fatal("files left")
	}
	if err := s.Boot(context.Background(), []string{"disk.test@1"}); err == nil {
		t.Fatal("a removed seed was hosted again by a boot install without a store")
	}
}

func isHosted(reg *ghost.Registry, id, version string) bool {
	in, ok := hosted(reg, id)
	return ok && in.Version == version
}

func TestRemove(t *testing.T) {
	state := t.TempDir()
	s, reg := newControl(t, state)
	installDisk(t, s, "1")
	c, err := s.Remove(context.Background(), "disk.test")
	if err != nil || c.Action != "removed" || c.Previous != "1" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, ok := hosted(reg, "disk.test"); ok {
		t.Fatal("still hosted")
	}
	if _, err := os.Stat(filepath.Join(state, "seeds", "disk.test")); !os.IsNotExist(err) {
		t.Fatal("files left")
	}
	if c, err := s.Remove(context.Background(), "disk.test"); err != nil || c.Action != "absent" {
		t.Fatalf("second remove: %+v %v", c, err)
	}
	if _, err := s.Remove(context.Background(), ID); err == nil {
		t.Fatal("the control seed was removed")
	}
}

func TestAllowAndRefs(t *testing.T) {
	s := &Seed{cfg: Config{Allow: []string{"node.*", "svc.one"}}}
	for id, want := range map[string]bool{"node.system": true, "svc.one": true, "svc.two": false, "nodes": false} {
		if s.allowed(id) != want {
			t.Errorf("allowed(%s) = %v", id, !want)
		}
	}
	if (&Seed{}).allowed("x") {
		t.Error("an empty allowlist allowed an install")
	}
	if ValidateAllow([]string{"[x"}) == nil || ValidateAllow([]string{""}) == nil {
		t.Error("a bad glob was accepted")
	}
	for ref, ok := range map[string]bool{"node.system": true, "node.system@1.0.0": true, "node.system@": false, "seed.kv": false, "../x": false, "a@../1": false} {
		if _, _, err := ParseRef(ref); (err == nil) != ok {
			t.Errorf("ParseRef(%q): %v", ref, err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A boot install's bound grows with what it reads: under authentication each object is
// read through Mirage at most once per bus.SeedEvery, so a seed of many files must not be
// cut off by a fixed minute (an install by command is bounded by its own timeout only).
func TestBootInstallBoundCoversItsReads(t *testing.T) {
	small := declarative.Manifest{ID: "svc.a", Version: "1", Spec: declarative.Entry{Size: 1 << 10}}
	if got := bootInstallBound(small); got < fetchTimeout || got > fetchTimeout+2*bus.SeedEvery {
		t.Errorf("bound of a spec alone: %s", got)
	}
	many := small
	for i := 0; i < 100; i++ {
		many.Files = append(many.Files, declarative.Entry{Size: 1 << 20})
	}
	// 101 reads a second apart, and 100 MiB at 64 KiB/s.
	want := fetchTimeout + 101*bus.SeedEvery + 1600*time.Second
	if got := bootInstallBound(many); got < want {
		t.Errorf("bound of 100 files of 1 MiB: %s, want at least %s", got, want)
	}
}

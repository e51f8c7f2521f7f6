package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
)

// On disk, under STATE/seeds:
//
//	<id>/current.json                the record of the active version (the commit point)
//	<id>/<version>/spec.toml         the spec
//	<id>/<version>/files/<name>      its files
//	.staging-*                       an install being written (removed at start)
//
// An install is written to a staging directory, renamed to <id>/<version>, then committed
// by replacing current.json atomically; only then is it hosted and the old version
// deleted, once no execution of the old version runs in its directory any more. A crash
// at any point leaves either the old version or the new one active.

// record is current.json: what is installed and its digests.
type record struct {
	ID          string            `json:"id"`
	Version     string            `json:"version"`
	SpecSHA256  string            `json:"spec_sha256"`
	Files       map[string]string `json:"files"` // name → sha256
	InstalledMS int64             `json:"installed_ms"`
}

// installedSeed is an installed seed: its record and the seed hosted for it.
type installedSeed struct {
	record
	seed *declarative.Seed
}

func (r record) same(m declarative.Manifest) bool {
	if r.Version != m.Version || r.SpecSHA256 != m.Spec.SHA256 || len(r.Files) != len(m.Files) {
		return false
	}
	for _, f := range m.Files {
		if r.Files[f.Name] != f.SHA256 {
			return false
		}
	}
	return true
}

// fetchTimeout bounds a boot install's manifest read, and is the base of the bound of its
// install (bootInstallBound). An install by command is bounded by the command's timeout
// only ('seed push --timeout'): under authentication each object is read through Mirage,
// at most one per bus.SeedEvery, so a seed of many or large files needs its time.
const fetchTimeout = time.Minute

// Install fetches, verifies and activates the seed m describes. It does not check the
// allowlist (seed.install does) and does not re-register (the caller does).
func (s *Seed) Install(ctx context.Context, m declarative.Manifest) (Change, error) {
	s.mu.Lock()
	_, done, err := s.check(m)
	s.mu.Unlock()
	if done != nil || err != nil {
		return derefChange(done), err
	}
	// One install fetches at a time: each holds one verified file (up to 32 MiB) in
	// memory while writing it, so concurrent seed.install commands cannot add up to
	// gigabytes on an edge machine.
	select {
	case s.fetching <- struct{}{}:
	case <-ctx.Done():
		return Change{}, bus.Errorf(bus.CodeRuntime, "waiting for another seed install to end: %v", ctx.Err())
	}
	// Fetch without the lock (seed.list and info answer meanwhile), then check again.
	spec, stage, err := s.fetch(ctx, m)
	<-s.fetching
	if err != nil {
		return Change{}, err
	}
	defer os.RemoveAll(stage) // a no-op once activated
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, done, err := s.check(m)
	if done != nil || err != nil {
		return derefChange(done), err
	}
	had := cur != nil
	dir, err := s.activate(spec, stage, m)
	if err != nil {
		return Change{}, bus.Errorf(bus.CodeInternal, "installing %s %s: %v", m.ID, m.Version, err)
	}
	c := Change{Action: "installed", ID: m.ID, Version: m.Version, SHA256: m.Spec.SHA256,
		Message: fmt.Sprintf("installed %s %s in %s", m.ID, m.Version, dir)}
	if had {
		c.Action, c.Previous = "replaced", cur.Version
		c.Message = fmt.Sprintf("replaced %s %s with %s in %s", m.ID, cur.Version, m.Version, dir)
	}
	s.log.Info("seed installed", "installed_seed", m.ID, "version", m.Version, "previous", c.Previous, "sha256", m.Spec.SHA256)
	return c, nil
}

// check decides an install against what is installed; s.mu is held. It returns the
// installed record of the id (nil when none), or the change when there is nothing to do,
// or the refusal.
func (s *Seed) check(m declarative.Manifest) (*record, *Change, error) {
	cur, had := s.installed[m.ID]
	if had && cur.Version == m.Version {
		if cur.same(m) {
			return &cur.record, &Change{Action: "unchanged", ID: m.ID, Version: m.Version, SHA256: m.Spec.SHA256,
				Message: fmt.Sprintf("%s %s is already installed with the same digests: nothing to do", m.ID, m.Version)}, nil
		}
		return nil, nil, bus.Errorf(bus.CodeSemantic, "%s %s is already installed with different content (spec sha256 %s); versions are immutable: push a new version", m.ID, m.Version, cur.SpecSHA256)
	}
	if !had && s.hosts(m.ID) {
		return nil, nil, bus.Errorf(bus.CodeSemantic, "seed %s is built into this Ghost and cannot be installed over", m.ID)
	}
	for _, old := range s.retiring[m.ID] {
		if old.Spec().Version == m.Version {
			return nil, nil, bus.Errorf(bus.CodeBusy, "%s %s was replaced before, and an execution that started then still runs in its directory: nothing installed; install it again once that execution ends", m.ID, m.Version)
		}
	}
	if !had {
		return nil, nil, nil
	}
	return &cur.record, nil, nil
}

func derefChange(c *Change) Change {
	if c == nil {
		return Change{}
	}
	return *c
}

// fetch reads the spec and files from edge_seeds, verifying every digest, and checks the
// spec; each file is written to a new staging directory under STATE/seeds once verified,
// so that no more than one is held in memory. It returns the staging directory (the
// caller removes it unless activate moved it); nothing outside it is written before all
// of the seed is verified. ctx bounds it (fetchTimeout).
func (s *Seed) fetch(ctx context.Context, m declarative.Manifest) (*declarative.Spec, string, error) {
	obs, err := s.store(ctx)
	if err != nil {
		return nil, "", err
	}
	specData, err := declarative.Fetch(ctx, obs, m.Spec.Object, m.Spec.SHA256, declarative.MaxSpecSize)
	if err != nil {
		return nil, "", err
	}
	spec, err := declarative.Parse(specData)
	if err != nil {
		return nil, "", bus.Errorf(bus.CodeSemantic, "spec %s: %v; nothing installed", m.Spec.Object, err)
	}
	if spec.ID != m.ID || spec.Version != m.Version {
		return nil, "", bus.Errorf(bus.CodeSemantic, "spec %s declares %s %s, the install names %s %s; nothing installed", m.Spec.Object, spec.ID, spec.Version, m.ID, m.Version)
	}
	given := map[string]bool{}
	for _, f := range m.Files {
		if _, ok := spec.File(f.Name); !ok {
			return nil, "", bus.Errorf(bus.CodeSemantic, "file %s is not declared by the spec; nothing installed", f.Name)
		}
		given[f.Name] = true
	}
	for _, f := range spec.Files {
		if !given[f.Name] {
			return nil, "", bus.Errorf(bus.CodeSemantic, "the spec declares file %s but the install names no digest for it; nothing installed", f.Name)
		}
	}
	stage, err := s.stage(specData)
	if err != nil {
		return nil, "", bus.Errorf(bus.CodeInternal, "staging %s %s: %v", m.ID, m.Version, err)
	}
	for _, f := range m.Files {
		data, err := declarative.Fetch(ctx, obs, f.Object, f.SHA256, declarative.MaxFileSize)
		if err == nil {
			err = s.stageFile(stage, spec, f.Name, data)
		}
		if err != nil {
			_ = os.RemoveAll(stage)
			var perr *bus.Error
			if errors.As(err, &perr) {
				return nil, "", err
			}
			return nil, "", bus.Errorf(bus.CodeInternal, "staging %s of %s %s: %v", f.Name, m.ID, m.Version, err)
		}
	}
	return spec, stage, nil
}

// stage makes a staging directory holding the spec and an empty files/.
func (s *Seed) stage(specData []byte) (string, error) {
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp(s.root, ".staging-")
	if err != nil {
		return "", err
	}
	if err := writeFile(filepath.Join(stage, "spec.toml"), specData, 0o600); err == nil {
		err = os.Mkdir(filepath.Join(stage, "files"), 0o700)
		if err == nil {
			return stage, nil
		}
	} else {
		_ = os.RemoveAll(stage)
		return "", err
	}
	_ = os.RemoveAll(stage)
	return "", err
}

// stageFile writes the verified file name of spec into the staging directory.
func (s *Seed) stageFile(stage string, spec *declarative.Spec, name string, data []byte) error {
	f, _ := spec.File(name)
	p, err := inside(filepath.Join(stage, "files"), name)
	if err != nil {
		return err
	}
	mode := os.FileMode(0o600)
	if f.Executable {
		mode = 0o700
	}
	return writeFile(p, data, mode)
}

// store returns the reader of edge_seeds. When the server requires authentication the
// Ghost has no JetStream API permission on the store (natsd.GhostPermissions) and reads
// through Mirage (declarative.MirageObjects); without, by direct get
// (declarative.Objects), with no Mirage needed (headless).
func (s *Seed) store(ctx context.Context) (declarative.ObjectReader, error) {
	if s.js == nil {
		return nil, bus.Errorf(bus.CodeRuntime, "this Ghost has no connection to read %s", bus.BucketSeeds)
	}
	if s.cfg.Conn.AuthRequired() {
		return s.mirage, nil
	}
	sctx, cancel := context.WithTimeout(ctx, declarative.InfoTimeout)
	defer cancel()
	obs, err := declarative.OpenObjects(sctx, s.js)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, bus.Errorf(bus.CodeRuntime, "object store %s not found: has a Mirage provisioned this server?", bus.BucketSeeds)
	}
	if err != nil {
		return nil, declarative.StoreError("object store "+bus.BucketSeeds, err)
	}
	return obs, nil
}

// activate moves the staged, verified seed into place, commits it and hosts it; s.mu is
// held. The version it replaces is retired: its directory is deleted once no execution
// runs there any more (retire).
func (s *Seed) activate(spec *declarative.Spec, stage string, m declarative.Manifest) (string, error) {
	if err := os.MkdirAll(filepath.Join(s.root, m.ID), 0o700); err != nil {
		return "", err
	}
	rec := record{ID: m.ID, Version: m.Version, SpecSHA256: m.Spec.SHA256, Files: map[string]string{}, InstalledMS: s.cfg.Now().UnixMilli()}
	for _, f := range m.Files {
		rec.Files[f.Name] = f.SHA256 // each verified by Fetch before it was staged
	}
	final := filepath.Join(s.root, m.ID, m.Version)
	if err := os.RemoveAll(final); err != nil { // a leftover that never became current
		return "", err
	}
	if err := os.Rename(stage, final); err != nil {
		return "", err
	}
	data, _ := json.Marshal(rec)
	if err := writeFileAtomic(filepath.Join(s.root, m.ID, "current.json"), data); err != nil {
		_ = os.RemoveAll(final)
		return "", err
	}
	seed := declarative.New(spec, final)
	if err := s.reg.Add(seed); err != nil {
		return "", err
	}
	prev, had := s.installed[m.ID]
	s.installed[m.ID] = installedSeed{rec, seed}
	if had {
		s.retire(m.ID, prev.seed)
	}
	s.prune(m.ID, m.Version)
	return final, nil
}

// retire retires old, replaced by a new version of id: it runs nothing new. While
// executions of it run, its directory is kept, and deleted in the background once they
// have ended (pruneWhenDrained); s.mu is held.
func (s *Seed) retire(id string, old *declarative.Seed) {
	old.Retire()
	select {
	case <-old.Drained():
		return // nothing runs: the caller's prune deletes its directory
	default:
	}
	s.retiring[id] = append(s.retiring[id], old)
	if s.closed() {
		return // no more waits: the next start deletes it
	}
	s.pruners.Add(1)
	go s.pruneWhenDrained(id, old)
}

// pruneWhenDrained waits for the executions of old, a retired version of id, to end, then
// deletes the version directories of id but the current one and those still in use.
func (s *Seed) pruneWhenDrained(id string, old *declarative.Seed) {
	defer s.pruners.Done()
	select {
	case <-old.Drained():
	case <-s.closing:
		return // the next start deletes it
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgetDrained(id)
	if cur, ok := s.installed[id]; ok { // else removed meanwhile: Remove deleted it all
		s.prune(id, cur.Version)
	}
}

// forgetDrained drops the retiring seeds of id that no execution uses any more; s.mu is
// held.
func (s *Seed) forgetDrained(id string) {
	left := slices.DeleteFunc(s.retiring[id], func(old *declarative.Seed) bool {
		select {
		case <-old.Drained():
			return true
		default:
			return false
		}
	})
	if len(left) == 0 {
		delete(s.retiring, id)
		return
	}
	s.retiring[id] = left
}

// removeWait bounds how long Remove waits for the executions it cancelled to end before
// it deletes their directory regardless.
const removeWait = 10 * time.Second

// stop cancels the seeds of id, the one hosted and those retired that still run, and
// waits for them to drain, within ctx and removeWait; it reports whether they did. s.mu
// is held.
func (s *Seed) stop(ctx context.Context, id string, hosted *declarative.Seed) bool {
	seeds := append([]*declarative.Seed{hosted}, s.retiring[id]...)
	for _, seed := range seeds {
		seed.Cancel()
	}
	ctx, cancel := context.WithTimeout(ctx, removeWait)
	defer cancel()
	for _, seed := range seeds {
		select {
		case <-seed.Drained():
		case <-ctx.Done():
			return false
		}
	}
	s.forgetDrained(id)
	return true
}

// Remove stops hosting an installed seed, cancels its running executions (their
// programs are killed) and deletes it once they have ended, or after removeWait
// regardless. A seed that is not installed is no error (action "absent"); a built-in one
// cannot be removed.
func (s *Seed) Remove(ctx context.Context, id string) (Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := filepath.Join(s.root, id)
	rec, ok := s.installed[id]
	if w, held := s.withheld[id]; held {
		// Installed but not hosted (seed_allowlist does not allow it): its files go.
		delete(s.withheld, id)
		if err := os.RemoveAll(dir); err != nil {
			return Change{}, bus.Errorf(bus.CodeInternal, "removing %s: %v", dir, err)
		}
		s.log.Info("seed removed", "removed_seed", id, "version", w.Version, "hosted", false)
		return Change{Action: "removed", ID: id, Previous: w.Version,
			Message: fmt.Sprintf("removed %s %s, which was not hosted: seed_allowlist does not allow it", id, w.Version)}, nil
	}
	if !ok {
		if s.hosts(id) {
			return Change{}, bus.Errorf(bus.CodeSemantic, "seed %s is built into this Ghost and cannot be removed", id)
		}
		if _, err := os.Stat(dir); err == nil {
			if err := os.RemoveAll(dir); err != nil {
				return Change{}, bus.Errorf(bus.CodeInternal, "removing %s: %v", dir, err)
			}
		}
		return Change{Action: "absent", ID: id, Message: fmt.Sprintf("seed %s is not installed: nothing to remove", id)}, nil
	}
	s.reg.Remove(id)
	delete(s.installed, id)
	// current.json first: a crash after it leaves files that start-up deletes.
	if err := os.Remove(filepath.Join(dir, "current.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Change{}, bus.Errorf(bus.CodeInternal, "removing %s: %v", id, err)
	}
	if !s.stop(ctx, id, rec.seed) {
		s.log.Warn("executions of a removed seed did not end in time after they were cancelled; deleting its files regardless",
			"removed_seed", id, "version", rec.Version, "waited", removeWait)
	}
	if err := os.RemoveAll(dir); err != nil {
		return Change{}, bus.Errorf(bus.CodeInternal, "removing %s: %v", dir, err)
	}
	s.log.Info("seed removed", "removed_seed", id, "version", rec.Version)
	return Change{Action: "removed", ID: id, Previous: rec.Version, Message: fmt.Sprintf("removed %s %s", id, rec.Version)}, nil
}

// hosts reports whether the registry hosts id.
func (s *Seed) hosts(id string) bool {
	for _, in := range s.reg.Infos() {
		if in.ID == id {
			return true
		}
	}
	return false
}

// prune deletes the version directories of id other than keep and those of its retired
// versions that executions still use; s.mu is held.
func (s *Seed) prune(id, keep string) {
	entries, err := os.ReadDir(filepath.Join(s.root, id))
	if err != nil {
		return
	}
	inUse := map[string]bool{keep: true}
	for _, old := range s.retiring[id] {
		inUse[filepath.Base(old.Dir())] = true
	}
	for _, e := range entries {
		if e.IsDir() && !inUse[e.Name()] {
			if err := os.RemoveAll(filepath.Join(s.root, id, e.Name())); err != nil {
				s.log.Warn("removing an old seed version failed", "installed_seed", id, "version", e.Name(), "err", err)
			}
		}
	}
}

// inside joins a validated file name to dir and checks the result stays in dir.
func inside(dir, name string) (string, error) {
	if err := declarative.ValidateFileName(name); err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if filepath.Dir(p) != filepath.Clean(dir) {
		return "", fmt.Errorf("file %q would leave %s", name, dir)
	}
	return p, nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeFileAtomic replaces path with data: a reader sees the old file or the new one.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := writeFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// bootInstallBound is how long a boot install of m may take: fetchTimeout, plus a read of
// each object through Mirage (at most one per bus.SeedEvery), plus its bytes at 64 KiB/s,
// a slow edge link.
func bootInstallBound(m declarative.Manifest) time.Duration {
	size := m.Spec.Size
	for _, f := range m.Files {
		size += f.Size
	}
	return fetchTimeout + time.Duration(1+len(m.Files))*bus.SeedEvery + time.Duration(size)*time.Second/(64<<10)
}

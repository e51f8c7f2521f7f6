package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgectl/edgectl/ghost/seeds/declarative"
)

// load hosts the seeds installed before, checking each file against the digests recorded
// at install. A seed that fails is logged and left out: one broken install does not keep
// the Ghost from starting. A seed whose id seed_allowlist no longer allows is withheld:
// not hosted, its files kept, so that allowing it again hosts it at the next start, and
// Boot hosts it when boot_seeds names it (boot seeds are the Ghost's own config).
func (s *Seed) load() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return fmt.Errorf("seeds directory: %w", err)
	}
	entries, err := os.ReadDir(s.root)
	if err != nil {
		return fmt.Errorf("seeds directory: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(s.root, e.Name())
		if strings.HasPrefix(e.Name(), ".") { // an install interrupted before its rename
			_ = os.RemoveAll(p)
			continue
		}
		if !e.IsDir() {
			continue
		}
		err := s.loadOne(e.Name())
		if errors.Is(err, errWithheld) {
			s.log.Warn("an installed seed is not on seed_allowlist: not hosted; its files are kept, and it is hosted again once seed_allowlist or boot_seeds names it",
				"installed_seed", e.Name(), "version", s.withheld[e.Name()].Version, "seed_allowlist", s.cfg.Allow)
			continue
		}
		if err != nil {
			s.log.Error("an installed seed was not loaded; push it again or remove it (ghost seed.remove)", "installed_seed", e.Name(), "err", err)
			continue
		}
		s.log.Info("installed seed loaded", "installed_seed", e.Name(), "version", s.installed[e.Name()].Version)
	}
	return nil
}

// errWithheld is loadOne's answer for a seed it verified but did not host: seed_allowlist
// does not allow its id.
var errWithheld = errors.New("not on seed_allowlist")

// hostInstalled adds an installed seed to the registry; s.mu is held.
func (s *Seed) hostInstalled(in installedSeed) error {
	if err := s.reg.Add(in.seed); err != nil {
		return err
	}
	s.installed[in.ID] = in
	return nil
}

func (s *Seed) loadOne(id string) error {
	if err := declarative.ValidateSeedID(id); err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(s.root, id, "current.json"))
	if errors.Is(err, os.ErrNotExist) {
		// Never committed, or removed half-way: nothing of it was active.
		return os.RemoveAll(filepath.Join(s.root, id))
	}
	if err != nil {
		return err
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("current.json: %w", err)
	}
	if rec.ID != id {
		return fmt.Errorf("current.json names seed %q", rec.ID)
	}
	if err := declarative.ValidateVersion(rec.Version); err != nil {
		return fmt.Errorf("current.json: %w", err)
	}
	dir := filepath.Join(s.root, id, rec.Version)
	specData, err := readLimited(filepath.Join(dir, "spec.toml"), declarative.MaxSpecSize)
	if err != nil {
		return err
	}
	if declarative.Digest(specData) != rec.SpecSHA256 {
		return fmt.Errorf("spec.toml changed on disk since it was installed (sha256 differs)")
	}
	spec, err := declarative.Parse(specData)
	if err != nil {
		return err
	}
	if spec.ID != id || spec.Version != rec.Version || len(spec.Files) != len(rec.Files) {
		return fmt.Errorf("spec.toml does not match current.json")
	}
	for _, f := range spec.Files {
		p, err := inside(filepath.Join(dir, "files"), f.Name)
		if err != nil {
			return err
		}
		data, err := readLimited(p, declarative.MaxFileSize)
		if err != nil {
			return err
		}
		if declarative.Digest(data) != rec.Files[f.Name] {
			return fmt.Errorf("file %s changed on disk since it was installed (sha256 differs)", f.Name)
		}
	}
	seed := declarative.New(spec, dir)
	s.prune(id, rec.Version)
	if !s.allowed(id) {
		s.withheld[id] = installedSeed{rec, seed}
		return errWithheld
	}
	return s.hostInstalled(installedSeed{rec, seed})
}

func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is over %d bytes", path, max)
	}
	return data, nil
}

// ParseRef reads a boot seed reference: ID (the version pushed last) or ID@VERSION.
func ParseRef(ref string) (id, version string, err error) {
	id, version, hasVersion := strings.Cut(ref, "@")
	if err := declarative.ValidateSeedID(id); err != nil {
		return "", "", err
	}
	if hasVersion {
		if err := declarative.ValidateVersion(version); err != nil {
			return "", "", err
		}
	}
	return id, version, nil
}

// Boot installs the seeds refs name (ID or ID@VERSION) from edge_seeds, with the same
// verification as seed.install but from the digests of the version's manifest, and
// without the allowlist: the Ghost's own config names them. A seed already installed at
// the named version is left alone without reading the store; for a bare ID, the version
// pushed last is installed when it differs, and the installed one is kept when the store
// cannot be read. An installed seed load withheld (not on seed_allowlist) is hosted when
// refs name it. It returns the failures joined; the Ghost serves regardless.
func (s *Seed) Boot(ctx context.Context, refs []string) error {
	var errs []error
	changed := false
	for _, ref := range refs {
		id, version, err := ParseRef(ref)
		if err != nil {
			errs = append(errs, fmt.Errorf("boot seed %q: %w", ref, err))
			continue
		}
		s.mu.Lock()
		if w, ok := s.withheld[id]; ok {
			// Installed, and named by the Ghost's own config: hosted whatever seed_allowlist says.
			delete(s.withheld, id)
			if err := s.hostInstalled(w); err != nil {
				s.log.Error("an installed boot seed could not be hosted", "installed_seed", id, "err", err)
			} else {
				s.log.Info("installed seed loaded: boot_seeds names it", "installed_seed", id, "version", w.Version)
			}
		}
		cur, had := s.installed[id]
		s.mu.Unlock()
		if had && version != "" && cur.Version == version {
			continue
		}
		c, err := s.bootOne(ctx, id, version)
		if err != nil {
			if had {
				s.log.Warn("boot seed: keeping the installed version", "installed_seed", id, "version", cur.Version, "err", err)
				continue
			}
			errs = append(errs, fmt.Errorf("boot seed %s: %w", ref, err))
			continue
		}
		changed = changed || c.Action != "unchanged"
		s.log.Info("boot seed", "installed_seed", id, "action", c.Action, "version", c.Version)
	}
	if changed && s.host.Registered() {
		if err := s.host.Reregister(ctx); err != nil {
			s.log.Warn("re-registering after boot installs failed", "err", err)
		}
	}
	return errors.Join(errs...)
}

func (s *Seed) bootOne(ctx context.Context, id, version string) (Change, error) {
	mctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	obs, err := s.store(mctx)
	if err != nil {
		return Change{}, err
	}
	m, err := declarative.FetchManifest(mctx, obs, id, version)
	if err != nil {
		return Change{}, err
	}
	ictx, cancel := context.WithTimeout(ctx, bootInstallBound(m))
	defer cancel()
	return s.Install(ictx, m)
}

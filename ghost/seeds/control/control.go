package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
)

// ID is the seed id of the control seed.
const ID = "ghost"

// Operations of the control seed.
const (
	OpInstall = "seed.install"
	OpRemove  = "seed.remove"
	OpList    = "seed.list"
	OpInfo    = "info"
)

// Host is the Ghost the control seed manages: *ghost.Ghost.
type Host interface {
	ID() string
	Registry() *ghost.Registry
	Registered() bool
	Reregister(ctx context.Context) error
}

// Config configures the control seed.
type Config struct {
	// Conn reads the object store edge_seeds (through Mirage when the server requires
	// authentication); nil leaves installs unavailable.
	Conn *nats.Conn
	// StateDir is the Ghost's state directory; seeds are installed under StateDir/seeds.
	StateDir string
	// Allow lists the seed ids (or path.Match globs: "node.*", "*") that seed.install may
	// install, and that are hosted again when the Ghost starts. Empty refuses every remote
	// install; boot installs are not checked.
	Allow []string
	// Version is the Ghost's version, for info.
	Version string
	Log     *slog.Logger
	Now     func() time.Time
}

// Seed is the control seed.
type Seed struct {
	host Host
	reg  *ghost.Registry
	cfg  Config
	root string // StateDir/seeds
	log  *slog.Logger
	js   jetstream.JetStream
	// mirage reads edge_seeds through Mirage, under auth; one per Ghost, so that its
	// reads go one at a time, as Mirage serves them.
	mirage *declarative.MirageObjects

	// mu serializes installs, removals and loading; installed is what it hosts, withheld
	// what load found installed but seed_allowlist does not allow (not hosted), retiring
	// the seeds replaced by a new version while executions of theirs ran: their version
	// directories are kept until they drain.
	mu        sync.Mutex
	installed map[string]installedSeed
	withheld  map[string]installedSeed
	retiring  map[string][]*declarative.Seed
	// fetching lets one install fetch and stage at a time (Install).
	fetching chan struct{}
	// pruners wait for retiring seeds to drain (pruneWhenDrained); closing, closed under
	// mu by Close, ends them.
	pruners sync.WaitGroup
	closing chan struct{}
}

// New builds the control seed of host, adds it to the host's registry, and loads the
// seeds installed under StateDir/seeds before (a seed that fails to load is logged and
// left out). Call it after ghost.New and before Ghost.Start.
func New(host Host, cfg Config) (*Seed, error) {
	if err := ValidateAllow(cfg.Allow); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	root, err := filepath.Abs(filepath.Join(cfg.StateDir, "seeds"))
	if err != nil {
		return nil, err
	}
	s := &Seed{host: host, reg: host.Registry(), cfg: cfg, root: root, installed: map[string]installedSeed{}, withheld: map[string]installedSeed{},
		retiring: map[string][]*declarative.Seed{}, fetching: make(chan struct{}, 1), closing: make(chan struct{}),
		log: cfg.Log.With("component", "ghost", "seed", ID, "ghost_id", host.ID())}
	if cfg.Conn != nil {
		if s.js, err = jetstream.New(cfg.Conn); err != nil {
			return nil, err
		}
		s.mirage = declarative.NewMirageObjects(cfg.Conn, host.ID())
	}
	if err := s.reg.Add(s); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// Close stops waiting for replaced seeds to drain, and returns once those waits have
// ended; the old version directories they kept are deleted at the next start. Call it
// after the Ghost is closed, when no execution runs any more.
func (s *Seed) Close() {
	s.mu.Lock()
	if !s.closed() {
		close(s.closing)
	}
	s.mu.Unlock()
	s.pruners.Wait()
}

func (s *Seed) closed() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// ValidateAllow checks an allowlist: seed ids or path.Match globs.
func ValidateAllow(allow []string) error {
	for i, a := range allow {
		if _, err := path.Match(a, "x"); err != nil || a == "" {
			return fmt.Errorf("seed_allowlist[%d] %q is not a seed id or glob", i, a)
		}
	}
	return nil
}

func (s *Seed) allowed(id string) bool {
	for _, a := range s.cfg.Allow {
		if ok, _ := path.Match(a, id); ok {
			return true
		}
	}
	return false
}

// Info declares the control seed.
func (s *Seed) Info() bus.SeedInfo {
	id := bus.ParamInfo{Name: declarative.ArgID, Required: true, Pattern: `[a-z0-9._-]{1,64}`, Description: "seed id"}
	return bus.SeedInfo{
		ID:          ID,
		Name:        "Ghost control",
		Description: "Manages the seeds this Ghost hosts: installs declarative seeds from the object store edge_seeds, removes and lists them.",
		Operations: []bus.OperationInfo{
			{Name: OpInstall, Idempotent: true,
				Description: "Fetch a declarative seed from edge_seeds, verify the SHA-256 of its spec and files, install it under the state directory and host it. The same version again is a no-op; a new version replaces the old. Refused unless the id is on the Ghost's seed_allowlist.",
				Params: []bus.ParamInfo{id,
					{Name: declarative.ArgVersion, Required: true, Pattern: declarative.PatternVersion, Description: "seed version"},
					{Name: declarative.ArgSHA256, Required: true, Pattern: declarative.PatternSHA256, Description: "SHA-256 of the spec, lowercase hex"},
					{Name: declarative.ArgSpec, Pattern: declarative.PatternObject, Description: "object name of the spec (default <id>/<version>/spec.toml)"},
					{Name: declarative.ArgFiles, Pattern: declarative.PatternFiles, Description: "the spec's files as NAME:SHA256, comma separated (objects <id>/<version>/files/NAME)"},
				}},
			{Name: OpRemove, Idempotent: true, Params: []bus.ParamInfo{id},
				Description: "Stop hosting an installed seed, kill its running executions and delete its files. Removing a seed that is not installed succeeds."},
			{Name: OpList, Idempotent: true, Params: []bus.ParamInfo{},
				Description: "List the hosted seeds as JSON: id, version, source (control, builtin or installed), digest and operations."},
			{Name: OpInfo, Idempotent: true, Params: []bus.ParamInfo{},
				Description: "Describe this Ghost as JSON: id, version, seed_allowlist, seeds directory, hosted seeds."},
		},
	}
}

// Execute runs one control operation.
func (s *Seed) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	if req == nil {
		return fail(bus.Errorf(bus.CodeSemantic, "no seed.execute given"))
	}
	switch req.Operation {
	case OpInstall:
		var m declarative.Manifest
		if err := declarative.ManifestFromArgs(req.Args, &m); err != nil {
			return fail(err)
		}
		if !s.allowed(m.ID) {
			return fail(bus.Errorf(bus.CodeSecurity, "seed %s is not on this Ghost's seed_allowlist %q: nothing installed; allow it with seed_allowlist in the Ghost's config file (e.g. %q; 'ghostctl init --allow-seeds' writes it), then restart the Ghost", m.ID, s.cfg.Allow, AllowGlob(m.ID)))
		}
		out, err := s.Install(ctx, m)
		if err != nil {
			return fail(err)
		}
		return s.changed(ctx, out)
	case OpRemove:
		id := req.Args[declarative.ArgID]
		if err := declarative.ValidateSeedID(id); err != nil {
			return fail(bus.FieldError(bus.CodeSemantic, "args.id", "%v", err))
		}
		out, err := s.Remove(ctx, id)
		if err != nil {
			return fail(err)
		}
		return s.changed(ctx, out)
	case OpList:
		return okJSON(s.list())
	case OpInfo:
		ids := []string{}
		for _, in := range s.reg.Infos() {
			ids = append(ids, in.ID)
		}
		allow := append([]string{}, s.cfg.Allow...)
		return okJSON(map[string]any{"ghost_id": s.host.ID(), "version": s.cfg.Version, "seed_allowlist": allow, "seeds_dir": s.root, "seeds": ids})
	}
	return fail(bus.FieldError(bus.CodeSemantic, "operation", "%s has no operation %q", ID, req.Operation))
}

// Change is the outcome of an install or a removal, printed as JSON on stdout.
type Change struct {
	Action   string `json:"action"` // installed, replaced, unchanged, removed, absent
	ID       string `json:"id"`
	Version  string `json:"version,omitempty"`
	Previous string `json:"previous,omitempty"` // the version replaced or removed
	Message  string `json:"message"`
	SHA256   string `json:"sha256,omitempty"` // of the spec
}

// changed re-registers after a change of the seed list, so Mirage targets the new seeds.
func (s *Seed) changed(ctx context.Context, c Change) (bus.Result, error) {
	res, err := okJSON(c)
	if c.Action == "unchanged" || c.Action == "absent" || !s.host.Registered() {
		return res, err
	}
	if rerr := s.host.Reregister(ctx); rerr != nil {
		s.log.Warn("re-registering after a seed change failed; Mirage learns the seed list at the next registration", "err", rerr)
		res.Stderr = "re-registering with Mirage failed: " + rerr.Error()
	}
	return res, err
}

type listed struct {
	ID          string   `json:"id"`
	Version     string   `json:"version,omitempty"`
	Source      string   `json:"source"`
	SHA256      string   `json:"sha256,omitempty"`
	InstalledMS int64    `json:"installed_ms,omitempty"`
	Operations  []string `json:"operations"`
}

func (s *Seed) list() []listed {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []listed{}
	for _, in := range s.reg.Infos() {
		l := listed{ID: in.ID, Version: in.Version, Source: "builtin", Operations: []string{}}
		if rec, ok := s.installed[in.ID]; ok {
			l.Source, l.SHA256, l.InstalledMS = "installed", rec.SpecSHA256, rec.InstalledMS
		} else if in.ID == ID {
			l.Source = "control"
		}
		for _, op := range in.Operations {
			l.Operations = append(l.Operations, op.Name)
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func okJSON(v any) (bus.Result, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return fail(err)
	}
	return bus.Result{Status: "ok", Stdout: string(data)}, nil
}

func fail(err error) (bus.Result, error) {
	perr := bus.AsError(err)
	status := "failed"
	if perr.Code == bus.CodeSemantic || perr.Code == bus.CodeSecurity {
		status = "refused"
	}
	return bus.Result{Status: status, ExitCode: 1, Stderr: perr.Message}, perr
}

// AllowGlob is the seed_allowlist entry a hint suggests for a seed id: its family ("node.*"
// for node.system), or the id itself when it has no dot.
func AllowGlob(id string) string {
	if i := strings.IndexByte(id, '.'); i > 0 {
		return id[:i] + ".*"
	}
	return id
}

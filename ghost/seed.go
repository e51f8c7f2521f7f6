package ghost

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Seed is a service interface hosted by a Ghost. The Ghost calls Execute only after it has
// checked the operation exists and the args match its declared params, and it bounds ctx
// with the command's timeout: a seed must return when ctx is done.
//
// Execute returns the normalized result of the execution. A non-nil error means the
// execution failed: a *bus.Error keeps its code (1300 for a refusal of the args, for
// example), any other error becomes a runtime error (1400). A result returned beside an
// error is still carried in the event (stderr, exit code).
type Seed interface {
	Info() bus.SeedInfo
	Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error)
}

// Registry holds the seeds a Ghost hosts, with their params' patterns for argument checks.
// It is safe for concurrent use; seeds may be added and removed while the Ghost serves.
type Registry struct {
	mu    sync.RWMutex
	seeds map[string]*entry
}

type entry struct {
	seed Seed
	info bus.SeedInfo
	ops  map[string]*operation
}

type operation struct {
	info     bus.OperationInfo
	patterns map[string]*bus.ParamPattern // by param name
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{seeds: map[string]*entry{}} }

// Add hosts a seed, replacing any seed of the same id. It refuses a seed whose declaration
// is invalid (bad ids, a param pattern that does not parse). Patterns are compiled on
// first use (bus.ParamPattern).
func (r *Registry) Add(s Seed) error {
	info := s.Info()
	if err := subjects.ValidateSeedID(info.ID); err != nil {
		return fmt.Errorf("seed %q: %w", info.ID, err)
	}
	e := &entry{seed: s, info: info, ops: map[string]*operation{}}
	for _, op := range info.Operations {
		if err := subjects.ValidateOperation(op.Name); err != nil {
			return fmt.Errorf("seed %s: %w", info.ID, err)
		}
		o := &operation{info: op, patterns: map[string]*bus.ParamPattern{}}
		for _, p := range op.Params {
			pat, err := bus.ParseParamPattern(p.Pattern)
			if err != nil {
				return fmt.Errorf("seed %s operation %s param %s: pattern: %w", info.ID, op.Name, p.Name, err)
			}
			o.patterns[p.Name] = pat
		}
		e.ops[op.Name] = o
	}
	r.mu.Lock()
	r.seeds[info.ID] = e
	r.mu.Unlock()
	return nil
}

// Remove stops hosting a seed; it reports whether the seed was there.
func (r *Registry) Remove(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.seeds[id]
	delete(r.seeds, id)
	return ok
}

// Infos returns the declarations of every hosted seed, sorted by id.
func (r *Registry) Infos() []bus.SeedInfo {
	r.mu.RLock()
	out := make([]bus.SeedInfo, 0, len(r.seeds))
	for _, e := range r.seeds {
		out = append(out, e.info)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Resolve finds the seed and operation a command names and checks its args against the
// operation's params: every required param present, no undeclared arg, every value a full
// match of its param's pattern. Failures are semantic errors (1300) that name the culprit.
func (r *Registry) Resolve(seedID, op string, args map[string]string) (Seed, bus.OperationInfo, error) {
	r.mu.RLock()
	e, ok := r.seeds[seedID]
	r.mu.RUnlock()
	if !ok {
		return nil, bus.OperationInfo{}, bus.FieldError(bus.CodeSemantic, "seed_selector", "unknown seed %q on this ghost", seedID)
	}
	o, ok := e.ops[op]
	if !ok {
		return nil, bus.OperationInfo{}, bus.FieldError(bus.CodeSemantic, "operation", "seed %s has no operation %q", seedID, op)
	}
	if err := bus.CheckArgs(seedID, o.info, args, func(name string) *bus.ParamPattern { return o.patterns[name] }); err != nil {
		return nil, bus.OperationInfo{}, err
	}
	return e.seed, o.info, nil
}

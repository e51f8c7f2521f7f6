package mirage

import (
	"sort"
	"strings"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// resolve turns a target scope into ghost ids and checks that each registered target hosts
// the requested seed and operation. An unregistered ghost id is kept: it may be a headless
// Ghost, whose own refusal is then reported.
//
// Scope forms: a ghost id, or a comma-separated list of ghost ids.
func (m *Mirage) resolve(scope string, obj bus.Objective) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	for _, part := range strings.Split(scope, ",") {
		id := strings.TrimSpace(part)
		if id == "" {
			continue
		}
		if err := subjects.ValidateGhostID(id); err != nil {
			return nil, bus.FieldError(bus.CodeSemantic, "target_scope", "%s", idReason(err))
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil, bus.FieldError(bus.CodeSemantic, "target_scope", "names no ghost")
	}
	var problems []string
	for _, id := range ids {
		rec, ok := m.fleet.Get(id)
		if !ok {
			continue
		}
		seed, ok := rec.Seed(obj.SeedSelector)
		if !ok {
			problems = append(problems, id+" does not host seed "+obj.SeedSelector)
			continue
		}
		if _, ok := seed.Operation(obj.Operation); !ok {
			problems = append(problems, id+": seed "+obj.SeedSelector+" has no operation "+obj.Operation)
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, bus.FieldError(bus.CodeSemantic, "objective", "%s", strings.Join(problems, "; "))
	}
	return ids, nil
}

func idReason(err error) string {
	msg := err.Error()
	prefix := subjects.ErrInvalidID.Error() + ": "
	return strings.TrimPrefix(msg, prefix)
}

package mirage

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// ScopeAll is the target scope naming every registered Ghost that is not offline.
const ScopeAll = "all"

// maxListed caps the ghost ids, labels and problems named in one error message.
const maxListed = 10

// resolve turns an issue's target scope into ghost ids, against the fleet registry as it
// is now (see resolveTargets for the grammar).
func (m *Mirage) resolve(scope string, obj bus.Objective) ([]string, error) {
	fleet := m.scopeFleet(scope)
	if !m.cfg.RequireSignedEvents {
		return resolveTargets(scope, obj, fleet, m.cfg.Now())
	}
	// Under authentication only an enrolled key's events count, and only an enrolled id
	// registers: a target that is not enrolled cannot answer, though it may still connect
	// while a server's auth config is stale (a node not reloaded since 'fleet rm'). Globs,
	// selectors and "all" see the enrolled Ghosts of the registry only (a record left from
	// before --auth must not block them); an id named outright must be enrolled.
	enrolled := make([]GhostRecord, 0, len(fleet))
	for _, r := range fleet {
		if _, ok := m.enrolled.key(r.GhostID); ok {
			enrolled = append(enrolled, r)
		}
	}
	ids, err := resolveTargets(scope, obj, enrolled, m.cfg.Now())
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, id := range ids {
		if _, ok := m.enrolled.key(id); !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		more := ""
		if len(missing) > maxListed {
			missing, more = missing[:maxListed], fmt.Sprintf(" and %d more", len(missing)-maxListed)
		}
		return nil, bus.FieldError(bus.CodeSemantic, "target_scope", "not enrolled: %s%s; Mirage counts no event from an id that is not enrolled (miragectl fleet add ID KEY; miragectl fleet ls lists the enrolled)", strings.Join(missing, ", "), more)
	}
	return ids, nil
}

// scopeFleet returns the registry records scope can match. A scope that is a list of plain
// ids (the usual single-target issue) can match only those ids, so only their records are
// read: an issue then costs the same in a fleet of ten as of ten thousand, where copying
// and sorting the whole registry would cost milliseconds each time. Any other scope sees
// every record.
func (m *Mirage) scopeFleet(scope string) []GhostRecord {
	scope = strings.TrimSpace(scope)
	if scope == ScopeAll || strings.ContainsAny(scope, "=*?[") {
		return m.fleet.All()
	}
	parts := strings.Split(scope, ",")
	out := make([]GhostRecord, 0, len(parts))
	seen := make(map[string]bool, len(parts))
	for _, p := range parts {
		id := strings.TrimSpace(p)
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		if r, ok := m.fleet.Get(id); ok {
			out = append(out, r)
		}
	}
	return out
}

// absent returns, for an accepted intent's answer, the first maxListed of its targets that
// no Ghost registered with, of those registered that are offline, and of those that are
// stale (missed heartbeats, not offline yet), with how long Mirage has not heard from
// them: an id may name a headless Ghost, and a glob or selector matches offline Ghosts,
// so neither is refused, but the user should know not to expect an answer from them soon.
func (m *Mirage) absent(targets []string) (unregistered, offline []string, stale []bus.StaleTarget) {
	now := m.cfg.Now()
	for _, id := range targets {
		if len(unregistered) == maxListed && len(offline) == maxListed && len(stale) == maxListed {
			break
		}
		r, ok := m.fleet.Get(id)
		if !ok {
			if len(unregistered) < maxListed && !slices.Contains(unregistered, id) { // a plan's steps may share targets
				unregistered = append(unregistered, id)
			}
			continue
		}
		switch r.Status(now) {
		case StatusOffline:
			if len(offline) < maxListed && !slices.Contains(offline, id) {
				offline = append(offline, id)
			}
		case StatusStale:
			if len(stale) < maxListed && !slices.ContainsFunc(stale, func(s bus.StaleTarget) bool { return s.GhostID == id }) {
				stale = append(stale, bus.StaleTarget{GhostID: id, SilentMS: now.UnixMilli() - r.LastSeenMS})
			}
		}
	}
	return unregistered, offline, stale
}

// resolveTargets resolves a target scope against the given fleet records and checks that
// every registered target hosts the requested seed and operation. The result is sorted and
// has no duplicates. Errors are semantic (1300), on field target_scope for the scope and on
// field objective for a target that does not host the operation.
//
// The scope grammar, decided on the whole (trimmed) scope:
//
//   - "all": every registered Ghost whose presence is not offline at now.
//   - contains '=': a label selector "key=value[,key=value...]"; a registered Ghost matches
//     when it carries every pair. Every comma part must be key=value: a selector cannot be
//     mixed with ids or globs.
//   - otherwise a comma list whose parts are ghost ids or globs. A part containing one of
//   - ? [ is a glob with path.Match semantics over the ids of registered Ghosts (edge-*,
//     edge-?1, edge-[ab]*); any other part is a ghost id.
//
// Ghost ids cannot contain '=', '*', '?', '[' or ',', so the forms never overlap; a Ghost
// whose id is literally "all" is reached with the list "all,". A glob, a selector or "all"
// that matches no registered Ghost is an error naming what is registered: an empty target
// list is a mistake, not a no-op. An explicit id need not be registered: it may be a
// headless Ghost, whose own refusal is then reported. Globs and selectors match registered
// Ghosts whatever their presence (a stale or offline one shows up as a timeout, which an
// operator wants to see); "all" leaves offline ones out, as the fleet's long-gone members.
func resolveTargets(scope string, obj bus.Objective, fleet []GhostRecord, now time.Time) ([]string, error) {
	ids, err := matchScope(scope, fleet, now)
	if err != nil {
		return nil, err
	}
	if err := checkHosts(ids, obj, fleet); err != nil {
		return nil, err
	}
	return ids, nil
}

// matchScope resolves the scope's grammar (see resolveTargets) to sorted, distinct ids.
func matchScope(scope string, fleet []GhostRecord, now time.Time) ([]string, error) {
	scope = strings.TrimSpace(scope)
	switch {
	case scope == "":
		return nil, scopeError("names no ghost")
	case scope == ScopeAll:
		var ids []string
		for _, r := range fleet {
			if r.Status(now) != StatusOffline {
				ids = append(ids, r.GhostID)
			}
		}
		if len(ids) == 0 {
			return nil, scopeError("%s: no registered ghost is online or stale%s", ScopeAll, registered(fleet, now, true))
		}
		return distinctSorted(ids), nil
	case strings.Contains(scope, "="):
		return matchLabels(scope, fleet, now)
	default:
		return matchList(scope, fleet, now)
	}
}

// matchLabels resolves a label selector key=value[,key=value...].
func matchLabels(scope string, fleet []GhostRecord, now time.Time) ([]string, error) {
	want := map[string]string{}
	for _, part := range strings.Split(scope, ",") {
		part = strings.TrimSpace(part)
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case part == "":
			continue
		case !ok:
			return nil, scopeError("label selector %q: %q is not key=value (a selector cannot be mixed with ghost ids or globs)", scope, part)
		case k == "":
			return nil, scopeError("label selector %q: %q has no key", scope, part)
		}
		if prev, dup := want[k]; dup && prev != v {
			return nil, scopeError("label selector %q: label %s is given twice with different values", scope, k)
		}
		want[k] = v
	}
	var ids []string
	for _, r := range fleet {
		if hasLabels(r.Labels, want) {
			ids = append(ids, r.GhostID)
		}
	}
	if len(ids) == 0 {
		return nil, scopeError("no registered ghost matches %s%s%s%s", scope, unusedKeys(want, fleet), registered(fleet, now, false), labelsInUse(fleet))
	}
	return distinctSorted(ids), nil
}

// unusedKeys names the selector's keys that no registered Ghost has at all, which tells a
// mistyped key (label:role=db, roles=db) from a value no Ghost carries.
func unusedKeys(want map[string]string, fleet []GhostRecord) string {
	var keys []string
	for k := range want {
		used := false
		for _, r := range fleet {
			if _, ok := r.Labels[k]; ok {
				used = true
				break
			}
		}
		if !used {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	return "; no registered ghost has a label " + capList(keys, ", ") + " (a selector is KEY=VALUE, e.g. role=db)"
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// matchList resolves a comma list of ghost ids and globs.
func matchList(scope string, fleet []GhostRecord, now time.Time) ([]string, error) {
	var ids []string
	for _, part := range strings.Split(scope, ",") {
		part = strings.TrimSpace(part)
		switch {
		case part == "":
			continue
		case strings.ContainsAny(part, "*?["):
			if _, err := path.Match(part, ""); err != nil {
				return nil, scopeError("glob %q is malformed: %v", part, err)
			}
			n := len(ids)
			for _, r := range fleet {
				if ok, _ := path.Match(part, r.GhostID); ok {
					ids = append(ids, r.GhostID)
				}
			}
			if len(ids) == n {
				return nil, scopeError("no registered ghost matches %s%s", part, registered(fleet, now, false))
			}
		default:
			if err := subjects.ValidateGhostID(part); err != nil {
				return nil, scopeError("%s", subjects.Reason(err))
			}
			ids = append(ids, part)
		}
	}
	if len(ids) == 0 {
		return nil, scopeError("names no ghost")
	}
	return distinctSorted(ids), nil
}

// checkHosts refuses the targets that are registered but do not host the seed and
// operation, or whose declared params the args do not satisfy. An unregistered target is
// left to refuse the command itself.
func checkHosts(ids []string, obj bus.Objective, fleet []GhostRecord) error {
	byID := make(map[string]*GhostRecord, len(fleet))
	for i := range fleet {
		byID[fleet[i].GhostID] = &fleet[i]
	}
	var problems []string
	argProblems := map[string][]string{} // a problem with the args → the targets it is on
	var (
		checked    bool
		lastParams []bus.ParamInfo
		lastErr    error
	)
	for _, id := range ids {
		rec, ok := byID[id]
		if !ok {
			continue
		}
		seed, ok := rec.Seed(obj.SeedSelector)
		if !ok {
			problems = append(problems, id+" does not host seed "+obj.SeedSelector)
			continue
		}
		op, ok := seed.Operation(obj.Operation)
		if !ok {
			problems = append(problems, id+": seed "+obj.SeedSelector+" has no operation "+obj.Operation)
			continue
		}
		// The args as the Ghost will check them, against the params it registered: a
		// mistyped value is refused here (exit 2), not after dispatch on every target.
		// A fleet's Ghosts mostly declare the same params: those of the last target
		// checked give their answer again without running its patterns again.
		if !checked || !sameParams(op.Params, lastParams) {
			lastParams, checked = op.Params, true
			lastErr = bus.CheckArgs(obj.SeedSelector, op, obj.Args, func(name string) *bus.ParamPattern {
				for _, p := range op.Params {
					if p.Name == name {
						return bus.SharedPattern(p.Pattern)
					}
				}
				return nil
			})
		}
		if err := lastErr; err != nil {
			msg := bus.AsError(err).Message // names the arg: "args.NAME: …"
			argProblems[msg] = append(argProblems[msg], id)
		}
	}
	for problem, ids := range argProblems {
		problems = append(problems, problem+" (on "+capList(ids, ", ")+")")
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	return bus.FieldError(bus.CodeSemantic, "objective", "%s", capList(problems, "; "))
}

func scopeError(format string, args ...any) error {
	return bus.FieldError(bus.CodeSemantic, "target_scope", format, args...)
}

// registered names the registered Ghosts for an error message, capped; with status, each
// id carries its presence.
func registered(fleet []GhostRecord, now time.Time, status bool) string {
	if len(fleet) == 0 {
		return "; no ghost is registered"
	}
	ids := make([]string, 0, len(fleet))
	for _, r := range fleet {
		if status {
			ids = append(ids, r.GhostID+" ("+r.Status(now)+")")
		} else {
			ids = append(ids, r.GhostID)
		}
	}
	sort.Strings(ids)
	return "; registered: " + capList(ids, ", ")
}

// labelsInUse names the distinct key=value labels of the fleet, capped.
func labelsInUse(fleet []GhostRecord) string {
	seen := map[string]bool{}
	var pairs []string
	for _, r := range fleet {
		for k, v := range r.Labels {
			if p := k + "=" + v; !seen[p] {
				seen[p] = true
				pairs = append(pairs, p)
			}
		}
	}
	if len(pairs) == 0 {
		return "; no registered ghost has labels"
	}
	sort.Strings(pairs)
	return "; labels in use: " + capList(pairs, ", ")
}

// capList joins at most maxListed items and says how many more there are.
func capList(items []string, sep string) string {
	if len(items) <= maxListed {
		return strings.Join(items, sep)
	}
	return strings.Join(items[:maxListed], sep) + fmt.Sprintf(" (+%d more)", len(items)-maxListed)
}

func distinctSorted(ids []string) []string {
	sort.Strings(ids)
	out := ids[:0]
	for i, id := range ids {
		if i == 0 || id != ids[i-1] {
			out = append(out, id)
		}
	}
	return out
}

// sameParams reports whether two declarations of an operation's params are the same, so
// that the same args get the same answer from both.
func sameParams(a, b []bus.ParamInfo) bool {
	return slices.EqualFunc(a, b, func(x, y bus.ParamInfo) bool {
		return x.Name == y.Name && x.Required == y.Required && x.Pattern == y.Pattern &&
			x.MaxBytes == y.MaxBytes && x.NoLeadingDash == y.NoLeadingDash &&
			sameBound(x.Min, y.Min) && sameBound(x.Max, y.Max)
	})
}

func sameBound(a, b *int64) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

package mirage

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds"
)

var testNow = time.UnixMilli(1_800_000_000_000)

// testFleet is a registry of records: edge-01..edge-06 (role db for odd, web for even; site
// lab for 01-03, prod for 04-06) hosting seed.flow; "kvonly" hosting seed.kv only; "gone"
// (offline, role=db, site=lab) and "quiet" (stale, role=cache).
func testFleet() []GhostRecord {
	flow := bus.SeedInfo{ID: "seed.flow", Operations: []bus.OperationInfo{{Name: "status"}, {Name: "echo"}}}
	kv := bus.SeedInfo{ID: "seed.kv", Operations: []bus.OperationInfo{{Name: "get"}}}
	seen := testNow.UnixMilli()
	var out []GhostRecord
	for i := 1; i <= 6; i++ {
		role, site := "db", "lab"
		if i%2 == 0 {
			role = "web"
		}
		if i > 3 {
			site = "prod"
		}
		out = append(out, GhostRecord{GhostID: fmt.Sprintf("edge-%02d", i), Labels: map[string]string{"role": role, "site": site}, Seeds: []bus.SeedInfo{flow}, LastSeenMS: seen})
	}
	return append(out,
		GhostRecord{GhostID: "kvonly", Labels: map[string]string{"role": "kv"}, Seeds: []bus.SeedInfo{kv}, LastSeenMS: seen},
		GhostRecord{GhostID: "gone", Labels: map[string]string{"role": "db", "site": "lab"}, Seeds: []bus.SeedInfo{flow}, LastSeenMS: seen - OfflineAfter.Milliseconds() - 1},
		GhostRecord{GhostID: "quiet", Labels: map[string]string{"role": "cache"}, Seeds: []bus.SeedInfo{flow, kv}, LastSeenMS: seen - StaleAfter.Milliseconds() - 1},
	)
}

func TestResolveTargets(t *testing.T) {
	status := bus.Objective{SeedSelector: "seed.flow", Operation: "status"}
	tests := []struct {
		name   string
		scope  string
		obj    bus.Objective
		fleet  []GhostRecord // nil: testFleet()
		want   []string
		field  string   // on error: the error's field
		msg    []string // on error: parts of the message
		notMsg string   // on error: not in the message
	}{
		{name: "one id", scope: "edge-03", want: []string{"edge-03"}},
		{name: "unregistered id is kept (headless)", scope: "headless-1", want: []string{"headless-1"}},
		{name: "list is sorted and distinct", scope: " edge-05, edge-01 ,edge-05,,headless-1", want: []string{"edge-01", "edge-05", "headless-1"}},
		{name: "glob star", scope: "edge-*", want: []string{"edge-01", "edge-02", "edge-03", "edge-04", "edge-05", "edge-06"}},
		{name: "glob question mark", scope: "edge-?1", want: []string{"edge-01"}},
		{name: "glob class", scope: "edge-0[12]", want: []string{"edge-01", "edge-02"}},
		{name: "glob includes offline ghosts", scope: "g*", want: []string{"gone"}},
		{name: "globs and ids mixed", scope: "edge-0[56],edge-01,headless-1", want: []string{"edge-01", "edge-05", "edge-06", "headless-1"}},
		{name: "one label", scope: "role=db", want: []string{"edge-01", "edge-03", "edge-05", "gone"}},
		{name: "labels all must match", scope: "role=db, site=lab", want: []string{"edge-01", "edge-03", "gone"}},
		{name: "labels repeated equal", scope: "role=web,role=web,site=prod", want: []string{"edge-04", "edge-06"}},
		{name: "all leaves offline out", scope: "all", want: []string{"edge-01", "edge-02", "edge-03", "edge-04", "edge-05", "edge-06", "quiet"},
			fleet: slices.DeleteFunc(testFleet(), func(r GhostRecord) bool { return r.GhostID == "kvonly" })},
		{name: "a ghost named all is a list", scope: "all,", want: []string{"all"}},

		{name: "empty", scope: "  ", field: "target_scope", msg: []string{"names no ghost"}},
		{name: "only commas", scope: ",,", field: "target_scope", msg: []string{"names no ghost"}},
		{name: "invalid id", scope: "edge.1", field: "target_scope", msg: []string{"dot"}},
		{name: "glob no match", scope: "db-*", field: "target_scope", msg: []string{"no registered ghost matches db-*", "registered: edge-01, edge-02"}},
		{name: "one glob of a list no match", scope: "edge-01,db-*", field: "target_scope", msg: []string{"no registered ghost matches db-*"}},
		{name: "malformed glob", scope: "edge-[", field: "target_scope", msg: []string{"malformed"}},
		{name: "label no match", scope: "role=nosuch", field: "target_scope", msg: []string{"no registered ghost matches role=nosuch", "labels in use: role=cache, role=db"}, notMsg: "has a label"},
		{name: "label key nobody has", scope: "label:role=db,site=lab", field: "target_scope", msg: []string{"no registered ghost has a label label:role (a selector is KEY=VALUE"}},
		{name: "labels no joint match", scope: "role=web,site=nowhere", field: "target_scope", msg: []string{"matches role=web,site=nowhere"}},
		{name: "label selector mixed with id", scope: "role=db,edge-01", field: "target_scope", msg: []string{`"edge-01" is not key=value`}},
		{name: "label without key", scope: "=db", field: "target_scope", msg: []string{"has no key"}},
		{name: "label twice differently", scope: "role=db,role=web", field: "target_scope", msg: []string{"given twice"}},
		{name: "all with nothing alive", scope: "all", fleet: testFleet()[7:8], field: "target_scope", msg: []string{"no registered ghost is online", "gone (offline)"}},
		{name: "glob on an empty fleet", scope: "*", fleet: []GhostRecord{}, field: "target_scope", msg: []string{"no ghost is registered"}},
		{name: "label on an empty fleet", scope: "a=b", fleet: []GhostRecord{}, field: "target_scope", msg: []string{"no ghost is registered"}},

		{name: "registered target without the seed", scope: "edge-01,kvonly", field: "objective", msg: []string{"kvonly does not host seed seed.flow"}},
		{name: "registered target without the operation", scope: "role=kv", obj: bus.Objective{SeedSelector: "seed.kv", Operation: "put"}, field: "objective", msg: []string{"kvonly: seed seed.kv has no operation put"}},
		{name: "unregistered target is not checked", scope: "kvonly,headless-1", obj: bus.Objective{SeedSelector: "seed.kv", Operation: "get"}, want: []string{"headless-1", "kvonly"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fleet := tt.fleet
			if fleet == nil {
				fleet = testFleet()
			}
			obj := tt.obj
			if obj.SeedSelector == "" {
				obj = status
			}
			got, err := resolveTargets(tt.scope, obj, fleet, testNow)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("resolveTargets(%q) = %v", tt.scope, err)
				}
				if !slices.Equal(got, tt.want) {
					t.Fatalf("resolveTargets(%q) = %v, want %v", tt.scope, got, tt.want)
				}
				return
			}
			var perr *bus.Error
			if !errors.As(err, &perr) {
				t.Fatalf("resolveTargets(%q) = %v, %v; want a protocol error", tt.scope, got, err)
			}
			if perr.Code != bus.CodeSemantic || perr.Field != tt.field {
				t.Fatalf("error %d on field %q, want %d on %q: %s", perr.Code, perr.Field, bus.CodeSemantic, tt.field, perr.Message)
			}
			for _, part := range tt.msg {
				if !strings.Contains(perr.Message, part) {
					t.Errorf("message %q does not contain %q", perr.Message, part)
				}
			}
			if tt.notMsg != "" && strings.Contains(perr.Message, tt.notMsg) {
				t.Errorf("message %q contains %q", perr.Message, tt.notMsg)
			}
		})
	}
}

// Error messages stay short whatever the fleet size: at most maxListed names.
func TestResolveTargetsCapsMessages(t *testing.T) {
	var fleet []GhostRecord
	for i := range 250 {
		fleet = append(fleet, GhostRecord{GhostID: fmt.Sprintf("n-%03d", i), Labels: map[string]string{"slot": fmt.Sprint(i)}, LastSeenMS: testNow.UnixMilli()})
	}
	for _, scope := range []string{"x-*", "slot=none", "n-*"} {
		_, err := resolveTargets(scope, bus.Objective{SeedSelector: "seed.flow", Operation: "status"}, fleet, testNow)
		perr := bus.AsError(err)
		if err == nil || perr.Code != bus.CodeSemantic {
			t.Fatalf("%s: err %v, want a semantic error", scope, err)
		}
		if !strings.Contains(perr.Message, "(+240 more)") || len(perr.Message) > 600 {
			t.Errorf("%s: message is not capped (%d bytes): %s", scope, len(perr.Message), perr.Message)
		}
	}
}

// Under authentication globs, selectors and "all" see only the enrolled Ghosts of the
// registry (a record left from before --auth does not block them), and an id named outright
// that is not enrolled is refused: no event is believed from it, nor does it register.
func TestResolveUnderAuthSeesEnrolledGhostsOnly(t *testing.T) {
	f := &Fleet{ghosts: map[string]*GhostRecord{}}
	for _, r := range testFleet() {
		f.ghosts[r.GhostID] = &r
	}
	e := newEnrollments(nil, nil)
	for _, id := range []string{"edge-01", "edge-02", "edge-03"} {
		e.byID[id] = Enrollment{GhostID: id, PublicKey: "U" + id}
	}
	m := &Mirage{fleet: f, enrolled: e, cfg: Config{RequireSignedEvents: true, Now: func() time.Time { return testNow }}}
	obj := bus.Objective{SeedSelector: "seed.flow", Operation: "status"}
	for scope, want := range map[string]string{
		"edge-*":  "edge-01,edge-02,edge-03",
		"role=db": "edge-01,edge-03",
		"all":     "edge-01,edge-02,edge-03",
		"edge-02": "edge-02",
	} {
		ids, err := m.resolve(scope, obj)
		if err != nil || strings.Join(ids, ",") != want {
			t.Errorf("%s: %v, %v; want %s", scope, ids, err, want)
		}
	}
	for scope, want := range map[string]string{
		"edge-04":         "not enrolled: edge-04",
		"edge-01,edge-05": "not enrolled: edge-05",
		"site=prod":       "no registered ghost matches",
	} {
		_, err := m.resolve(scope, obj)
		var perr *bus.Error
		if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || !strings.Contains(perr.Message, want) {
			t.Errorf("%s: %v; want a 1300 refusal saying %q", scope, err, want)
		}
	}
}

// A scope of plain ids reads only their records (scopeFleet); what it resolves to, and every
// refusal, must be what resolving against the whole registry gives.
func TestResolveOfPlainIDsAgreesWithTheWholeRegistry(t *testing.T) {
	f := &Fleet{ghosts: map[string]*GhostRecord{}}
	for _, r := range testFleet() {
		f.ghosts[r.GhostID] = &r
	}
	m := &Mirage{fleet: f, cfg: Config{Now: func() time.Time { return testNow }}}
	for _, obj := range []bus.Objective{
		{SeedSelector: "seed.flow", Operation: "status"},
		{SeedSelector: "seed.kv", Operation: "get"},
		{SeedSelector: "seed.flow", Operation: "nosuch"},
	} {
		for _, scope := range []string{"edge-01", " edge-02 ", "edge-01,edge-03", "edge-03,edge-01,edge-03", "kvonly", "quiet", "gone",
			"unregistered", "edge-01,unregistered", "", ",", " , ", "bad id", "edge-01,,edge-02", "all", "edge-0*", "role=db"} {
			got, gotErr := m.resolve(scope, obj)
			want, wantErr := resolveTargets(scope, obj, f.All(), testNow)
			if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || !slices.Equal(got, want) {
				t.Errorf("%s %q: got %v, %v; want %v, %v", obj.SeedSelector+"."+obj.Operation, scope, got, gotErr, want, wantErr)
			}
		}
	}
}

// BenchmarkResolveOneTargetInALargeFleet is the cost of resolving a single-target issue in
// a registry of 10,000 Ghosts.
func BenchmarkResolveOneTargetInALargeFleet(b *testing.B) {
	f := &Fleet{ghosts: map[string]*GhostRecord{}}
	flow := bus.SeedInfo{ID: "seed.flow", Operations: []bus.OperationInfo{{Name: "status"}}}
	for i := range 10000 {
		r := GhostRecord{GhostID: fmt.Sprintf("edge-%05d", i), Seeds: []bus.SeedInfo{flow}, LastSeenMS: testNow.UnixMilli()}
		f.ghosts[r.GhostID] = &r
	}
	m := &Mirage{fleet: f, cfg: Config{Now: func() time.Time { return testNow }}}
	obj := bus.Objective{SeedSelector: "seed.flow", Operation: "status"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.resolve("edge-04242", obj); err != nil {
			b.Fatal(err)
		}
	}
}

// A param a Ghost registers with no_leading_dash refuses a value starting with "-" at issue
// time, before any command leaves.
func TestResolveRefusesALeadingDashWhereTheGhostWould(t *testing.T) {
	zero := int64(0)
	tar := bus.SeedInfo{ID: "node.tar", Operations: []bus.OperationInfo{{Name: "archive", Params: []bus.ParamInfo{
		{Name: "path", Required: true, Pattern: "[[:print:]]{1,64}", NoLeadingDash: true},
		{Name: "label", Pattern: "[[:print:]]{1,64}"},
	}}, {Name: "count", Params: []bus.ParamInfo{
		{Name: "n", Required: true, Pattern: "-?[0-9]{1,18}", Min: &zero, NoLeadingDash: true},
	}}}}
	fleet := []GhostRecord{{GhostID: "edge-t", Seeds: []bus.SeedInfo{tar}, LastSeenMS: testNow.UnixMilli()}}
	obj := func(args map[string]string) bus.Objective {
		return bus.Objective{SeedSelector: "node.tar", Operation: "archive", Args: args}
	}
	_, err := resolveTargets("edge-t", obj(map[string]string{"path": "--use-compress-program=sh"}), fleet, testNow)
	var perr *bus.Error
	if !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || !strings.Contains(perr.Message, `starts with "-"`) || !strings.Contains(perr.Message, "args.path") {
		t.Fatalf("leading dash on path: %v; want a 1300 refusal on args.path", err)
	}
	// A value the param's own limits refuse is told so first.
	_, err = resolveTargets("edge-t", bus.Objective{SeedSelector: "node.tar", Operation: "count", Args: map[string]string{"n": "-1"}}, fleet, testNow)
	if !errors.As(err, &perr) || !strings.Contains(perr.Message, "below the minimum 0") {
		t.Errorf("n=-1 with min 0: %v; want the minimum named", err)
	}
	for _, args := range []map[string]string{{"path": "etc/hosts"}, {"path": "a-b", "label": "-x"}} {
		if _, err := resolveTargets("edge-t", obj(args), fleet, testNow); err != nil {
			t.Errorf("%v: %v; want it accepted", args, err)
		}
	}
}

// Ghosts of one fleet that declare the same operation with different params are each
// checked against their own declaration, whatever the order they come in: the answer
// reused from the previous target is only reused for the same params.
func TestResolveChecksEachGhostAgainstItsOwnParams(t *testing.T) {
	one, ten := int64(1), int64(10)
	decl := func(params ...bus.ParamInfo) []bus.SeedInfo {
		return []bus.SeedInfo{{ID: "seed.x", Operations: []bus.OperationInfo{{Name: "run", Params: params}}}}
	}
	letters := bus.ParamInfo{Name: "v", Pattern: "[a-z0-9]{1,8}"}
	digits := bus.ParamInfo{Name: "v", Pattern: "[0-9]{1,8}"}
	bounded := bus.ParamInfo{Name: "v", Pattern: "[0-9]{1,8}", Min: &one, Max: &ten}
	bounded2 := bounded
	bounded2.Max = new(int64(99))
	seen := testNow.UnixMilli()
	fleet := []GhostRecord{
		{GhostID: "a1", Seeds: decl(letters), LastSeenMS: seen},
		{GhostID: "a2", Seeds: decl(digits), LastSeenMS: seen},
		{GhostID: "a3", Seeds: decl(letters), LastSeenMS: seen},
		{GhostID: "a4", Seeds: decl(bounded), LastSeenMS: seen},
		{GhostID: "a5", Seeds: decl(bounded2), LastSeenMS: seen},
		{GhostID: "a6", Seeds: decl(bounded), LastSeenMS: seen},
	}
	cases := []struct {
		v    string
		want []string // targets refused, each in its problem
	}{
		{"abc", []string{"a2", "a4", "a5", "a6"}},
		{"42", []string{"a4", "a6"}},
		{"7", nil},
	}
	for _, c := range cases {
		_, err := resolveTargets("a*", bus.Objective{SeedSelector: "seed.x", Operation: "run", Args: map[string]string{"v": c.v}}, fleet, testNow)
		if len(c.want) == 0 {
			if err != nil {
				t.Errorf("v=%s: %v; want it accepted", c.v, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("v=%s: accepted; want %v refused", c.v, c.want)
			continue
		}
		msg := err.Error()
		for _, id := range []string{"a1", "a2", "a3", "a4", "a5", "a6"} {
			if refused := strings.Contains(msg, id); refused != slices.Contains(c.want, id) {
				t.Errorf("v=%s: %s named in the refusal: %v; want refused %v: %s", c.v, id, refused, c.want, msg)
			}
		}
	}
}

// BenchmarkResolveLabelInALargeFleet is the cost of resolving a label selector that
// matches 10,000 Ghosts declaring seed.flow, with its args checked on each.
func BenchmarkResolveLabelInALargeFleet(b *testing.B) {
	reg, err := seeds.Registry([]string{seeds.Flow}, "")
	if err != nil {
		b.Fatal(err)
	}
	f := &Fleet{ghosts: map[string]*GhostRecord{}}
	for i := range 10000 {
		r := GhostRecord{GhostID: fmt.Sprintf("edge-%05d", i), Seeds: reg.Infos(), Labels: map[string]string{"bench": "x"}, LastSeenMS: testNow.UnixMilli()}
		f.ghosts[r.GhostID] = &r
	}
	m := &Mirage{fleet: f, cfg: Config{Now: func() time.Time { return testNow }}}
	obj := bus.Objective{SeedSelector: seeds.Flow, Operation: "echo", Args: map[string]string{"message": "hello from the benchmark"}}
	b.ReportAllocs()
	for b.Loop() {
		if ids, err := m.resolve("bench=x", obj); err != nil || len(ids) != 10000 {
			b.Fatalf("%d targets, %v", len(ids), err)
		}
	}
}

// The answer to an accepted issue names the targets not to expect soon: ids nobody
// registered as, offline Ghosts, and stale ones with how long they have been silent,
// each at most once; a Ghost that said it stops is offline at once.
func TestAbsentNamesUnregisteredOfflineAndStaleTargets(t *testing.T) {
	f := &Fleet{ghosts: map[string]*GhostRecord{}}
	for _, r := range testFleet() {
		f.ghosts[r.GhostID] = &r
	}
	m := &Mirage{fleet: f, cfg: Config{Now: func() time.Time { return testNow }}}
	unreg, off, stale := m.absent([]string{"edge-01", "gone", "headless-1", "quiet", "headless-1", "gone", "quiet", "typo"})
	if !slices.Equal(unreg, []string{"headless-1", "typo"}) || !slices.Equal(off, []string{"gone"}) {
		t.Fatalf("absent = %v, %v; want [headless-1 typo], [gone]", unreg, off)
	}
	if want := []bus.StaleTarget{{GhostID: "quiet", SilentMS: StaleAfter.Milliseconds() + 1}}; !slices.Equal(stale, want) {
		t.Fatalf("stale = %v, want %v", stale, want)
	}
	left := *f.ghosts["edge-01"]
	left.LeftMS = left.LastSeenMS
	f.ghosts["edge-01"] = &left
	if _, off, _ = m.absent([]string{"edge-01"}); !slices.Equal(off, []string{"edge-01"}) {
		t.Fatalf("a Ghost that said it stops: offline = %v, want [edge-01]", off)
	}
	var many []string
	for i := range 25 {
		many = append(many, fmt.Sprintf("nobody-%02d", i))
	}
	if unreg, off, _ = m.absent(many); len(unreg) != maxListed || unreg[maxListed-1] != "nobody-09" || off != nil {
		t.Fatalf("absent of 25 unregistered = %v, %v; want the first %d", unreg, off, maxListed)
	}
}

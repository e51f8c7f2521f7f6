package mirage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// newTestIntent follows an intent over the given targets.
func newTestIntent(targets ...string) *liveIntent {
	is := bus.Issue{Header: bus.NewHeader(bus.TypeIssue, "", time.Now()), IntentID: "int_test", Actor: "test", TargetScope: strings.Join(targets, ","),
		Objective: bus.Objective{SeedSelector: "seed.flow", Operation: "status", Args: map[string]string{}}, TimeoutMS: 5000}
	li := newLiveIntent(IntentRecord{IntentID: is.IntentID, Issue: is, Targets: targets, Phase: bus.PhasePending,
		Steps: []StepRecord{{Objective: is.Objective, Targets: targets}}, MaxErrors: -1})
	// Every target dispatched, as Mirage does at accept without rollout limits.
	li.started, li.next, li.inflight = 0, len(targets), len(targets)
	return li
}

// event returns a terminal event of target i of li, from ghost, with a per-(ghost, command)
// event_id as a Ghost derives it. code 0 is a success.
func event(li *liveIntent, i int, ghost string, code bus.Code) *bus.Event {
	cmd := CommandID(li.rec.IntentID, i)
	ev := &bus.Event{
		Header:  bus.NewHeader(bus.TypeEvent, li.rec.Issue.TraceID, time.Now()),
		EventID: bus.EventID(ghost, cmd), CommandID: cmd, IntentID: li.rec.IntentID, ExecutionID: "exe_" + cmd,
		GhostID: ghost, SeedID: "seed.flow", Operation: "status", Outcome: bus.OutcomeSuccess,
		Result:    bus.Result{Status: "ok", Stdout: "seed.flow ready"},
		StartedMS: time.Now().UnixMilli(), FinishedMS: time.Now().UnixMilli(),
	}
	if code != 0 {
		ev.Outcome, ev.Error = bus.OutcomeError, bus.Errorf(code, "failed with %d", code)
		ev.Result = bus.Result{Status: "failed", ExitCode: 1, Stderr: "it broke"}
	}
	return ev
}

func mustApply(t *testing.T, li *liveIntent, ev *bus.Event, want verdict) string {
	t.Helper()
	v, reason := li.apply(ev)
	if v != want {
		t.Fatalf("apply %s from %s: verdict %d (%s), want %d", ev.CommandID, ev.GhostID, v, reason, want)
	}
	return reason
}

func TestApplyCountsOncePerEventID(t *testing.T) {
	li := newTestIntent("g1", "g2", "g3")
	ev := event(li, 0, "g1", 0)
	mustApply(t, li, ev, verdictCounted)
	want := bus.Counts{Targets: 3, Success: 1, Pending: 2}
	if c := li.counts(); c != want {
		t.Fatalf("counts %+v, want %+v", c, want)
	}
	if r := li.results[0]; r.EventID != ev.EventID || r.ExecutionID != ev.ExecutionID || r.Stdout != "seed.flow ready" || r.Outcome != bus.OutcomeSuccess || r.ExitCode != 0 {
		t.Fatalf("result %+v does not carry the event", r)
	}

	// The same event again (JetStream redelivery, Ghost re-send): acknowledged, not counted.
	li.dirty = false
	mustApply(t, li, ev, verdictDuplicate)
	if c := li.counts(); c != want || li.done() || li.dirty {
		t.Fatalf("after a duplicate: counts %+v done %v dirty %v, want %+v false false", c, li.done(), li.dirty, want)
	}

	// A different event for a command that already has its outcome.
	other := event(li, 0, "g1", bus.CodeRuntime)
	other.EventID = "evt_other"
	if reason := mustApply(t, li, other, verdictRejected); !strings.Contains(reason, "already") {
		t.Fatalf("reason %q", reason)
	}
	if li.results[0].EventID != ev.EventID || li.results[0].Outcome != bus.OutcomeSuccess {
		t.Fatalf("a rejected event changed the result: %+v", li.results[0])
	}

	// An event from another ghost for a pending command.
	if reason := mustApply(t, li, event(li, 1, "g3", 0), verdictRejected); !strings.Contains(reason, "g2") || !strings.Contains(reason, "g3") {
		t.Fatalf("reason %q does not name both ghosts", reason)
	}
	if li.results[1].Outcome != bus.OutcomePending {
		t.Fatalf("an impostor's event changed the result: %+v", li.results[1])
	}

	// A command_id that is not part of the intent.
	stray := event(li, 0, "g1", 0)
	stray.CommandID = "cmd_elsewhere_0"
	if reason := mustApply(t, li, stray, verdictRejected); !strings.Contains(reason, li.rec.IntentID) {
		t.Fatalf("reason %q does not name the intent", reason)
	}
	beyond := event(li, 3, "g1", 0) // index past the last target
	mustApply(t, li, beyond, verdictRejected)
	if c := li.counts(); c != want {
		t.Fatalf("rejections changed counts: %+v, want %+v", c, want)
	}
}

func TestExpireMarksPendingAsTimeout(t *testing.T) {
	li := newTestIntent("g1", "g2", "g3")
	mustApply(t, li, event(li, 0, "g1", 0), verdictCounted)
	if li.done() {
		t.Fatal("done with two targets pending")
	}
	li.expire()
	if !li.done() || li.phase() != bus.PhaseFailed {
		t.Fatalf("after expire: done %v phase %s, want true failed", li.done(), li.phase())
	}
	if c, want := li.counts(), (bus.Counts{Targets: 3, Success: 1, Timeout: 2}); c != want {
		t.Fatalf("counts %+v, want %+v", c, want)
	}
	if li.results[0].Outcome != bus.OutcomeSuccess || li.results[0].Error != nil {
		t.Fatalf("expire changed a terminal result: %+v", li.results[0])
	}
	for _, r := range li.results[1:] {
		if r.Outcome != bus.OutcomeTimeout || r.Error == nil || r.Error.Code != bus.CodeNoResponse || r.Error.Class != bus.ClassTimeout {
			t.Fatalf("expired result %+v, want timeout with error 1900", r)
		}
		if !strings.Contains(r.Error.Message, r.GhostID) {
			t.Fatalf("error %q does not name the ghost", r.Error.Message)
		}
	}
	// A late event after the deadline does not change the outcome.
	mustApply(t, li, event(li, 1, "g2", 0), verdictRejected)
	if li.counts().Timeout != 2 {
		t.Fatalf("a late event was counted: %+v", li.counts())
	}
}

func TestPhaseTransitions(t *testing.T) {
	tests := []struct {
		name   string
		codes  []bus.Code // per target, in order applied; 0 success
		phases []string   // phase after each apply
		final  bus.Counts
	}{
		{"all succeed", []bus.Code{0, 0}, []string{bus.PhaseInProgress, bus.PhaseSatisfied}, bus.Counts{Targets: 2, Success: 2}},
		{"one error", []bus.Code{0, bus.CodeRuntime}, []string{bus.PhaseInProgress, bus.PhaseFailed}, bus.Counts{Targets: 2, Success: 1, Error: 1}},
		{"error first", []bus.Code{bus.CodeSemantic, 0}, []string{bus.PhaseInProgress, bus.PhaseFailed}, bus.Counts{Targets: 2, Success: 1, Error: 1}},
		{"expired code", []bus.Code{bus.CodeExpired, 0}, []string{bus.PhaseInProgress, bus.PhaseFailed}, bus.Counts{Targets: 2, Success: 1, Expired: 1}},
		{"exec timeout is an error", []bus.Code{bus.CodeExecTimeout}, []string{bus.PhaseFailed}, bus.Counts{Targets: 1, Error: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			targets := make([]string, len(tc.codes))
			for i := range targets {
				targets[i] = fmt.Sprintf("g%d", i)
			}
			li := newTestIntent(targets...)
			if p := li.phase(); p != bus.PhasePending {
				t.Fatalf("initial phase %s, want pending", p)
			}
			if r := li.report(time.Now()); r.CompletionState != "open" || r.Phase != bus.PhasePending {
				t.Fatalf("initial report %s %s", r.Phase, r.CompletionState)
			}
			for i, code := range tc.codes {
				mustApply(t, li, event(li, i, targets[i], code), verdictCounted)
				if p := li.phase(); p != tc.phases[i] {
					t.Fatalf("phase after event %d: %s, want %s", i, p, tc.phases[i])
				}
			}
			if c := li.counts(); c != tc.final {
				t.Fatalf("counts %+v, want %+v", c, tc.final)
			}
			r := li.report(time.Now())
			if err := r.Validate(); err != nil {
				t.Fatalf("report does not validate: %v", err)
			}
			last := tc.phases[len(tc.phases)-1]
			if r.Phase != last || r.CompletionState != "complete" || r.Counts != tc.final || r.Summary != Summary(last, tc.final) || r.IntentID != li.rec.IntentID || r.TraceID != li.rec.Issue.TraceID {
				t.Fatalf("report %+v", r)
			}
		})
	}
}

// 10,000 targets each with 64 KiB of output: the report still fits in one envelope, its
// counts stay exact, and the results an operator looks for come first. A cheaper case
// runs first: when it fails, the expensive one is not worth its memory.
func TestReportFitsLargeFleet(t *testing.T) {
	if !t.Run("5KiB outputs", func(t *testing.T) { checkReportFits(t, 10_000, 5<<10) }) {
		t.Skip("64 KiB outputs not tried: the 5 KiB case already fails")
	}
	t.Run("64KiB outputs", func(t *testing.T) { checkReportFits(t, 10_000, bus.MaxOutput) })
}

// checkReportFits builds an intent of n targets whose results carry outSize bytes of
// output each: one target in a thousand fails, one in a thousand times out.
func checkReportFits(t *testing.T, n, outSize int) {
	targets := make([]string, n)
	for i := range targets {
		targets[i] = fmt.Sprintf("ghost-%05d", i)
	}
	li := newTestIntent(targets...)
	out := strings.Repeat("o", outSize)
	bad := map[string]bool{} // command ids of non-success results
	for i := range n {
		switch i % 1000 {
		case 7:
			ev := event(li, i, targets[i], bus.CodeRuntime)
			ev.Result.Stderr = out
			mustApply(t, li, ev, verdictCounted)
			bad[ev.CommandID] = true
		case 500:
			bad[CommandID(li.rec.IntentID, i)] = true // left pending, then timed out
		default:
			ev := event(li, i, targets[i], 0)
			ev.Result.Stdout = out
			mustApply(t, li, ev, verdictCounted)
		}
	}
	li.expire()
	r := li.report(time.Now())

	data, err := bus.Encode(r)
	if err != nil {
		t.Fatalf("encode report: %v", err)
	}
	if len(data) > bus.MaxEnvelope {
		t.Fatalf("report is %d bytes, over %d", len(data), bus.MaxEnvelope)
	}
	var back bus.Report
	if err := bus.Decode(data, &back); err != nil {
		t.Fatalf("report does not decode: %v", err)
	}
	nbad := n / 1000
	if want := (bus.Counts{Targets: n, Success: n - 2*nbad, Error: nbad, Timeout: nbad}); r.Counts != want || back.Counts != want {
		t.Fatalf("counts %+v (decoded %+v), want %+v", r.Counts, back.Counts, want)
	}
	if r.ResultsOmitted+len(r.Results) != n {
		t.Fatalf("%d results + %d omitted, want %d", len(r.Results), r.ResultsOmitted, n)
	}
	if len(r.Results) < len(bad) {
		t.Fatalf("only %d results kept, fewer than the %d non-success ones", len(r.Results), len(bad))
	}
	if r.ResultsOmitted > 0 && len(data) < bus.MaxEnvelope*3/4 {
		t.Fatalf("report is %d bytes with %d results left out: it could have kept more", len(data), r.ResultsOmitted)
	}
	for i, res := range r.Results[:len(bad)] {
		if !bad[res.CommandID] || res.Outcome == bus.OutcomeSuccess {
			t.Fatalf("result %d is %s %s; the non-success results must come first", i, res.CommandID, res.Outcome)
		}
	}
	if want := fmt.Sprintf("failed: %d/%d succeeded, %d error, %d timeout", n-2*nbad, n, nbad, nbad); r.Phase != bus.PhaseFailed || r.Summary != want {
		t.Fatalf("phase %s summary %q, want failed %q", r.Phase, r.Summary, want)
	}
	// The live results keep their full output: only the report is shrunk.
	if len(li.results[0].Stdout) != outSize {
		t.Fatalf("fitting the report cut the live result to %d bytes", len(li.results[0].Stdout))
	}
}

// A report that already fits is left alone.
func TestFitReportKeepsSmallReport(t *testing.T) {
	li := newTestIntent("g1", "g2")
	mustApply(t, li, event(li, 0, "g1", 0), verdictCounted)
	r := li.report(time.Now())
	if len(r.Results) != 2 || r.ResultsOmitted != 0 || r.Results[0].Stdout != "seed.flow ready" || r.Results[0].Truncated {
		t.Fatalf("small report changed: %+v", r)
	}
}

func TestSummary(t *testing.T) {
	tests := []struct {
		phase string
		c     bus.Counts
		want  string
	}{
		{bus.PhaseSatisfied, bus.Counts{Targets: 3, Success: 3}, "satisfied: 3/3 succeeded"},
		{bus.PhasePending, bus.Counts{Targets: 2, Pending: 2}, "pending: 0/2 succeeded, 2 pending"},
		{bus.PhaseFailed, bus.Counts{Targets: 7, Success: 1, Error: 2, Timeout: 1, Expired: 1, Skipped: 1, Pending: 1},
			"failed: 1/7 succeeded, 2 error, 1 timeout, 1 expired, 1 skipped, 1 pending"},
	}
	for _, tc := range tests {
		if got := Summary(tc.phase, tc.c); got != tc.want {
			t.Errorf("Summary(%s, %+v) = %q, want %q", tc.phase, tc.c, got, tc.want)
		}
		if strings.Contains(Summary(tc.phase, tc.c), "\n") {
			t.Errorf("summary is not one line")
		}
	}
}

func TestCommandID(t *testing.T) {
	if got := CommandID("int_abc", 3); got != "cmd_int_abc_3" {
		t.Fatalf("CommandID(int_abc, 3) = %q", got)
	}
	// Distinct intents never share command ids, whatever their spelling.
	if CommandID("abc", 0) == CommandID("int_abc", 0) {
		t.Fatal("intents abc and int_abc share a command id")
	}
	for _, intent := range []string{subjects.NewID(subjects.PrefixIntent), "user-chosen_ID", strings.Repeat("x", 96)} {
		seen := map[string]int{}
		for i := range 2000 {
			id := CommandID(intent, i)
			if err := subjects.ValidateToken("command_id", id); err != nil {
				t.Fatalf("CommandID(%q, %d) = %q is not token safe: %v", intent, i, id, err)
			}
			if j, dup := seen[id]; dup {
				t.Fatalf("CommandID(%q) is %q for both %d and %d", intent, id, j, i)
			}
			seen[id] = i
		}
		if CommandID(intent, 5) != CommandID(intent, 5) {
			t.Fatal("CommandID is not deterministic")
		}
	}
}

func TestGhostRecordStatus(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	tests := []struct {
		age  time.Duration
		want string
	}{
		{0, StatusOnline},
		{14 * time.Second, StatusOnline},
		{StaleAfter, StatusStale},
		{20 * time.Second, StatusStale},
		{OfflineAfter, StatusOffline},
		{90 * time.Second, StatusOffline},
	}
	for _, tc := range tests {
		r := GhostRecord{GhostID: "g1", LastSeenMS: now.Add(-tc.age).UnixMilli()}
		if got := r.Status(now); got != tc.want {
			t.Errorf("Status after %s = %s, want %s", tc.age, got, tc.want)
		}
	}
}

// The shortcut that skips measuring a small report is conservative: a report it lets
// through fits, even with texts that escape badly and the longest ids.
func TestFitReportShortcutFits(t *testing.T) {
	long := strings.Repeat("x", 96)
	for _, size := range []int{1, 1 << 10, 7 << 10} {
		r := &bus.Report{IntentID: long, Phase: bus.PhaseFailed, Summary: strings.Repeat("s", 200)}
		for i := range 63 {
			r.Results = append(r.Results, bus.TargetResult{Step: i, GhostID: strings.Repeat("g", 64), CommandID: long + "_999999", ExecutionID: long, EventID: long,
				Outcome: bus.OutcomeError, ExitCode: -1, Stdout: strings.Repeat("\x01", size), Stderr: strings.Repeat("\u2028", size/3), Truncated: true,
				Error: &bus.Error{Code: bus.CodeRuntime, Class: "runtime", Message: strings.Repeat("\x02", size), Field: long}})
		}
		fitReport(r)
		data, err := bus.Encode(r)
		if err != nil {
			t.Fatalf("outputs of %d bytes: %v", size, err)
		}
		if len(data) > bus.MaxEnvelope {
			t.Fatalf("outputs of %d bytes: report is %d bytes, over %d", size, len(data), bus.MaxEnvelope)
		}
	}
}

// encodeReflect is what encoding/json writes for v, HTML escaping off.
func encodeReflect(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// The intent record is written without reflection, byte for byte as encoding/json writes
// it, and reads back the same.
func FuzzIntentRecordEncodesAsEncodingJSON(f *testing.F) {
	f.Add("int_1", "edge-1", "seed.flow", "q\"\\ <&> \u2028 \x01 é \xff", int64(0), true)
	f.Add("", "", "", "", int64(-7), false)
	f.Fuzz(func(t *testing.T, id, target, seed, text string, n int64, flag bool) {
		rec := &IntentRecord{IntentID: id, Issue: bus.Issue{Header: bus.Header{Type: bus.TypeIssue, V: 1, MessageID: text, TimestampMS: n},
			IntentID: id, Actor: text, TargetScope: target, Objective: bus.Objective{SeedSelector: seed, Operation: text, Args: map[string]string{text: id, "a": text}},
			TimeoutMS: n, MaxErrors: text}, Targets: []string{target, text}, MaxErrors: int(n), CreatedMS: n, DeadlineMS: -n, DeliverByMS: n,
			Phase: text, Counts: bus.Counts{Targets: int(n), Expired: int(n)}}
		if flag {
			rec.Issue.Plan = []bus.PlanStep{{Name: text, SeedSelector: seed, Blocking: true}}
			rec.Steps = []StepRecord{{Name: text, Objective: rec.Issue.Objective, Targets: []string{target}, Blocking: true, First: int(n)},
				{Objective: bus.Objective{Operation: text}, Targets: []string{}}}
			rec.MaxConcurrency, rec.Summary, rec.FinishedMS = int(n), text, n
		}
		got := rec.appendJSON(nil)
		if want := encodeReflect(t, rec); !bytes.Equal(got, want) {
			t.Fatalf("\nappended      %q\nencoding/json %q", got, want)
		}
		var back, want IntentRecord
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(encodeReflect(t, rec), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("read back %+v, want %+v", back, want)
		}
	})
}

// An intent recovered after a restart whose blocking step had already ended without
// success skips the rest at once, as the live Mirage did: it does not wait for that
// step's lock, which another recovered intent may hold, until its deadline.
func TestRecoveredFailedBlockingStepTakesNoLock(t *testing.T) {
	rec := adoptRec("int_failedstep", "g1", time.Now())
	obj := rec.Issue.Objective
	rec.Targets = []string{"g1", "g1"}
	rec.Steps = []StepRecord{
		{Objective: obj, Targets: []string{"g1"}, Blocking: true, First: 0},
		{Objective: obj, Targets: []string{"g1"}, First: 1},
	}
	m := &Mirage{cfg: Config{Now: time.Now}, locks: locks{}, lingers: newLingers(), log: slog.New(slog.DiscardHandler)}
	li := newLiveIntent(rec)
	if v, reason := li.apply(event(li, 0, "g1", bus.CodeRuntime)); v != verdictCounted { // replayed: step 1 failed
		t.Fatal(reason)
	}
	m.locks[lockKey("g1", obj.SeedSelector)] = "int_other" // taken by another recovered intent
	li.resume()
	if units, _ := m.advance(li); len(units) != 0 || !li.done() {
		t.Fatalf("after recovery: units %v, done %v, waiting %q; want step 2 skipped at once", units, li.done(), li.waiting)
	}
	if r := li.results[1]; r.Outcome != bus.OutcomeSkipped || !strings.Contains(r.Error.Message, "plan step 1 did not succeed") {
		t.Fatalf("step 2's unit: %+v, want skipped because step 1 did not succeed", r)
	}
}

package mirage

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// IntentRecord is an intent's desired state, stored in KV edge_intents (key = intent_id)
// once, when it is accepted. Observed state (events) lives in EDGE_EVT and the terminal
// state in the terminal report, so the record is written once whatever the fleet size.
type IntentRecord struct {
	IntentID string    `json:"intent_id"`
	Issue    bus.Issue `json:"issue"`
	// Targets lists the ghost id of every unit (step × target), in unit order: unit i's
	// command is CommandID(intent_id, i).
	Targets []string     `json:"targets"`
	Steps   []StepRecord `json:"steps"`
	// MaxConcurrency bounds the units running at once (0: no bound); MaxErrors stops the
	// rollout once more units than it failed (-1: no limit).
	MaxConcurrency int        `json:"max_concurrency,omitempty"`
	MaxErrors      int        `json:"max_errors"`
	CreatedMS      int64      `json:"created_ms"`
	DeadlineMS     int64      `json:"deadline_ms"`
	DeliverByMS    int64      `json:"deliver_by_ms"`
	Phase          string     `json:"phase"`
	Counts         bus.Counts `json:"counts"`
	Summary        string     `json:"summary,omitempty"`
	FinishedMS     int64      `json:"finished_ms,omitempty"`
}

// StepRecord is one step of an intent: an objective on resolved targets. A plain intent
// has one step.
type StepRecord struct {
	Name      string        `json:"name,omitempty"`
	Objective bus.Objective `json:"objective"`
	Targets   []string      `json:"targets"`
	Blocking  bool          `json:"blocking,omitempty"`
	// First is the unit index of the step's first target.
	First int `json:"first"`
}

// appendJSON appends the record's JSON, as encoding/json writes it with HTML escaping
// off, without reflection: one is written for every intent.
func (r *IntentRecord) appendJSON(dst []byte) []byte {
	dst = bus.AppendString(bus.AppendKey(append(dst, '{'), true, "intent_id"), r.IntentID)
	dst = bus.AppendIssue(bus.AppendKey(dst, false, "issue"), &r.Issue)
	dst = bus.AppendStrings(bus.AppendKey(dst, false, "targets"), r.Targets)
	dst = bus.AppendKey(dst, false, "steps")
	if r.Steps == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i := range r.Steps {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = r.Steps[i].appendJSON(dst)
		}
		dst = append(dst, ']')
	}
	if r.MaxConcurrency != 0 {
		dst = strconv.AppendInt(bus.AppendKey(dst, false, "max_concurrency"), int64(r.MaxConcurrency), 10)
	}
	dst = strconv.AppendInt(bus.AppendKey(dst, false, "max_errors"), int64(r.MaxErrors), 10)
	dst = strconv.AppendInt(bus.AppendKey(dst, false, "created_ms"), r.CreatedMS, 10)
	dst = strconv.AppendInt(bus.AppendKey(dst, false, "deadline_ms"), r.DeadlineMS, 10)
	dst = strconv.AppendInt(bus.AppendKey(dst, false, "deliver_by_ms"), r.DeliverByMS, 10)
	dst = bus.AppendString(bus.AppendKey(dst, false, "phase"), r.Phase)
	dst = bus.AppendCounts(bus.AppendKey(dst, false, "counts"), &r.Counts)
	if r.Summary != "" {
		dst = bus.AppendString(bus.AppendKey(dst, false, "summary"), r.Summary)
	}
	if r.FinishedMS != 0 {
		dst = strconv.AppendInt(bus.AppendKey(dst, false, "finished_ms"), r.FinishedMS, 10)
	}
	return append(dst, '}')
}

func (s *StepRecord) appendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	if s.Name != "" {
		dst = bus.AppendString(bus.AppendKey(dst, true, "name"), s.Name)
	}
	dst = bus.AppendObjective(bus.AppendKey(dst, s.Name == "", "objective"), &s.Objective)
	dst = bus.AppendStrings(bus.AppendKey(dst, false, "targets"), s.Targets)
	if s.Blocking {
		dst = append(bus.AppendKey(dst, false, "blocking"), "true"...)
	}
	dst = strconv.AppendInt(bus.AppendKey(dst, false, "first"), int64(s.First), 10)
	return append(dst, '}')
}

// CommandID is the command_id of unit i of an intent: derived, so that a re-dispatch
// after a restart sends the very same command_id.
func CommandID(intentID string, i int) string {
	return "cmd_" + intentID + "_" + strconv.Itoa(i)
}

// resultGrace is how long past its timeout Mirage waits for a Ghost's own timeout event
// before it reports the target as timeout (no response): an event stored in EDGE_EVT
// later than the deadline + resultGrace does not count (cutoff, expiry.go).
const resultGrace = 500 * time.Millisecond

// liveIntent is an intent Mirage is following: its record, observed results, and where
// its rollout stands.
type liveIntent struct {
	rec      IntentRecord
	results  []bus.TargetResult
	index    map[string]int // command_id → unit
	stepOf   []int          // unit → step
	terminal int            // units with a terminal outcome
	dirty    bool           // results changed since the last report
	timer    *time.Timer
	// lost counts the in_progress reports the store refused in a row; until quietUntil
	// the intent's next report waits (retryReport), so an outage is not asked every round.
	lost       int
	quietUntil time.Time

	// Rollout: units below next have been dispatched (or skipped); inflight of them are
	// pending; errs counts failed dispatched units.
	cur, started   int // the current step, and the last step started (-1: none)
	next, inflight int
	errs           int
	stepTerminal   []int
	stepSuccess    []int
	waiting        string   // why the current step cannot start (a lock), for reports
	locks          []string // locks held for the current step
	lockStep       int      // the step locks were taken for
	// adopting: taken up while running (takeUp) and not rebuilt yet; its rollout waits.
	adopting bool
	// refusals holds, by unit, a Ghost's refusal for security (1800) of a command received
	// under the unit's command_id: reported at the deadline if no real event came.
	refusals map[int]*bus.Error
	// sentRefusals holds, by unit, the event_ids of a refusal for security of the exact
	// commands Mirage sent (noteSent; after a restart, those EDGE_CMD holds signed by its
	// key, replaySent): such a refusal counts at once.
	sentRefusals map[int][]string
	// sent marks the units whose command EDGE_CMD held when Mirage recovered the intent
	// after a restart (nil otherwise): they were running, so they are followed to their
	// end, never skipped as not started.
	sent []bool
	// endedLate marks the units Mirage timed out whose command's terminal event came
	// since: the command no longer runs, so their lock does not linger (releaseLocks).
	endedLate map[int]bool
	// replayedAt is when EDGE_EVT stored the last event a replay (recover, adopt) read
	// for this intent: every event stored by then has been applied.
	replayedAt time.Time
	// unstored holds, by unit, why EDGE_CMD has not confirmed storing its command (the
	// last failure), until it does: a unit that times out so says its command never got
	// stored, so a Ghost that was offline never got it (expire).
	unstored map[int]string
}

func (li *liveIntent) wasSent(u int) bool { return li.sent != nil && li.sent[u] }

// noteSentRefusal notes id as the event_id of a Ghost's refusal for security of bytes
// Mirage sent for unit u (noteSent, or replaySent after a restart).
func (li *liveIntent) noteSentRefusal(u int, id string) {
	if li.sentRefusals == nil {
		li.sentRefusals = map[int][]string{}
	}
	// Re-sends after store failures or restarts: a few suffice.
	if len(li.sentRefusals[u]) < 8 && !slices.Contains(li.sentRefusals[u], id) {
		li.sentRefusals[u] = append(li.sentRefusals[u], id)
	}
}

// startedStep reports whether the current step of a recovered intent had begun before
// the restart: one of its units has a result or was sent.
func (li *liveIntent) startedStep() bool {
	if li.cur >= len(li.rec.Steps) {
		return false
	}
	st := li.rec.Steps[li.cur]
	for u := st.First; u < st.First+len(st.Targets); u++ {
		if li.wasSent(u) || li.results[u].Outcome != bus.OutcomePending {
			return true
		}
	}
	return false
}

func newLiveIntent(rec IntentRecord) *liveIntent {
	if len(rec.Steps) == 0 { // a record written before intents had steps
		rec.Steps = []StepRecord{{Objective: rec.Issue.Objective, Targets: rec.Targets}}
	}
	n := len(rec.Targets)
	li := &liveIntent{rec: rec, results: make([]bus.TargetResult, n), index: make(map[string]int, n), stepOf: make([]int, n),
		started: -1, stepTerminal: make([]int, len(rec.Steps)), stepSuccess: make([]int, len(rec.Steps))}
	for s, st := range rec.Steps {
		for j := range st.Targets {
			li.stepOf[st.First+j] = s
		}
	}
	for i, g := range rec.Targets {
		id := CommandID(rec.IntentID, i)
		li.index[id] = i
		li.results[i] = bus.TargetResult{Step: li.stepOf[i], GhostID: g, CommandID: id, Outcome: bus.OutcomePending, ExitCode: -1}
	}
	return li
}

// Verdicts of applying an event.
type verdict int

const (
	verdictCounted   verdict = iota // a new terminal result
	verdictDuplicate                // the same event again: acknowledged, not counted
	verdictRejected                 // not an event this intent expects
)

// noteEnded notes that unit i's command has ended when ev, too late to count, is its
// terminal event: if Mirage times the unit out (or has), its lock need not linger.
func (li *liveIntent) noteEnded(i int, ev *bus.Event) {
	r := li.results[i]
	if r.GhostID != ev.GhostID || ev.EventID != bus.EventID(ev.GhostID, ev.CommandID) {
		return
	}
	if r.Outcome != bus.OutcomeTimeout && r.Outcome != bus.OutcomePending {
		return
	}
	if li.endedLate == nil {
		li.endedLate = map[int]bool{}
	}
	li.endedLate[i] = true
}

// timedOut reports whether ev is for a unit of li, from its Ghost, that Mirage timed out
// (expire): between expire and finish an event for it is answered as for an ended
// intent (1900), not as a semantic error.
func (li *liveIntent) timedOut(ev *bus.Event) bool {
	i, ok := li.index[ev.CommandID]
	return ok && li.results[i].GhostID == ev.GhostID && li.results[i].Outcome == bus.OutcomeTimeout
}

// apply records ev as its target's terminal result.
func (li *liveIntent) apply(ev *bus.Event) (verdict, string) {
	i, ok := li.index[ev.CommandID]
	if !ok {
		return verdictRejected, "command_id is not part of intent " + li.rec.IntentID
	}
	r := &li.results[i]
	if r.GhostID != ev.GhostID {
		return verdictRejected, fmt.Sprintf("command %s was sent to %s, not to %s", ev.CommandID, r.GhostID, ev.GhostID)
	}
	if r.Outcome != bus.OutcomePending {
		if r.EventID == ev.EventID {
			return verdictDuplicate, ""
		}
		li.noteEnded(i, ev)
		return verdictRejected, "target already has a terminal outcome"
	}
	// A refusal of the very bytes Mirage sent is genuine: it is the target's result.
	genuineRefusal := ev.Error != nil && ev.Error.Code == bus.CodeSecurity && slices.Contains(li.sentRefusals[i], ev.EventID)
	if !genuineRefusal && ev.EventID != bus.EventID(ev.GhostID, ev.CommandID) {
		// Not the command's terminal event: the Ghost's refusal, for security, of bytes
		// it received under this command_id, which anyone able to publish on cmd.<id>
		// can make it send. It must not stand in for the real result: it is noted, and
		// reported only if the real event has not come by the deadline (expire).
		if ev.Error != nil && ev.Error.Code == bus.CodeSecurity {
			if li.refusals == nil {
				li.refusals = map[int]*bus.Error{}
			}
			li.refusals[i] = ev.Error
			return verdictRejected, "a refusal for security under this command_id: noted, not counted as its result"
		}
		return verdictRejected, "event_id is not the terminal event of command " + ev.CommandID
	}
	r.ExecutionID = ev.ExecutionID
	r.EventID = ev.EventID
	r.ExitCode = ev.Result.ExitCode
	r.Stdout = ev.Result.Stdout
	r.Stderr = ev.Result.Stderr
	r.Truncated = ev.Result.Truncated
	r.Error = ev.Error
	switch {
	case ev.Outcome == bus.OutcomeSuccess:
		r.Outcome = bus.OutcomeSuccess
	case ev.Error != nil && ev.Error.Code == bus.CodeExpired:
		r.Outcome = bus.OutcomeExpired
	default:
		r.Outcome = bus.OutcomeError
	}
	li.settle(i)
	return verdictCounted, ""
}

// settle accounts for unit i reaching its terminal outcome.
func (li *liveIntent) settle(i int) {
	r := &li.results[i]
	s := li.stepOf[i]
	li.terminal++
	li.stepTerminal[s]++
	if r.Outcome == bus.OutcomeSuccess {
		li.stepSuccess[s]++
	}
	if r.Outcome != bus.OutcomeSkipped && (i < li.next || li.wasSent(i)) {
		if i < li.next {
			li.inflight--
		}
		if r.Outcome != bus.OutcomeSuccess {
			li.errs++ // a dispatched unit failed (after a restart, one sent before it too)
		}
	}
	li.dirty = true
}

// skip ends unit i without running it.
func (li *liveIntent) skip(i int, reason string) {
	r := &li.results[i]
	if r.Outcome != bus.OutcomePending {
		return
	}
	r.Outcome = bus.OutcomeSkipped
	r.Error = bus.Errorf(bus.CodeSkipped, "%s", reason)
	li.settle(i)
}

// expire ends every pending unit at the deadline: a dispatched one is timeout (no terminal
// event), one never started is skipped.
func (li *liveIntent) expire() {
	limit := time.Duration(li.rec.Issue.TimeoutMS) * time.Millisecond
	for i := range li.results {
		r := &li.results[i]
		if r.Outcome != bus.OutcomePending {
			continue
		}
		if i >= li.next && !li.wasSent(i) {
			li.skip(i, fmt.Sprintf("not started: the intent's timeout of %s passed first", limit))
			continue
		}
		r.Outcome = bus.OutcomeTimeout
		r.Error = bus.Errorf(bus.CodeNoResponse, "no terminal event from %s within the intent's timeout of %s", r.GhostID, limit)
		if why, ok := li.unstored[i]; ok {
			r.Error.Message += "; its command was never stored in " + bus.StreamCommands + " (" + why + "), so the Ghost got it only if it was online when it was sent"
		}
		if refusal := li.refusals[i]; refusal != nil {
			// The Ghost refused what it received under this command_id and never sent
			// the command's own event: the refusal is the likeliest reason.
			r.Outcome, r.Error = bus.OutcomeError, refusal
		}
		li.settle(i)
	}
	li.dirty = true
}

func (li *liveIntent) done() bool { return li.terminal == len(li.results) }

func (li *liveIntent) counts() bus.Counts {
	c := bus.Counts{Targets: len(li.results)}
	for _, r := range li.results {
		switch r.Outcome {
		case bus.OutcomeSuccess:
			c.Success++
		case bus.OutcomeError:
			c.Error++
		case bus.OutcomeTimeout:
			c.Timeout++
		case bus.OutcomeExpired:
			c.Expired++
		case bus.OutcomeSkipped:
			c.Skipped++
		default:
			c.Pending++
		}
	}
	return c
}

// phase is the intent's phase from its results.
func (li *liveIntent) phase() string {
	c := li.counts()
	switch {
	case li.done() && c.Success == c.Targets:
		return bus.PhaseSatisfied
	case li.done():
		return bus.PhaseFailed
	case c.Pending == c.Targets && li.waiting == "":
		return bus.PhasePending
	default:
		return bus.PhaseInProgress
	}
}

// summary is the report's line: the counts, and why the intent waits when it does.
func (li *liveIntent) summary(phase string, c bus.Counts) string {
	line := Summary(phase, c)
	if li.waiting != "" && !li.done() {
		line += "; " + li.waiting
	}
	return line
}

// Summary renders counts as one human line.
func Summary(phase string, c bus.Counts) string {
	parts := []string{fmt.Sprintf("%d/%d succeeded", c.Success, c.Targets)}
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(c.Error, "error")
	add(c.Timeout, "timeout")
	add(c.Expired, "expired")
	add(c.Skipped, "skipped")
	add(c.Pending, "pending")
	return phase + ": " + strings.Join(parts, ", ")
}

// report builds the intent's report, kept under bus.MaxEnvelope.
func (li *liveIntent) report(now time.Time) *bus.Report {
	phase := li.phase()
	c := li.counts()
	state := "open"
	if li.done() {
		state = "complete"
	}
	r := &bus.Report{
		Header:          bus.NewHeader(bus.TypeReport, li.rec.Issue.TraceID, now),
		IntentID:        li.rec.IntentID,
		Phase:           phase,
		CompletionState: state,
		Summary:         li.summary(phase, c),
		Counts:          c,
	}
	if li.done() || len(li.results) <= bigIntent {
		r.Results = append([]bus.TargetResult(nil), li.results...)
		fitReport(r)
		return r
	}
	// A large intent in progress: its reports carry exact counts and the results that are
	// not successes (what an operator acts on); the terminal report carries all that fit.
	r.Results = []bus.TargetResult{}
	for _, x := range li.results {
		if x.Outcome != bus.OutcomeSuccess && x.Outcome != bus.OutcomePending {
			r.Results = append(r.Results, x)
		}
	}
	r.ResultsOmitted = len(li.results) - len(r.Results)
	omitted := r.ResultsOmitted
	r.ResultsOmitted = 0
	fitReport(r)
	r.ResultsOmitted += omitted
	return r
}

// bigIntent is the number of targets above which in_progress reports list only the
// results that are not successes.
const bigIntent = 1000

// capOutputs cuts every result's stdout and stderr to limit bytes.
func capOutputs(r *bus.Report, limit int) {
	for i := range r.Results {
		var c1, c2 bool
		r.Results[i].Stdout, c1 = bus.Cut(r.Results[i].Stdout, limit)
		r.Results[i].Stderr, c2 = bus.Cut(r.Results[i].Stderr, limit)
		r.Results[i].Truncated = r.Results[i].Truncated || c1 || c2
	}
}

// fitReport shrinks a report's results until it fits in an envelope: first it caps each
// output, then it leaves out successful results, then any; counts stay exact. A large
// fan-out's terminal report is built on the path to its answer, so it is sized from the
// results' own encodings rather than by encoding the whole report again at every step.
func fitReport(r *bus.Report) {
	const budget = bus.MaxEnvelope - 16<<10
	var buf []byte // sizes are measured with the encoder that publishes the report
	size := func() int {
		buf = bus.AppendReport(buf[:0], r)
		return len(buf)
	}
	// Cheap first pass: when the outputs alone exceed the budget, give every result an
	// equal share of it, so that large fan-outs cost one or two encodings, not dozens.
	outputs, texts := 0, 0
	for _, x := range r.Results {
		outputs += len(x.Stdout) + len(x.Stderr)
		if x.Error != nil {
			texts += len(x.Error.Message) + len(x.Error.Field)
		}
	}
	// A report far below the budget is not encoded to be measured: each result's bounded
	// fields (ids, outcome, codes) take well under 2 KiB, a text at most 6 bytes per byte
	// once escaped, the rest of the report well under 64 KiB.
	if len(r.Results) < 64 && 64<<10+len(r.Results)*(2<<10)+6*(outputs+texts+len(r.Summary)) < budget {
		return
	}
	if outputs > budget/2 && len(r.Results) > 0 {
		share := max(budget/2/len(r.Results)/2, 0)
		capOutputs(r, share)
	}
	if size() <= budget {
		return
	}
	// When the results do not fit even without any output, capping cannot be enough:
	// leave results out straight away.
	bare := append([]bus.TargetResult(nil), r.Results...)
	bare = bare[:len(bare):len(bare)]
	withoutOutputs := &bus.Report{Results: bare}
	capOutputs(withoutOutputs, 0)
	sizes := make([]int, len(bare))
	total := reportBase(r)
	for i := range bare {
		buf = bus.AppendTargetResult(buf[:0], &bare[i])
		sizes[i] = len(buf) + 1 // and its comma
		total += sizes[i]
	}
	if total <= budget {
		for _, limit := range []int{4 << 10, 512, 64, 0} {
			capOutputs(r, limit)
			if size() <= budget {
				return
			}
		}
	}
	r.Results = bare
	// Keep the non-success results first: they are what an operator looks for.
	order := make([]int, 0, len(bare))
	for i, x := range bare {
		if x.Outcome != bus.OutcomeSuccess {
			order = append(order, i)
		}
	}
	for i, x := range bare {
		if x.Outcome == bus.OutcomeSuccess {
			order = append(order, i)
		}
	}
	kept := make([]bus.TargetResult, 0, len(bare))
	used := reportBase(r) + len(`,"results_omitted":`) + 10
	for _, i := range order {
		if used+sizes[i] > budget {
			break
		}
		used += sizes[i]
		kept = append(kept, bare[i])
	}
	omitted := len(bare) - len(kept)
	r.Results, r.ResultsOmitted = kept, omitted
	// The sum is exact up to separators; check, and shrink further in the unlikely case
	// it was not.
	for n := len(kept); n > 0 && size() > budget; {
		n = n * 3 / 4
		r.Results, r.ResultsOmitted = kept[:n], len(bare)-n
	}
}

// reportBase is the encoded size of r without its results.
func reportBase(r *bus.Report) int {
	c := *r
	c.Results = nil
	return len(bus.AppendReport(nil, &c))
}

package bus

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/edgectl/edgectl/subjects"
)

// Envelope is implemented by every envelope: it has a header and validates itself.
type Envelope interface {
	Head() *Header
	Validate() error
}

// MaxTimeout bounds timeout_ms of issues and commands (24 h).
const MaxTimeout = int64(24 * 60 * 60 * 1000)

// validateHeader checks the common fields against the expected type.
func validateHeader(h *Header, want string) error {
	if h.Type != want {
		if h.Type == "" {
			return FieldError(CodeFraming, "type", "missing; expected %q", want)
		}
		return FieldError(CodeFraming, "type", "is %q, expected %q", h.Type, want)
	}
	if h.V != Version {
		return FieldError(CodeSemantic, "v", "is %d, this version speaks %d", h.V, Version)
	}
	if err := token("message_id", h.MessageID); err != nil {
		return err
	}
	if err := subjects.ValidateTraceID(h.TraceID); err != nil {
		return FieldError(CodeSemantic, "trace_id", "%s", subjects.Reason(err))
	}
	if h.TimestampMS <= 0 {
		return FieldError(CodeSemantic, "timestamp_ms", "missing or not positive")
	}
	return nil
}

func token(field, v string) error {
	if v == "" {
		return FieldError(CodeSemantic, field, "missing")
	}
	if err := subjects.ValidateToken(field, v); err != nil {
		return FieldError(CodeSemantic, field, "%s", subjects.Reason(err))
	}
	return nil
}

func ghostID(field, v string) error {
	if v == "" {
		return FieldError(CodeSemantic, field, "missing")
	}
	if err := subjects.ValidateGhostID(v); err != nil {
		return FieldError(CodeSemantic, field, "%s", subjects.Reason(err))
	}
	return nil
}

func seedID(field, v string) error {
	if v == "" {
		return FieldError(CodeSemantic, field, "missing")
	}
	if err := subjects.ValidateSeedID(v); err != nil {
		return FieldError(CodeSemantic, field, "%s", subjects.Reason(err))
	}
	return nil
}

func operation(field, v string) error {
	if v == "" {
		return FieldError(CodeSemantic, field, "missing")
	}
	if err := subjects.ValidateOperation(v); err != nil {
		return FieldError(CodeSemantic, field, "%s", subjects.Reason(err))
	}
	return nil
}

func required(field, v string) error {
	if v == "" {
		return FieldError(CodeSemantic, field, "missing")
	}
	return nil
}

// MaxActor bounds an issue's actor: a name, logged with every intent.
const MaxActor = 256

func maxLen(field, v string, limit int) error {
	if len(v) > limit {
		return FieldError(CodeSemantic, field, "is %d bytes, at most %d are allowed", len(v), limit)
	}
	return nil
}

func notNegative(field string, v int64) error {
	if v < 0 {
		return FieldError(CodeSemantic, field, "is %d: unix milliseconds, or 0 for none", v)
	}
	return nil
}

// notNegativeDuration checks a duration in milliseconds that may be 0 (none).
func notNegativeDuration(field string, v int64) error {
	if v < 0 {
		return FieldError(CodeSemantic, field, "is %d: a duration in milliseconds, or 0 for none", v)
	}
	return nil
}

func positive(field string, v int64) error {
	if v <= 0 {
		return FieldError(CodeSemantic, field, "missing or not positive")
	}
	return nil
}

func timeout(field string, v int64) error {
	if err := positive(field, v); err != nil {
		return err
	}
	if v > MaxTimeout {
		return FieldError(CodeSemantic, field, "%d ms is more than the maximum of %d ms (24h)", v, MaxTimeout)
	}
	return nil
}

// ValidArgName reports whether name is an argument (param) name: 1-64 of lowercase a-z
// 0-9 _, starting with a letter. Checked byte by byte, like subjects' identifiers: a
// package-level regexp would be compiled at every start of every Ghost.
func ValidArgName(name string) bool {
	if name == "" || len(name) > 64 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

func args(field string, m map[string]string) error {
	if m == nil {
		return FieldError(CodeSemantic, field, "missing (send {} for none)")
	}
	for k := range m {
		if !ValidArgName(k) {
			return FieldError(CodeSemantic, field, "argument name %q is invalid; names are lowercase a-z 0-9 _, starting with a letter", k)
		}
	}
	return nil
}

func first(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// Validate checks an issue. intent_id may be empty: Mirage assigns one.
func (m *Issue) Validate() error {
	if err := validateHeader(&m.Header, TypeIssue); err != nil {
		return err
	}
	var intent error
	if m.IntentID != "" {
		intent = token("intent_id", m.IntentID)
	}
	if err := first(intent,
		required("actor", m.Actor),
		maxLen("actor", m.Actor, MaxActor),
		required("target_scope", m.TargetScope),
		notNegative("deliver_by_ms", m.DeliverByMS),
		notNegativeDuration("deliver_within_ms", m.DeliverWithinMS),
		timeout("timeout_ms", m.TimeoutMS),
		rolloutLimit("max_concurrency", m.MaxConcurrency),
		rolloutLimit("max_errors", m.MaxErrors),
	); err != nil {
		return err
	}
	if len(m.Plan) == 0 {
		return first(
			seedID("objective.seed_selector", m.Objective.SeedSelector),
			operation("objective.operation", m.Objective.Operation),
			args("objective.args", m.Objective.Args),
		)
	}
	if len(m.Plan) > MaxPlanSteps {
		return FieldError(CodeSemantic, "plan", "has %d steps, at most %d are allowed", len(m.Plan), MaxPlanSteps)
	}
	for i, st := range m.Plan {
		p := fmt.Sprintf("plan[%d].", i)
		if err := first(seedID(p+"seed_selector", st.SeedSelector), operation(p+"operation", st.Operation), args(p+"args", st.Args)); err != nil {
			return err
		}
	}
	return nil
}

// MaxPlanSteps bounds a command plan.
const MaxPlanSteps = 64

// ParseLimit reads a rollout limit, "N" or "N%", against a number of targets. Empty gives
// def. A percentage rounds up, so "10%" of 5 targets is 1.
func ParseLimit(s string, targets, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	pct := strings.HasSuffix(s, "%")
	n, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
	if err != nil || n < 0 || (pct && n > 100) {
		return 0, fmt.Errorf("%q is not N or N%% (0-100%%)", s)
	}
	if pct {
		return (n*targets + 99) / 100, nil
	}
	return n, nil
}

func rolloutLimit(field, v string) error {
	if _, err := ParseLimit(v, 100, 0); err != nil {
		return FieldError(CodeSemantic, field, "%v", err)
	}
	return nil
}

// Validate checks an issue reply.
func (m *IssueReply) Validate() error {
	if err := validateHeader(&m.Header, TypeIssueReply); err != nil {
		return err
	}
	switch m.Status {
	case "accepted":
		return token("intent_id", m.IntentID)
	case "rejected":
		if m.Error == nil {
			return FieldError(CodeSemantic, "error", "missing on a rejected issue")
		}
		return nil
	default:
		return FieldError(CodeSemantic, "status", "is %q, expected accepted or rejected", m.Status)
	}
}

// Validate checks a command.
func (m *Command) Validate() error {
	if err := validateHeader(&m.Header, TypeCommand); err != nil {
		return err
	}
	return first(
		token("command_id", m.CommandID),
		token("intent_id", m.IntentID),
		ghostID("ghost_id", m.GhostID),
		seedID("seed_selector", m.SeedSelector),
		operation("operation", m.Operation),
		args("args", m.Args),
		positive("deliver_by_ms", m.DeliverByMS),
		timeout("timeout_ms", m.TimeoutMS),
	)
}

// Validate checks a seed.execute.
func (m *SeedExecute) Validate() error {
	if err := validateHeader(&m.Header, TypeSeedExecute); err != nil {
		return err
	}
	return first(
		token("execution_id", m.ExecutionID),
		token("command_id", m.CommandID),
		seedID("seed_id", m.SeedID),
		operation("operation", m.Operation),
		args("args", m.Args),
		timeout("timeout_ms", m.TimeoutMS),
	)
}

// Validate checks a seed.result.
func (m *SeedResult) Validate() error {
	if err := validateHeader(&m.Header, TypeSeedResult); err != nil {
		return err
	}
	return first(token("execution_id", m.ExecutionID), m.Result.validate(""))
}

func (r *Result) validate(prefix string) error {
	if r.Status == "" {
		return FieldError(CodeSemantic, prefix+"status", "missing")
	}
	if len(r.Stdout) > MaxOutput {
		return FieldError(CodeSemantic, prefix+"stdout", "is %d bytes, more than the %d carried inline", len(r.Stdout), MaxOutput)
	}
	if len(r.Stderr) > MaxOutput {
		return FieldError(CodeSemantic, prefix+"stderr", "is %d bytes, more than the %d carried inline", len(r.Stderr), MaxOutput)
	}
	return nil
}

// Validate checks an event. seed_id and operation may be empty on an error event for a
// command too malformed to name them.
func (m *Event) Validate() error {
	if err := validateHeader(&m.Header, TypeEvent); err != nil {
		return err
	}
	if err := first(
		token("event_id", m.EventID),
		token("command_id", m.CommandID),
		token("execution_id", m.ExecutionID),
		ghostID("ghost_id", m.GhostID),
		positive("started_ms", m.StartedMS),
		positive("finished_ms", m.FinishedMS),
		m.Result.validate("result."),
	); err != nil {
		return err
	}
	if m.IntentID != "" {
		if err := token("intent_id", m.IntentID); err != nil {
			return err
		}
	}
	switch m.Outcome {
	case OutcomeSuccess:
		if m.Error != nil {
			return FieldError(CodeSemantic, "error", "present on a success event")
		}
		return first(token("intent_id", m.IntentID), seedID("seed_id", m.SeedID), operation("operation", m.Operation))
	case OutcomeError:
		if m.Error == nil {
			return FieldError(CodeSemantic, "error", "missing on an error event")
		}
		if m.Error.Code == 0 {
			return FieldError(CodeSemantic, "error.code", "missing")
		}
		if !KnownCode(m.Error.Code) {
			return FieldError(CodeSemantic, "error.code", "%d is not a code of the taxonomy", m.Error.Code)
		}
		if m.Error.Class != ClassOf(m.Error.Code) {
			return FieldError(CodeSemantic, "error.class", "is %q; code %d is of class %q", m.Error.Class, m.Error.Code, ClassOf(m.Error.Code))
		}
		return required("error.message", m.Error.Message)
	case "":
		return FieldError(CodeSemantic, "outcome", "missing")
	default:
		return FieldError(CodeSemantic, "outcome", "is %q, expected success or error", m.Outcome)
	}
}

// Validate checks an event.ack.
func (m *EventAck) Validate() error {
	if err := validateHeader(&m.Header, TypeEventAck); err != nil {
		return err
	}
	if err := first(token("event_id", m.EventID), token("command_id", m.CommandID), ghostID("ghost_id", m.GhostID)); err != nil {
		return err
	}
	if m.AckStatus != AckAccepted && m.AckStatus != AckRejected {
		return FieldError(CodeSemantic, "ack_status", "is %q, expected accepted or rejected", m.AckStatus)
	}
	return nil
}

// Validate checks a register.
func (m *Register) Validate() error {
	if err := validateHeader(&m.Header, TypeRegister); err != nil {
		return err
	}
	if err := first(ghostID("ghost_id", m.GhostID), required("version", m.Version)); err != nil {
		return err
	}
	if m.Labels == nil {
		return FieldError(CodeSemantic, "labels", "missing (send {} for none)")
	}
	if m.Seeds == nil {
		return FieldError(CodeSemantic, "seeds", "missing (send [] for none)")
	}
	// Field paths are built only for an error: a registration of a valid fleet passes
	// here thousands of times.
	seeds := make(map[string]bool, len(m.Seeds))
	for i, s := range m.Seeds {
		p := func() string { return fmt.Sprintf("seeds[%d].", i) }
		if seedID("id", s.ID) != nil {
			return seedID(p()+"id", s.ID)
		}
		if seeds[s.ID] {
			return FieldError(CodeSemantic, p()+"id", "seed %s is declared twice", s.ID)
		}
		seeds[s.ID] = true
		ops := make(map[string]bool, len(s.Operations))
		for j, op := range s.Operations {
			q := func() string { return fmt.Sprintf("%soperations[%d].", p(), j) }
			if operation("name", op.Name) != nil {
				return operation(q()+"name", op.Name)
			}
			if ops[op.Name] {
				return FieldError(CodeSemantic, q()+"name", "operation %s is declared twice", op.Name)
			}
			ops[op.Name] = true
			if err := checkParams(q, op.Params); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkParams checks declared params; at names the operation they are declared on, for
// an error.
func checkParams(at func() string, params []ParamInfo) error {
	names := make(map[string]bool, len(params))
	for k, pi := range params {
		f := func() string { return fmt.Sprintf("%sparams[%d]", at(), k) }
		switch {
		case !ValidArgName(pi.Name):
			return FieldError(CodeSemantic, f()+".name", "%q is not an argument name (lowercase a-z 0-9 _, starting with a letter)", pi.Name)
		case names[pi.Name]:
			return FieldError(CodeSemantic, f()+".name", "param %s is declared twice", pi.Name)
		case pi.MaxBytes < 0:
			return FieldError(CodeSemantic, f()+".max_bytes", "is %d; 0 for no limit, or more", pi.MaxBytes)
		case pi.Min != nil && pi.Max != nil && *pi.Min > *pi.Max:
			return FieldError(CodeSemantic, f(), "min %d is above max %d", *pi.Min, *pi.Max)
		}
		names[pi.Name] = true
		if err := checkPattern(pi.Pattern); err != nil {
			return FieldError(CodeSemantic, f()+".pattern", "%q does not parse: %v", pi.Pattern, err)
		}
	}
	return nil
}

// goodPatterns remembers the patterns found to parse, so that a fleet registering the same
// seeds (thousands of Ghosts) parses each pattern once; bounded, beyond which it parses.
var goodPatterns = struct {
	sync.Mutex
	m map[string]struct{}
}{m: map[string]struct{}{}}

func checkPattern(p string) error {
	goodPatterns.Lock()
	_, ok := goodPatterns.m[p]
	goodPatterns.Unlock()
	if ok {
		return nil
	}
	if _, err := ParseParamPattern(p); err != nil {
		return err
	}
	goodPatterns.Lock()
	if len(goodPatterns.m) < 4096 {
		goodPatterns.m[p] = struct{}{}
	}
	goodPatterns.Unlock()
	return nil
}

// Validate checks a register.ack.
func (m *RegisterAck) Validate() error {
	if err := validateHeader(&m.Header, TypeRegisterAck); err != nil {
		return err
	}
	if err := ghostID("ghost_id", m.GhostID); err != nil {
		return err
	}
	if m.Status != RegisterAccepted && m.Status != RegisterRejected {
		return FieldError(CodeSemantic, "status", "is %q, expected accepted or rejected", m.Status)
	}
	return nil
}

// Validate checks a heartbeat.
func (m *Heartbeat) Validate() error {
	if err := validateHeader(&m.Header, TypeHeartbeat); err != nil {
		return err
	}
	return ghostID("ghost_id", m.GhostID)
}

// Validate checks an announce.
func (m *Announce) Validate() error {
	if err := validateHeader(&m.Header, TypeAnnounce); err != nil {
		return err
	}
	return required("mirage_id", m.MirageID)
}

// Validate checks a report.
func (m *Report) Validate() error {
	if err := validateHeader(&m.Header, TypeReport); err != nil {
		return err
	}
	if err := first(token("intent_id", m.IntentID), required("completion_state", m.CompletionState), required("summary", m.Summary)); err != nil {
		return err
	}
	switch m.Phase {
	case PhasePending, PhaseInProgress, PhaseSatisfied, PhaseFailed:
	case "":
		return FieldError(CodeSemantic, "phase", "missing")
	default:
		return FieldError(CodeSemantic, "phase", "is %q, expected pending, in_progress, satisfied or failed", m.Phase)
	}
	if m.Results == nil {
		return FieldError(CodeSemantic, "results", "missing (send [] for none)")
	}
	return nil
}

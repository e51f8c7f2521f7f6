package bus

import (
	"time"

	"github.com/edgectl/edgectl/subjects"
)

// Canonical envelope type names (CONTRACT.md). No synonyms.
const (
	TypeIssue       = "issue"
	TypeIssueReply  = "issue.reply"
	TypeCommand     = "command"
	TypeSeedExecute = "seed.execute"
	TypeSeedResult  = "seed.result"
	TypeEvent       = "event"
	TypeEventAck    = "event.ack"
	TypeReport      = "report"
	TypeRegister    = "register"
	TypeRegisterAck = "register.ack"
	TypeHeartbeat   = "heartbeat"
	TypeAnnounce    = "announce"
)

// Version is the envelope version this code speaks.
const Version = 1

// MaxEnvelope is the largest envelope accepted (code 1101 beyond it).
const MaxEnvelope = 1 << 20

// MaxOutput is how much stdout or stderr is carried inline; beyond it output is cut and
// truncated is set.
const MaxOutput = 64 << 10

// Header holds the fields every envelope carries.
type Header struct {
	Type        string `json:"type"`
	V           int    `json:"v"`
	MessageID   string `json:"message_id"`
	TraceID     string `json:"trace_id"`
	TimestampMS int64  `json:"timestamp_ms"`
}

// NewHeader returns a header of the given type with a fresh message_id. An empty traceID
// starts a new trace.
func NewHeader(typ, traceID string, now time.Time) Header {
	if traceID == "" {
		traceID = subjects.NewTraceID()
	}
	return Header{Type: typ, V: Version, MessageID: subjects.NewID(subjects.PrefixMessage), TraceID: traceID, TimestampMS: now.UnixMilli()}
}

// Head returns the header; every envelope embeds Header and so has it.
func (h *Header) Head() *Header { return h }

// Objective is what an issue asks for: one operation of one seed.
type Objective struct {
	SeedSelector string            `json:"seed_selector"`
	Operation    string            `json:"operation"`
	Args         map[string]string `json:"args"`
}

// Issue is a user's intent, sent to Mirage on mirage.issue.
type Issue struct {
	Header
	IntentID    string    `json:"intent_id"`
	Actor       string    `json:"actor"`
	TargetScope string    `json:"target_scope"`
	Objective   Objective `json:"objective"`
	TimeoutMS   int64     `json:"timeout_ms"`
	// DeliverByMS is the delivery deadline given to every command (absolute, unix ms);
	// zero means the intent's deadline.
	DeliverByMS int64 `json:"deliver_by_ms,omitempty"`
	// DeliverWithinMS is the delivery deadline as a duration from when Mirage accepts the
	// issue, on Mirage's clock; when set, deliver_by_ms (a time on the sender's clock, which
	// may be minutes off Mirage's) is ignored. Zero: deliver_by_ms, else the intent's
	// deadline.
	DeliverWithinMS int64 `json:"deliver_within_ms,omitempty"`
	// MaxConcurrency bounds how many targets run at once: "N" or "N%" of the targets
	// (empty: all at once).
	MaxConcurrency string `json:"max_concurrency,omitempty"`
	// MaxErrors stops a rollout: once more targets than this failed ("N" or "N%"), targets
	// not yet started are skipped (empty: no limit).
	MaxErrors string `json:"max_errors,omitempty"`
	// Plan, when set, replaces the objective with ordered steps: a step starts when the
	// previous one is satisfied; a failure stops the plan.
	Plan []PlanStep `json:"plan,omitempty"`
}

// PlanStep is one step of a command plan.
type PlanStep struct {
	Name         string            `json:"name,omitempty"`
	SeedSelector string            `json:"seed_selector"`
	Operation    string            `json:"operation"`
	Args         map[string]string `json:"args"`
	// TargetScope overrides the issue's scope for this step.
	TargetScope string `json:"target_scope,omitempty"`
	// Blocking holds a lock on ghost_id::seed_selector for each target while the step runs.
	Blocking bool `json:"blocking,omitempty"`
}

// IssueReply is Mirage's answer on mirage.issue: accepted with the intent_id, or rejected
// with an error.
type IssueReply struct {
	Header
	IntentID string   `json:"intent_id,omitempty"`
	Status   string   `json:"status"` // accepted | rejected
	Targets  []string `json:"targets,omitempty"`
	Error    *Error   `json:"error,omitempty"`

	// Targets an accepted intent cannot expect to hear from soon, each list capped at ten
	// ids: named ids no Ghost has registered with Mirage (a typo, or a headless Ghost),
	// and registered Ghosts that are offline. Their commands wait in EDGE_CMD all the
	// same, up to the intent's deadline; the client tells its user.
	Unregistered []string `json:"unregistered,omitempty"`
	Offline      []string `json:"offline,omitempty"`
	// Stale are registered Ghosts Mirage has missed heartbeats from (stale, not yet
	// offline), capped at ten: they may be gone, and their commands wait as above.
	Stale []StaleTarget `json:"stale,omitempty"`
}

// StaleTarget is a stale target of an accepted issue: how long Mirage had not heard from
// it when it answered (silent_ms, Mirage's clock: the client's may differ).
type StaleTarget struct {
	GhostID  string `json:"ghost_id"`
	SilentMS int64  `json:"silent_ms"`
}

// Command asks one Ghost to run one operation of one seed.
type Command struct {
	Header
	CommandID    string            `json:"command_id"`
	IntentID     string            `json:"intent_id"`
	GhostID      string            `json:"ghost_id"`
	SeedSelector string            `json:"seed_selector"`
	Operation    string            `json:"operation"`
	Args         map[string]string `json:"args"`
	DeliverByMS  int64             `json:"deliver_by_ms"`
	TimeoutMS    int64             `json:"timeout_ms"`
}

// SeedExecute is what a Ghost hands a seed: one execution of one operation.
type SeedExecute struct {
	Header
	ExecutionID string            `json:"execution_id"`
	CommandID   string            `json:"command_id"`
	SeedID      string            `json:"seed_id"`
	Operation   string            `json:"operation"`
	Args        map[string]string `json:"args"`
	TimeoutMS   int64             `json:"timeout_ms"`
}

// Result is the normalized outcome of an execution: the body of seed.result and of an
// event's result.
type Result struct {
	Status    string `json:"status"`
	ExitCode  int    `json:"exit_code"`
	Stdout    string `json:"stdout"`
	Stderr    string `json:"stderr"`
	Truncated bool   `json:"truncated"`
}

// SeedResult is a seed's answer to seed.execute.
type SeedResult struct {
	Header
	ExecutionID string `json:"execution_id"`
	Result
}

// Outcomes of an event.
const (
	OutcomeSuccess = "success"
	OutcomeError   = "error"
)

// Event is the one terminal event of a command on a Ghost.
type Event struct {
	Header
	EventID     string `json:"event_id"`
	CommandID   string `json:"command_id"`
	IntentID    string `json:"intent_id"`
	ExecutionID string `json:"execution_id"`
	GhostID     string `json:"ghost_id"`
	SeedID      string `json:"seed_id"`
	Operation   string `json:"operation"`
	Outcome     string `json:"outcome"`
	Result      Result `json:"result"`
	Error       *Error `json:"error,omitempty"`
	StartedMS   int64  `json:"started_ms"`
	FinishedMS  int64  `json:"finished_ms"`
}

// Ack statuses.
const (
	AckAccepted = "accepted"
	AckRejected = "rejected"
)

// EventAck is Mirage's answer to an event, on ack.<ghost_id>.
type EventAck struct {
	Header
	EventID   string `json:"event_id"`
	CommandID string `json:"command_id"`
	GhostID   string `json:"ghost_id"`
	AckStatus string `json:"ack_status"`
	AckCode   Code   `json:"ack_code"`
}

// ParamInfo declares one parameter of an operation.
type ParamInfo struct {
	Name     string `json:"name"`
	Required bool   `json:"required"`
	Pattern  string `json:"pattern"`
	// MaxBytes, when above 0, is the most bytes a value may have: a limit a pattern cannot
	// say (a Go regexp repeats at most 1000 times). Min and Max, when set, bound a value
	// read as a decimal integer. All are checked with the pattern, by Mirage at issue time
	// and by the Ghost.
	MaxBytes    int    `json:"max_bytes,omitempty"`
	Min         *int64 `json:"min,omitempty"`
	Max         *int64 `json:"max,omitempty"`
	Description string `json:"description,omitempty"`
	// NoLeadingDash refuses a value that starts with "-": the param begins an argument
	// of a program that would read such a value as an option (declarative seeds:
	// allow_leading_dash). Checked with the pattern, so Mirage refuses it at issue time.
	NoLeadingDash bool `json:"no_leading_dash,omitempty"`
}

// OperationInfo declares one operation of a seed.
type OperationInfo struct {
	Name        string      `json:"name"`
	Description string      `json:"description"`
	Idempotent  bool        `json:"idempotent"`
	Params      []ParamInfo `json:"params"`
}

// SeedInfo declares one seed hosted by a Ghost.
type SeedInfo struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Version     string          `json:"version,omitempty"`
	Operations  []OperationInfo `json:"operations"`
}

// Operation returns the named operation, if declared.
func (s SeedInfo) Operation(name string) (OperationInfo, bool) {
	for _, op := range s.Operations {
		if op.Name == name {
			return op, true
		}
	}
	return OperationInfo{}, false
}

// Register is a Ghost's registration, on reg.<ghost_id>.
type Register struct {
	Header
	GhostID string            `json:"ghost_id"`
	Version string            `json:"version"`
	Labels  map[string]string `json:"labels"`
	Seeds   []SeedInfo        `json:"seeds"`
}

// Registration statuses.
const (
	RegisterAccepted = "accepted"
	RegisterRejected = "rejected"
)

// RegisterAck is Mirage's answer to register.
type RegisterAck struct {
	Header
	GhostID string `json:"ghost_id"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
}

// Heartbeat is a Ghost's presence beat, on hb.<ghost_id>.
type Heartbeat struct {
	Header
	GhostID string `json:"ghost_id"`
	Seq     uint64 `json:"seq"`
	// Leaving is set on the last heartbeat of a Ghost that stops: Mirage shows it
	// offline at once rather than after OfflineAfter of silence. A compatible extension:
	// a Mirage that does not know it ignores it.
	Leaving bool `json:"leaving,omitempty"`
}

// Announce tells Ghosts that a Mirage is up, on mirage.announce.
type Announce struct {
	Header
	MirageID string `json:"mirage_id"`
	// EventsLost says EDGE_EVT removed events (its byte cap, its age limit) before Mirage
	// read them: a Ghost stores its unacknowledged events again, under a Nats-Msg-Id of
	// their own, since a re-send under the event_id inside the duplicate window would be
	// dropped by the stream as a duplicate of the message it no longer holds. A Ghost that
	// does not know it re-sends as for any announce.
	EventsLost bool `json:"events_lost,omitempty"`
}

// Report phases.
const (
	PhasePending    = "pending"
	PhaseInProgress = "in_progress"
	PhaseSatisfied  = "satisfied"
	PhaseFailed     = "failed"
)

// Terminal reports whether a phase is final.
func Terminal(phase string) bool { return phase == PhaseSatisfied || phase == PhaseFailed }

// Target outcomes in a report, beyond success and error.
const (
	OutcomeTimeout = "timeout"
	OutcomeExpired = "expired"
	OutcomeSkipped = "skipped"
	OutcomePending = "pending"
)

// Counts tallies the targets of an intent by outcome.
type Counts struct {
	Targets int `json:"targets"`
	Success int `json:"success"`
	Error   int `json:"error"`
	Timeout int `json:"timeout"`
	Pending int `json:"pending"`
	Expired int `json:"expired,omitempty"`
	Skipped int `json:"skipped,omitempty"`
}

// TargetResult is one target's line in a report.
type TargetResult struct {
	// Step is the plan step the result belongs to (plans only).
	Step        int    `json:"step,omitempty"`
	GhostID     string `json:"ghost_id"`
	CommandID   string `json:"command_id"`
	ExecutionID string `json:"execution_id"`
	EventID     string `json:"event_id"`
	Outcome     string `json:"outcome"`
	ExitCode    int    `json:"exit_code"`
	Stdout      string `json:"stdout"`
	Stderr      string `json:"stderr"`
	Truncated   bool   `json:"truncated,omitempty"`
	Error       *Error `json:"error,omitempty"`
}

// Report is Mirage's account of an intent, on report.<intent_id>.
type Report struct {
	Header
	IntentID        string         `json:"intent_id"`
	Phase           string         `json:"phase"`
	CompletionState string         `json:"completion_state"`
	Summary         string         `json:"summary"`
	Counts          Counts         `json:"counts"`
	Results         []TargetResult `json:"results"`
	// ResultsOmitted counts results left out to keep the report under MaxEnvelope.
	ResultsOmitted int `json:"results_omitted,omitempty"`
}

package ghost

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"github.com/edgectl/edgectl/bus"
)

// ErrNotFound is returned by store queries for an unknown id.
var ErrNotFound = errors.New("execution not found")

// Execution states.
const (
	StateStarted  = "started"
	StateFinished = "finished"
)

// Execution is what the Ghost knows of one command's execution.
type Execution struct {
	ExecutionID string            `json:"execution_id"`
	CommandID   string            `json:"command_id"`
	MessageID   string            `json:"message_id"`
	IntentID    string            `json:"intent_id"`
	TraceID     string            `json:"trace_id"`
	SeedID      string            `json:"seed_id"`
	Operation   string            `json:"operation"`
	Args        map[string]string `json:"args,omitempty"`
	Idempotent  bool              `json:"idempotent"`
	State       string            `json:"state"`
	StartedMS   int64             `json:"started_ms"`
	FinishedMS  int64             `json:"finished_ms,omitempty"`
	// Event is the terminal event once the execution finished: re-sent as is on duplicates.
	Event *bus.Event `json:"event,omitempty"`
	// Acked is set when Mirage answered event.ack for the event.
	Acked bool `json:"acked,omitempty"`
	// Stored is set when EDGE_EVT confirmed storing the event (its publish ack): from
	// then on Mirage's durable consumer delivers it, and the Ghost re-sends it only when
	// a Mirage shows itself and has not acknowledged it.
	Stored bool `json:"stored,omitempty"`
	// Command is the command as received, kept until the execution finishes so that a
	// restart can resume it.
	Command *bus.Command `json:"command,omitempty"`
	// Refusal is why the command was refused, on the record of a refusal: a restart that
	// finds it not finished ends it with the same refusal (nothing ran), not as
	// interrupted.
	Refusal *bus.Error `json:"refusal,omitempty"`
}

// appendJSON appends the execution's JSON, as encoding/json writes it with HTML escaping
// off, without reflection: the durable store writes one or more for every command.
func (e *Execution) appendJSON(dst []byte) []byte {
	dst = bus.AppendString(bus.AppendKey(append(dst, '{'), true, "execution_id"), e.ExecutionID)
	for _, f := range [...]struct{ key, v string }{
		{"command_id", e.CommandID}, {"message_id", e.MessageID}, {"intent_id", e.IntentID},
		{"trace_id", e.TraceID}, {"seed_id", e.SeedID}, {"operation", e.Operation},
	} {
		dst = bus.AppendString(bus.AppendKey(dst, false, f.key), f.v)
	}
	if len(e.Args) > 0 {
		dst = bus.AppendStringMap(bus.AppendKey(dst, false, "args"), e.Args)
	}
	dst = strconv.AppendBool(bus.AppendKey(dst, false, "idempotent"), e.Idempotent)
	dst = bus.AppendString(bus.AppendKey(dst, false, "state"), e.State)
	dst = strconv.AppendInt(bus.AppendKey(dst, false, "started_ms"), e.StartedMS, 10)
	if e.FinishedMS != 0 {
		dst = strconv.AppendInt(bus.AppendKey(dst, false, "finished_ms"), e.FinishedMS, 10)
	}
	if e.Event != nil {
		dst = bus.AppendEvent(bus.AppendKey(dst, false, "event"), e.Event)
	}
	if e.Acked {
		dst = append(bus.AppendKey(dst, false, "acked"), "true"...)
	}
	if e.Stored {
		dst = append(bus.AppendKey(dst, false, "stored"), "true"...)
	}
	if e.Command != nil {
		dst = bus.AppendCommand(bus.AppendKey(dst, false, "command"), e.Command)
	}
	if e.Refusal != nil {
		dst = bus.AppendError(bus.AppendKey(dst, false, "refusal"), e.Refusal)
	}
	return append(dst, '}')
}

// ExecutionStore records executions so that a command_id runs at most once. Begin is the
// only way in: it claims a command_id atomically.
type ExecutionStore interface {
	// Begin records e as started unless an execution exists for e.CommandID; it then
	// returns that execution and false.
	Begin(ctx context.Context, e Execution) (Execution, bool, error)
	// Finish records the terminal event of a started execution.
	Finish(ctx context.Context, executionID string, ev *bus.Event) error
	// MarkAcked records that Mirage acknowledged the event of an execution.
	MarkAcked(ctx context.Context, commandID string) error
	// MarkStored records that EDGE_EVT confirmed storing the event of an execution. Like
	// MarkAcked it need not wait for the disk: a mark lost in a crash costs one re-send.
	MarkStored(ctx context.Context, commandID string) error
	// GetExecution returns an execution by execution_id, or ErrNotFound.
	GetExecution(ctx context.Context, executionID string) (Execution, error)
	// GetByCommandID returns an execution by command_id, or ErrNotFound.
	GetByCommandID(ctx context.Context, commandID string) (Execution, error)
	// GetByMessageID returns an execution by the message_id of its command, or ErrNotFound.
	GetByMessageID(ctx context.Context, messageID string) (Execution, error)
	// Unfinished returns executions that started and did not finish (after a crash).
	Unfinished(ctx context.Context) ([]Execution, error)
	// Unacked returns finished executions whose event Mirage has not acknowledged.
	Unacked(ctx context.Context) ([]Execution, error)
	// LastSeq returns the replay position: the EDGE_CMD stream sequence up to which
	// commands were handled.
	LastSeq(ctx context.Context) (uint64, error)
	// Position returns the replay position and the command_id of the command stored at
	// it ("" when unknown: none was saved with it, as by an older version), by which a
	// replay tells the command at the position from another one at the same sequence of
	// a recreated stream.
	Position(ctx context.Context) (seq uint64, commandID string, err error)
	// SetPosition advances the position to seq, whose command is commandID (never moves
	// it back).
	SetPosition(ctx context.Context, seq uint64, commandID string) error
	// ResetLastSeq moves the position back to 0: EDGE_CMD was recreated (its sequences are
	// new), or no longer holds the command at the position. born goes back to 0 with it
	// (every command in a recreated stream came after this store) only when the position
	// had reached born: every command up to born was handled and recorded then. Before
	// that, born stays: a cmd.<id> that reads as ending early (a replica lagging behind the
	// one that answered, a command removed by hand) is not told from a recreated one, and
	// the commands up to born not handled yet may have run under an earlier store.
	ResetLastSeq(ctx context.Context) error
	// Born returns the last sequence of cmd.<id> in EDGE_CMD when this store began
	// following it: a command stored at or before it predates the store, and an earlier
	// store of the id (a deleted state directory) may have run it. ok is false while the
	// store has never learnt it (a new store, before its first look at cmd.<id>). A store
	// written by a version without born has it 0: nothing predates it.
	Born(ctx context.Context) (seq uint64, ok bool, err error)
	// SetBorn records born, before any command it covers is handled.
	SetBorn(ctx context.Context, seq uint64) error
	Close() error
}

// MemoryStore is an ExecutionStore in process memory: fast, and forgotten on restart.
type MemoryStore struct {
	mu        sync.Mutex
	byExec    map[string]*Execution
	byCommand map[string]string
	byMessage map[string]string
	lastSeq   uint64
	lastCmd   string
	born      uint64
	bornKnown bool
}

// NewMemoryStore returns an empty in-memory store. Like a new durable store, it has not
// learnt born yet: a Ghost's first look at cmd.<id> sets it.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{byExec: map[string]*Execution{}, byCommand: map[string]string{}, byMessage: map[string]string{}}
}

func (s *MemoryStore) Begin(_ context.Context, e Execution) (Execution, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.byCommand[e.CommandID]; ok {
		return *s.byExec[id], false, nil
	}
	e.State = StateStarted
	c := e
	s.byExec[e.ExecutionID] = &c
	s.byCommand[e.CommandID] = e.ExecutionID
	if e.MessageID != "" {
		s.byMessage[e.MessageID] = e.ExecutionID
	}
	return c, true, nil
}

func (s *MemoryStore) Finish(_ context.Context, executionID string, ev *bus.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byExec[executionID]
	if !ok {
		return ErrNotFound
	}
	e.State = StateFinished
	e.FinishedMS = ev.FinishedMS
	e.Event = ev
	return nil
}

func (s *MemoryStore) MarkAcked(_ context.Context, commandID string) error {
	return s.mark(commandID, func(e *Execution) { e.Acked = true })
}

func (s *MemoryStore) MarkStored(_ context.Context, commandID string) error {
	return s.mark(commandID, func(e *Execution) { e.Stored = true })
}

// mark applies set to the execution of commandID.
func (s *MemoryStore) mark(commandID string, set func(*Execution)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byCommand[commandID]
	if !ok {
		return ErrNotFound
	}
	set(s.byExec[id])
	return nil
}

func (s *MemoryStore) get(id string, ok bool) (Execution, error) {
	if !ok {
		return Execution{}, ErrNotFound
	}
	return *s.byExec[id], nil
}

func (s *MemoryStore) GetExecution(_ context.Context, executionID string) (Execution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byExec[executionID]
	return s.get(executionID, ok)
}

func (s *MemoryStore) GetByCommandID(_ context.Context, commandID string) (Execution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byCommand[commandID]
	return s.get(id, ok)
}

func (s *MemoryStore) GetByMessageID(_ context.Context, messageID string) (Execution, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.byMessage[messageID]
	return s.get(id, ok)
}

func (s *MemoryStore) Unfinished(_ context.Context) ([]Execution, error) {
	return s.filter(func(e *Execution) bool { return e.State == StateStarted }), nil
}

func (s *MemoryStore) Unacked(_ context.Context) ([]Execution, error) {
	return s.filter(func(e *Execution) bool { return e.State == StateFinished && !e.Acked }), nil
}

func (s *MemoryStore) filter(keep func(*Execution) bool) []Execution {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Execution
	for _, e := range s.byExec {
		if keep(e) {
			out = append(out, *e)
		}
	}
	return out
}

func (s *MemoryStore) LastSeq(_ context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSeq, nil
}

func (s *MemoryStore) Position(_ context.Context) (uint64, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSeq, s.lastCmd, nil
}

func (s *MemoryStore) SetPosition(_ context.Context, seq uint64, commandID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq > s.lastSeq {
		s.lastSeq, s.lastCmd = seq, commandID
	}
	return nil
}

func (s *MemoryStore) ResetLastSeq(_ context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.bornKnown || s.born <= s.lastSeq {
		s.born, s.bornKnown = 0, true
	}
	s.lastSeq, s.lastCmd = 0, ""
	return nil
}

func (s *MemoryStore) Born(_ context.Context) (uint64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.born, s.bornKnown, nil
}

func (s *MemoryStore) SetBorn(_ context.Context, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.born, s.bornKnown = seq, true
	return nil
}

func (s *MemoryStore) Close() error { return nil }

package ghost

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgectl/edgectl/bus"
)

// Retention of the durable store. Records are kept at least MinRetention (the seed's
// duplicate window) and, by default, as long as EDGE_CMD keeps commands, so that any
// command a replay can bring back is recognised.
const (
	MinRetention     = 15 * time.Minute
	DefaultRetention = bus.CommandRetention
	DefaultMaxRecord = 200_000
)

var (
	bucketExec    = []byte("executions")
	bucketCommand = []byte("by_command")
	bucketMessage = []byte("by_message")
	bucketMeta    = []byte("meta")
	keyLastSeq    = []byte("last_seq")
	// keyLastCmd holds the position's sequence again, then its command_id: beside
	// last_seq, whose 8 bytes older versions read (and write, leaving this key stale,
	// which the sequence in it tells).
	keyLastCmd = []byte("last_cmd")
	// keyBorn holds born (ExecutionStore.Born): 8 bytes once known, bornPending in a store
	// made by this version that has not learnt it yet. A store made by an older version
	// has none: nothing predates it, as before.
	keyBorn     = []byte("born")
	bornPending = []byte{0}
)

// BoltStore is the durable ExecutionStore (go.etcd.io/bbolt): a command_id recorded here
// is never executed again, across restarts and crashes, for the retention period.
// Writes are group-committed: one writer puts every write that queued while the last
// transaction was committing into the next one, so a lone write waits for one fsync and
// concurrent executions share them.
type BoltStore struct {
	db        *bolt.DB
	retention time.Duration
	maxRecs   int
	now       func() time.Time

	pruneMu sync.Mutex

	// Started executions of idempotent operations are kept in memory only: if the Ghost
	// dies before they finish, the command is replayed and runs again, which such an
	// operation allows. It saves one fsync per execution. Keyed by command_id and by
	// execution_id.
	mu         sync.Mutex
	volatile   map[string]*Execution
	volatileEx map[string]*Execution
	// unsaved holds the command_ids of finished idempotent executions whose record the
	// store failed to write (dropped from memory) while their event was not known stored
	// in EDGE_EVT. While any is held, the replay position is not written: it could pass
	// that command, which a crash would then lose (no record to re-send its event from, no
	// replay to read it again). A command leaves once its event's publish ack or event.ack
	// arrives (setMark), or a record of it is written.
	unsaved map[string]struct{}

	// writes queue for the writer; wmu guards sending against Close.
	writes  chan writeReq
	wmu     sync.RWMutex
	closed  bool
	closing chan struct{}
	flushed chan struct{}

	// Marks (event.ack received, event stored) waiting to be written, by command_id: they
	// ride along with the writer's next transaction. A mark lost in a crash only makes
	// the restart re-send an event Mirage counts once, so none is worth an fsync of its
	// own.
	markMu   sync.Mutex
	marks    map[string]mark
	writing  map[string]mark // taken by the transaction being committed
	markKick chan struct{}
	// deferred are writes nobody waits for (finished idempotent executions): like marks,
	// they ride along with the next transaction or get one after markDelay.
	deferred []writeReq
}

// mark is what a queued mark sets on an execution's record.
type mark uint8

const (
	markAcked  mark = 1 << iota // Execution.Acked
	markStored                  // Execution.Stored
)

// writeReq is one write for the group commit: fn runs inside the writer's transaction
// and done receives the outcome once that transaction is committed (or, for a deferred
// write, after is called with it).
type writeReq struct {
	fn    func(*bolt.Tx) error
	done  chan error
	after func(error)
	// position marks a write of the replay position: when the group fails, it is not
	// tried alone after a deferred record that failed (it may pass that record's command),
	// nor written at all while such a command's event is not known stored (unsaved).
	position bool
}

func (r writeReq) finish(err error) {
	if r.after != nil {
		r.after(err)
		return
	}
	r.done <- err
}

// maxGroup bounds the writes of one transaction.
const maxGroup = 1024

// markDelay is how long marks wait for a write to ride along with before they get a
// transaction of their own: an fsync for marks alone would compete for the disk with the
// next execution's records.
const markDelay = 200 * time.Millisecond

var errStoreClosed = errors.New("execution store closed")

// errPositionHeld: the replay position is not written, a finished execution's record
// having failed, in the same group commit or in an earlier one while its event is not
// known stored in EDGE_EVT (BoltStore.unsaved).
var errPositionHeld = errors.New("replay position not moved: a finished execution's record failed")

// positionHeld reports whether the replay position must not be written now.
func (s *BoltStore) positionHeld() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.unsaved) > 0
}

// holdPositions finishes the position writes of group with errPositionHeld when the
// position is held, and returns the writes left.
func (s *BoltStore) holdPositions(group []writeReq) []writeReq {
	if !s.positionHeld() {
		return group
	}
	kept := group[:0]
	for _, r := range group {
		if r.position {
			r.finish(errPositionHeld)
			continue
		}
		kept = append(kept, r)
	}
	return kept
}

// BoltOptions tune a BoltStore.
type BoltOptions struct {
	// Retention is how long finished records are kept (at least MinRetention).
	Retention time.Duration
	// MaxRecords bounds the store; beyond it the oldest acknowledged records go first.
	MaxRecords int
	Now        func() time.Time
}

// OpenBoltStore opens (creating if needed) the store at path.
func OpenBoltStore(path string, o BoltOptions) (*BoltStore, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("execution store %s is locked: is another ghostctl running with this state directory?", path)
		}
		return nil, fmt.Errorf("execution store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketExec, bucketCommand, bucketMessage, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// A store that never handled a command (no position, no record) and has no born
		// is new: it learns born at its Ghost's first look at cmd.<id>. Marked now, so
		// that it stays new until then, whatever it records meanwhile.
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keyBorn) == nil && meta.Get(keyLastSeq) == nil {
			if k, _ := tx.Bucket(bucketExec).Cursor().First(); k == nil {
				return meta.Put(keyBorn, bornPending)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if o.Retention < MinRetention {
		if o.Retention == 0 {
			o.Retention = DefaultRetention
		} else {
			o.Retention = MinRetention
		}
	}
	if o.MaxRecords <= 0 {
		o.MaxRecords = DefaultMaxRecord
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &BoltStore{db: db, retention: o.Retention, maxRecs: o.MaxRecords, now: o.Now,
		volatile: map[string]*Execution{}, volatileEx: map[string]*Execution{}, unsaved: map[string]struct{}{},
		writes: make(chan writeReq, maxGroup), closing: make(chan struct{}), flushed: make(chan struct{}),
		marks: map[string]mark{}, markKick: make(chan struct{}, 1)}
	go s.writer()
	return s, nil
}

func (s *BoltStore) Begin(_ context.Context, e Execution) (Execution, bool, error) {
	if e.Idempotent {
		s.mu.Lock()
		defer s.mu.Unlock()
		if v, ok := s.volatile[e.CommandID]; ok {
			return *v, false, nil
		}
		if prior, err := s.lookup(bucketCommand, e.CommandID); err == nil {
			return prior, false, nil
		} else if !errors.Is(err, ErrNotFound) {
			return Execution{}, false, err
		}
		e.State = StateStarted
		c := e
		s.volatile[e.CommandID], s.volatileEx[e.ExecutionID] = &c, &c
		return c, true, nil
	}
	return s.beginDurable(e)
}

// beginDurable records a started execution before it runs (non-idempotent operations and
// refusals). An idempotent execution of the same command_id held in memory (running, or
// finished and not written yet) is the command's execution: it is returned, not recorded
// over.
func (s *BoltStore) beginDurable(e Execution) (Execution, bool, error) {
	s.mu.Lock()
	v, inMemory := s.volatile[e.CommandID]
	var held Execution
	if inMemory {
		held = *v
	}
	s.mu.Unlock()
	if inMemory {
		return held, false, nil
	}
	var existing Execution
	fresh := false
	err := s.write(func(tx *bolt.Tx) error {
		if e.State == "" {
			e.State = StateStarted
		}
		var err error
		existing = e
		if fresh, err = putNew(tx, &existing); err != nil || fresh {
			return err
		}
		return nil
	})
	return existing, fresh, err
}

// putNew records e with its indexes unless an execution of its command_id is recorded:
// then it reads that one into e and returns false.
func putNew(tx *bolt.Tx, e *Execution) (bool, error) {
	if id := tx.Bucket(bucketCommand).Get([]byte(e.CommandID)); id != nil {
		return false, getExec(tx, id, e)
	}
	if err := tx.Bucket(bucketExec).Put([]byte(e.ExecutionID), e.appendJSON(nil)); err != nil {
		return false, err
	}
	if err := tx.Bucket(bucketCommand).Put([]byte(e.CommandID), []byte(e.ExecutionID)); err != nil {
		return false, err
	}
	if e.MessageID != "" {
		if err := tx.Bucket(bucketMessage).Put([]byte(e.MessageID), []byte(e.ExecutionID)); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (s *BoltStore) Finish(_ context.Context, executionID string, ev *bus.Event) error {
	s.mu.Lock()
	v, ok := s.volatileEx[executionID]
	s.mu.Unlock()
	if ok {
		// An idempotent execution: its record is written without holding anyone, in the
		// writer's next transaction. Until then duplicates find it, finished, in memory;
		// if the Ghost dies before, the command may run again, which it allows. It is
		// marked finished and queued under one lock, so that whoever sees it finished (a
		// catch-up moving the replay position) writes after its record.
		s.mu.Lock()
		defer s.mu.Unlock()
		v.State, v.FinishedMS, v.Event = StateFinished, ev.FinishedMS, ev
		var written Execution // fn and after both run on the writer goroutine
		s.writeDeferred(func(tx *bolt.Tx) error {
			s.mu.Lock()
			written = *v
			s.mu.Unlock()
			e := written
			_, err := putNew(tx, &e)
			return err
		}, func(err error) {
			// Written or not, it leaves memory: a failed write only loses what a crash
			// would (a re-run of an idempotent operation), as long as no replay position
			// passes the command before its event is stored: until then the command is
			// held unsaved. A mark that came after the record was copied is queued, so
			// that it is not lost with the memory copy.
			s.mu.Lock()
			switch {
			case err == nil:
				delete(s.unsaved, v.CommandID)
			case !v.Stored && !v.Acked:
				s.unsaved[v.CommandID] = struct{}{}
			}
			var late mark
			if err == nil && v.Acked && !written.Acked {
				late |= markAcked
			}
			if err == nil && v.Stored && !written.Stored {
				late |= markStored
			}
			delete(s.volatile, v.CommandID)
			delete(s.volatileEx, executionID)
			s.mu.Unlock()
			if late != 0 {
				s.queueMark(v.CommandID, late)
			}
		})
		return nil
	}
	return s.update(executionID, func(e *Execution) {
		e.State = StateFinished
		e.FinishedMS = ev.FinishedMS
		e.Event = ev
	})
}

// MarkAcked notes that Mirage acknowledged the event of commandID. It does not wait for
// the disk: an execution still being recorded is recorded acknowledged, any other is
// marked by the writer's next transaction.
func (s *BoltStore) MarkAcked(_ context.Context, commandID string) error {
	s.setMark(commandID, markAcked)
	return nil
}

// MarkStored notes that EDGE_EVT stored the event of commandID, as MarkAcked does.
func (s *BoltStore) MarkStored(_ context.Context, commandID string) error {
	s.setMark(commandID, markStored)
	return nil
}

func (s *BoltStore) setMark(commandID string, m mark) {
	s.mu.Lock()
	delete(s.unsaved, commandID) // its event is in EDGE_EVT: a position may pass it
	if v, ok := s.volatile[commandID]; ok {
		v.Acked = v.Acked || m&markAcked != 0
		v.Stored = v.Stored || m&markStored != 0
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.queueMark(commandID, m)
}

func (s *BoltStore) queueMark(commandID string, m mark) {
	s.markMu.Lock()
	s.marks[commandID] |= m
	s.markMu.Unlock()
	select {
	case s.markKick <- struct{}{}:
	default:
	}
}

// pending returns the marks of commandID not written yet.
func (s *BoltStore) pending(commandID string) mark {
	s.markMu.Lock()
	defer s.markMu.Unlock()
	return s.marks[commandID] | s.writing[commandID]
}

// withPending returns e with the marks not written yet applied.
func (s *BoltStore) withPending(e Execution) Execution {
	m := s.pending(e.CommandID)
	e.Acked = e.Acked || m&markAcked != 0
	e.Stored = e.Stored || m&markStored != 0
	return e
}

// write runs fn in the writer's next transaction and returns once that transaction is
// committed (fn's error, or the commit's).
func (s *BoltStore) write(fn func(*bolt.Tx) error) error {
	return s.send(writeReq{fn: fn, done: make(chan error, 1)})
}

// writePosition is write for a write of the replay position.
func (s *BoltStore) writePosition(fn func(*bolt.Tx) error) error {
	return s.send(writeReq{fn: fn, done: make(chan error, 1), position: true})
}

func (s *BoltStore) send(req writeReq) error {
	s.wmu.RLock()
	if s.closed {
		s.wmu.RUnlock()
		return errStoreClosed
	}
	s.writes <- req
	s.wmu.RUnlock()
	return <-req.done
}

// writeDeferred queues fn for a coming transaction without waiting; after is called
// with its outcome.
func (s *BoltStore) writeDeferred(fn func(*bolt.Tx) error, after func(error)) {
	s.wmu.RLock()
	closed := s.closed
	if !closed {
		s.markMu.Lock()
		s.deferred = append(s.deferred, writeReq{fn: fn, after: after})
		s.markMu.Unlock()
	}
	s.wmu.RUnlock()
	if closed {
		go after(errStoreClosed) // the caller may hold s.mu, which after takes
		return
	}
	select {
	case s.markKick <- struct{}{}:
	default:
	}
}

// writer is the group commit: it waits for a write or a mark, takes every write queued
// meanwhile and the waiting marks, and commits them in one transaction. On Close it
// commits what is left and returns.
func (s *BoltStore) writer() {
	defer close(s.flushed)
	group := make([]writeReq, 0, maxGroup)
	var marksDue <-chan time.Time
	for {
		stopping := false
		group = group[:0]
		select {
		case r := <-s.writes:
			group = append(group, r)
		case <-s.markKick:
			if marksDue == nil {
				marksDue = time.After(markDelay)
			}
			continue
		case <-marksDue:
		case <-s.closing:
			stopping = true
		}
		marksDue = nil
	drain:
		for len(group) < maxGroup || stopping {
			select {
			case r := <-s.writes:
				group = append(group, r)
			default:
				break drain
			}
		}
		marks, deferred := s.takeMarks()
		// The deferred records first: should the group fail and its writes be tried one
		// by one, a finished execution's record still comes before a replay position
		// moved past its command (commit).
		s.commit(append(deferred, group...), marks)
		s.markMu.Lock()
		s.writing = nil
		s.markMu.Unlock()
		if stopping {
			return
		}
	}
}

// takeMarks takes the queued marks and deferred writes for the next transaction.
func (s *BoltStore) takeMarks() (map[string]mark, []writeReq) {
	s.markMu.Lock()
	defer s.markMu.Unlock()
	deferred := s.deferred
	s.deferred = nil
	if len(s.marks) == 0 {
		return nil, deferred
	}
	marks := s.marks
	s.marks, s.writing = map[string]mark{}, marks
	return marks, deferred
}

// commit runs a group in one transaction. When it fails, each write is tried again in a
// transaction of its own, so that one failing write does not fail the others. A write of
// the replay position is refused while the position is held (unsaved), and, tried alone,
// after a deferred record of the group that failed.
func (s *BoltStore) commit(group []writeReq, marks map[string]mark) {
	group = s.holdPositions(group)
	if len(group) == 0 && len(marks) == 0 {
		return
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, r := range group {
			if err := r.fn(tx); err != nil {
				return err
			}
		}
		return applyMarks(tx, marks)
	})
	if err == nil {
		for _, r := range group {
			r.finish(nil)
		}
		return
	}
	var recordLost error
	for _, r := range group {
		if r.position && recordLost != nil {
			r.finish(fmt.Errorf("%w: %w", errPositionHeld, recordLost))
			continue
		}
		if r.position && s.positionHeld() {
			r.finish(errPositionHeld)
			continue
		}
		err := s.db.Update(r.fn)
		if err != nil && r.after != nil && recordLost == nil {
			recordLost = err
		}
		r.finish(err)
	}
	// Failed marks are dropped: the events are re-sent (at the next start, or when a
	// Mirage shows itself) and Mirage counts them once.
	_ = s.db.Update(func(tx *bolt.Tx) error { return applyMarks(tx, marks) })
}

func applyMarks(tx *bolt.Tx, marks map[string]mark) error {
	for id, m := range marks {
		execID := tx.Bucket(bucketCommand).Get([]byte(id))
		if execID == nil {
			continue
		}
		var e Execution
		if err := getExec(tx, execID, &e); err != nil {
			continue
		}
		acked, stored := e.Acked || m&markAcked != 0, e.Stored || m&markStored != 0
		if acked == e.Acked && stored == e.Stored {
			continue
		}
		e.Acked, e.Stored = acked, stored
		if err := tx.Bucket(bucketExec).Put(execID, e.appendJSON(nil)); err != nil {
			return err
		}
	}
	return nil
}

func (s *BoltStore) update(executionID string, f func(*Execution)) error {
	return s.write(func(tx *bolt.Tx) error {
		var e Execution
		if err := getExec(tx, []byte(executionID), &e); err != nil {
			return err
		}
		f(&e)
		return tx.Bucket(bucketExec).Put([]byte(executionID), e.appendJSON(nil))
	})
}

func getExec(tx *bolt.Tx, id []byte, e *Execution) error {
	data := tx.Bucket(bucketExec).Get(id)
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, e)
}

func (s *BoltStore) lookup(index []byte, key string) (Execution, error) {
	var e Execution
	err := s.db.View(func(tx *bolt.Tx) error {
		id := []byte(key)
		if index != nil {
			id = tx.Bucket(index).Get([]byte(key))
			if id == nil {
				return ErrNotFound
			}
		}
		return getExec(tx, id, &e)
	})
	return e, err
}

func (s *BoltStore) GetExecution(_ context.Context, executionID string) (Execution, error) {
	s.mu.Lock()
	if v, ok := s.volatileEx[executionID]; ok {
		e := *v
		s.mu.Unlock()
		return e, nil
	}
	s.mu.Unlock()
	return s.lookup(nil, executionID)
}

func (s *BoltStore) GetByCommandID(_ context.Context, commandID string) (Execution, error) {
	s.mu.Lock()
	if v, ok := s.volatile[commandID]; ok {
		e := *v
		s.mu.Unlock()
		return e, nil
	}
	s.mu.Unlock()
	e, err := s.lookup(bucketCommand, commandID)
	if err == nil {
		e = s.withPending(e)
	}
	return e, err
}

func (s *BoltStore) GetByMessageID(_ context.Context, messageID string) (Execution, error) {
	return s.lookup(bucketMessage, messageID)
}

func (s *BoltStore) scan(keep func(*Execution) bool) ([]Execution, error) {
	var out []Execution
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketExec).ForEach(func(_, v []byte) error {
			var e Execution
			if json.Unmarshal(v, &e) == nil && keep(&e) {
				out = append(out, e)
			}
			return nil
		})
	})
	return out, err
}

func (s *BoltStore) Unfinished(_ context.Context) ([]Execution, error) {
	return s.scan(func(e *Execution) bool { return e.State == StateStarted })
}

func (s *BoltStore) Unacked(_ context.Context) ([]Execution, error) {
	return s.scan(func(e *Execution) bool {
		*e = s.withPending(*e)
		return e.State == StateFinished && !e.Acked
	})
}

func (s *BoltStore) LastSeq(_ context.Context) (uint64, error) {
	var seq uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyLastSeq); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return seq, err
}

func (s *BoltStore) Position(_ context.Context) (uint64, string, error) {
	var seq uint64
	var id string
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyLastSeq); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		if v := b.Get(keyLastCmd); len(v) > 8 && seq > 0 && binary.BigEndian.Uint64(v) == seq {
			id = string(v[8:])
		}
		return nil
	})
	return seq, id, err
}

func (s *BoltStore) SetPosition(_ context.Context, seq uint64, commandID string) error {
	return s.writePosition(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get(keyLastSeq); len(v) == 8 && binary.BigEndian.Uint64(v) >= seq {
			return nil
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], seq)
		if err := b.Put(keyLastSeq, buf[:]); err != nil {
			return err
		}
		if commandID == "" {
			return b.Delete(keyLastCmd)
		}
		return b.Put(keyLastCmd, append(buf[:], commandID...))
	})
}

func (s *BoltStore) ResetLastSeq(_ context.Context) error {
	return s.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		var pos uint64
		if v := b.Get(keyLastSeq); len(v) == 8 {
			pos = binary.BigEndian.Uint64(v)
		}
		if err := b.Delete(keyLastSeq); err != nil {
			return err
		}
		if err := b.Delete(keyLastCmd); err != nil {
			return err
		}
		if v := b.Get(keyBorn); len(v) == 8 && binary.BigEndian.Uint64(v) > pos {
			return nil // the position had not reached born: kept (ExecutionStore.ResetLastSeq)
		}
		return b.Put(keyBorn, make([]byte, 8))
	})
}

func (s *BoltStore) Born(_ context.Context) (uint64, bool, error) {
	var seq uint64
	ok := true
	err := s.db.View(func(tx *bolt.Tx) error {
		switch v := tx.Bucket(bucketMeta).Get(keyBorn); len(v) {
		case 8:
			seq = binary.BigEndian.Uint64(v)
		case 0: // none: a store made by an older version
		default:
			ok = false
		}
		return nil
	})
	return seq, ok, err
}

func (s *BoltStore) SetBorn(_ context.Context, seq uint64) error {
	return s.write(func(tx *bolt.Tx) error {
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], seq)
		return tx.Bucket(bucketMeta).Put(keyBorn, buf[:])
	})
}

// Prune removes finished records older than the retention and, when the store holds more
// than MaxRecords, the oldest finished ones beyond it (acknowledged first). Started
// records are never pruned. It returns how many records it removed.
func (s *BoltStore) Prune(_ context.Context) (int, error) {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	cutoff := s.now().Add(-s.retention).UnixMilli()
	type rec struct {
		id, cmd, msg string
		finished     int64
		acked        bool
	}
	var all []rec
	total := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketExec).ForEach(func(k, v []byte) error {
			total++
			var e Execution
			if json.Unmarshal(v, &e) != nil || e.State != StateFinished {
				return nil
			}
			all = append(all, rec{string(k), e.CommandID, e.MessageID, e.FinishedMS, e.Acked})
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	var drop []rec
	var keep []rec
	for _, r := range all {
		if r.finished < cutoff {
			drop = append(drop, r)
		} else {
			keep = append(keep, r)
		}
	}
	if excess := total - len(drop) - s.maxRecs; excess > 0 {
		// Oldest first, acknowledged before unacknowledged.
		sortRecs := func(i, j int) bool {
			if keep[i].acked != keep[j].acked {
				return keep[i].acked
			}
			return keep[i].finished < keep[j].finished
		}
		sort.Slice(keep, sortRecs)
		if excess > len(keep) {
			excess = len(keep)
		}
		drop = append(drop, keep[:excess]...)
	}
	if len(drop) == 0 {
		return 0, nil
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, r := range drop {
			if err := tx.Bucket(bucketExec).Delete([]byte(r.id)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketCommand).Delete([]byte(r.cmd)); err != nil {
				return err
			}
			if r.msg != "" {
				if err := tx.Bucket(bucketMessage).Delete([]byte(r.msg)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return len(drop), err
}

// Close commits the writes and marks still queued and closes the database.
func (s *BoltStore) Close() error {
	s.wmu.Lock()
	if s.closed {
		s.wmu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.wmu.Unlock()
	<-s.flushed
	return s.db.Close()
}

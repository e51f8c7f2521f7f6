package ghost

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgectl/edgectl/bus"
)

// When a group commit fails and its writes are tried one by one, a replay position that
// came after a finished execution's record that failed is not written: it could pass that
// record's command, which a crash would then lose. The writer puts deferred records first.
func TestPositionIsNotWrittenPastARecordThatFailed(t *testing.T) {
	s, err := OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	broken := errors.New("record cannot be written")
	var recordErr error
	record := writeReq{fn: func(*bolt.Tx) error { return broken }, after: func(err error) { recordErr = err }}
	position := writeReq{fn: func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyLastSeq, []byte{0, 0, 0, 0, 0, 0, 0, 9}) },
		done: make(chan error, 1), position: true}
	s.commit([]writeReq{record, position}, nil)
	if !errors.Is(recordErr, broken) {
		t.Fatalf("the record's write ended %v, want its failure", recordErr)
	}
	if err := <-position.done; err == nil {
		t.Fatal("the position was written after the record before it failed")
	}
	if seq, err := s.LastSeq(context.Background()); err != nil || seq != 0 {
		t.Fatalf("replay position %d (%v), want 0", seq, err)
	}
}

// The same through the writer: a deferred record queued, then a position write that
// joins it in one group. The group fails on the record; tried one by one, the record
// comes first (the writer orders deferred records before the group's writes), and the
// position is not written.
func TestWriterPutsDeferredRecordsBeforeThePosition(t *testing.T) {
	s, err := OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	broken := errors.New("record cannot be written")
	recorded := make(chan error, 1)
	s.writeDeferred(func(*bolt.Tx) error { return broken }, func(err error) { recorded <- err })
	if err := s.SetPosition(context.Background(), 9, "cmd_x"); err == nil {
		t.Fatal("the position was written in the group whose deferred record failed")
	}
	if err := <-recorded; !errors.Is(err, broken) {
		t.Fatalf("the deferred record ended %v, want its failure", err)
	}
	if seq, err := s.LastSeq(context.Background()); err != nil || seq != 0 {
		t.Fatalf("replay position %d (%v), want 0", seq, err)
	}
}

// A finished idempotent execution whose record fails is dropped from memory. Until its
// event is known stored in EDGE_EVT (its publish ack, or Mirage's event.ack), no replay
// position is written, in a later group commit either: it could pass the command, which a
// crash would then lose. One whose event was stored before its record failed holds
// nothing; a record of the command written later releases the hold as well.
func TestPositionWaitsForTheEventOfARecordThatFailed(t *testing.T) {
	for _, tc := range []struct {
		name string
		// before runs after Finish, before the record's write; release after it failed.
		before, release func(s *BoltStore, commandID string)
		held            bool
	}{
		{"event stored after the record failed", nil,
			func(s *BoltStore, id string) { _ = s.MarkStored(context.Background(), id) }, true},
		{"event acknowledged after the record failed", nil,
			func(s *BoltStore, id string) { _ = s.MarkAcked(context.Background(), id) }, true},
		{"a later record of the command written", nil,
			func(s *BoltStore, id string) {
				ctx := context.Background()
				if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketCommand).Delete([]byte(id)) }); err != nil {
					t.Fatal(err)
				}
				if _, fresh, err := s.Begin(ctx, Execution{ExecutionID: "exe_again", CommandID: id, Idempotent: true}); err != nil || !fresh {
					t.Fatalf("begin again: fresh %v, %v", fresh, err)
				}
				if err := s.Finish(ctx, "exe_again", &bus.Event{CommandID: id}); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the second record to be written", func() bool {
					e, err := s.lookup(bucketCommand, id)
					return err == nil && e.State == StateFinished
				})
			}, true},
		{"event stored before the record failed",
			func(s *BoltStore, id string) { _ = s.MarkStored(context.Background(), id) }, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			const id = "cmd_unsaved"
			if err := DamageCommandIndex(s, id); err != nil { // its record cannot be written
				t.Fatal(err)
			}
			if _, fresh, err := s.Begin(ctx, Execution{ExecutionID: "exe_unsaved", CommandID: id, Idempotent: true}); err != nil || !fresh {
				t.Fatalf("begin: fresh %v, %v", fresh, err)
			}
			if err := s.Finish(ctx, "exe_unsaved", &bus.Event{CommandID: id}); err != nil {
				t.Fatal(err)
			}
			if tc.before != nil {
				tc.before(s, id)
			}
			waitFor(t, "the record to fail and leave memory", func() bool {
				_, err := s.GetByCommandID(ctx, id)
				return errors.Is(err, ErrNotFound)
			})
			err = s.SetPosition(ctx, 9, "cmd_later") // a later group commit
			if !tc.held {
				if err != nil {
					t.Fatalf("position not written (%v), though the event was stored", err)
				}
				return
			}
			if !errors.Is(err, errPositionHeld) {
				t.Fatalf("the position was written (%v) past a command without record or stored event", err)
			}
			if seq, err := s.LastSeq(ctx); err != nil || seq != 0 {
				t.Fatalf("replay position %d (%v), want 0", seq, err)
			}
			tc.release(s, id)
			if err := s.SetPosition(ctx, 9, "cmd_later"); err != nil {
				t.Fatalf("the position is still held (%v)", err)
			}
			if seq, err := s.LastSeq(ctx); err != nil || seq != 9 {
				t.Fatalf("replay position %d (%v), want 9", seq, err)
			}
		})
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

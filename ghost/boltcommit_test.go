package ghost

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
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

package ghost

import (
	"context"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A new store has not learnt born; once set it is kept (across a reopen for the durable
// store), and a reset of the position (EDGE_CMD recreated) sets it to 0, known, once the
// position had reached it.
func TestStoreBorn(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "executions.db")
	open := func() ExecutionStore {
		s, err := OpenBoltStore(path, BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	check := func(what string, s ExecutionStore, want uint64, wantOK bool) {
		t.Helper()
		if got, ok, err := s.Born(ctx); err != nil || got != want || ok != wantOK {
			t.Fatalf("%s: Born() = %d, %v, %v; want %d, %v", what, got, ok, err, want, wantOK)
		}
	}
	mem := NewMemoryStore()
	check("new memory store", mem, 0, false)
	bs := open()
	check("new durable store", bs, 0, false)
	// What a new store records before it learns born (a live command) leaves it new.
	if _, _, err := bs.Begin(ctx, Execution{ExecutionID: "exe_1", CommandID: "cmd_1"}); err != nil {
		t.Fatal(err)
	}
	_ = bs.Close()
	bs = open()
	check("new durable store with a record, reopened", bs, 0, false)
	for _, s := range []ExecutionStore{mem, bs} {
		if err := s.SetBorn(ctx, 7); err != nil {
			t.Fatal(err)
		}
		check("after SetBorn(7)", s, 7, true)
	}
	_ = bs.Close()
	bs = open()
	check("reopened after SetBorn(7)", bs, 7, true)
	// A reset before the position reached born keeps it: the commands up to born not
	// handled yet still predate the store (a cmd.<id> that reads short may be a lagging
	// replica's view). Once the position reached born, a reset sets it to 0.
	for _, s := range []ExecutionStore{mem, bs} {
		if err := s.SetPosition(ctx, 6, "cmd_6"); err != nil {
			t.Fatal(err)
		}
		if err := s.ResetLastSeq(ctx); err != nil {
			t.Fatal(err)
		}
		check("after ResetLastSeq at position 6", s, 7, true)
		if err := s.SetPosition(ctx, 7, "cmd_7"); err != nil {
			t.Fatal(err)
		}
		if err := s.ResetLastSeq(ctx); err != nil {
			t.Fatal(err)
		}
		check("after ResetLastSeq at position 7", s, 0, true)
	}
	_ = bs.Close()
}

// A store written by a version without born (a position, or records, and no born) has
// born 0: nothing predates it, and it behaves as before.
func TestStoreWithoutBornPredatesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		fill func(tx *bolt.Tx) error
	}{
		{"a position", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyLastSeq, []byte{0, 0, 0, 0, 0, 0, 0, 5})
		}},
		{"a record", func(tx *bolt.Tx) error {
			e := Execution{ExecutionID: "exe_old", CommandID: "cmd_old", State: StateFinished}
			_, err := putNew(tx, &e)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "executions.db")
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bolt.Tx) error {
				for _, b := range [][]byte{bucketExec, bucketCommand, bucketMessage, bucketMeta} {
					if _, err := tx.CreateBucketIfNotExists(b); err != nil {
						return err
					}
				}
				return tc.fill(tx)
			})
			if cerr := db.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			s, err := OpenBoltStore(path, BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got, ok, err := s.Born(context.Background()); err != nil || got != 0 || !ok {
				t.Fatalf("Born() = %d, %v, %v; want 0, true", got, ok, err)
			}
		})
	}
}

package ghost

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgectl/edgectl/bus"
)

// pruneRecord is one execution recorded before a Prune: cmd_<name>, exe_<name> and
// msg_<name>, finished age before the store's clock (or still started when running),
// acknowledged by Mirage when acked.
type pruneRecord struct {
	name    string
	age     time.Duration
	running bool
	acked   bool
}

// pruneSeq is the replay position every store of these tests holds: Prune must leave it.
const pruneSeq = 42

// openPruneStore opens a real store in t.TempDir() whose clock (BoltOptions.Now, all
// Prune reads of time) reads *now, and records recs in it. They are not idempotent, so
// each is on disk when Begin and Finish return, as Prune sees it.
func openPruneStore(t *testing.T, o BoltOptions, now *time.Time, recs []pruneRecord) *BoltStore {
	t.Helper()
	ctx := context.Background()
	o.Now = func() time.Time { return *now }
	st, err := OpenBoltStore(filepath.Join(t.TempDir(), "executions.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	for _, r := range recs {
		finished := now.Add(-r.age)
		e := Execution{ExecutionID: "exe_" + r.name, CommandID: "cmd_" + r.name, MessageID: "msg_" + r.name,
			StartedMS: finished.Add(-time.Second).UnixMilli()}
		if _, fresh, err := st.Begin(ctx, e); err != nil || !fresh {
			t.Fatalf("begin %s: fresh %v err %v", r.name, fresh, err)
		}
		if r.running {
			continue
		}
		if err := st.Finish(ctx, e.ExecutionID, &bus.Event{EventID: "evt_" + r.name, FinishedMS: finished.UnixMilli()}); err != nil {
			t.Fatalf("finish %s: %v", r.name, err)
		}
		if r.acked {
			if err := st.MarkAcked(ctx, e.CommandID); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Acks wait for a write to ride along with: this one carries them to disk, where
	// Prune reads them.
	if err := st.SetPosition(ctx, pruneSeq, ""); err != nil {
		t.Fatal(err)
	}
	onDisk := stored(t, st)
	for _, r := range recs {
		if got := onDisk["cmd_"+r.name]; got.Acked != r.acked {
			t.Fatalf("%s recorded acked %v, want %v", r.name, got.Acked, r.acked)
		}
	}
	return st
}

// stored reads the records on disk by command_id, and fails the test unless both indexes
// name exactly those records: a pruned record must take its index entries with it.
func stored(t *testing.T, st *BoltStore) map[string]Execution {
	t.Helper()
	out := map[string]Execution{}
	byExe := map[string]Execution{}
	err := st.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketExec).ForEach(func(k, v []byte) error {
			var e Execution
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out[e.CommandID], byExe[string(k)] = e, e
			return nil
		}); err != nil {
			return err
		}
		for _, index := range []struct {
			bucket []byte
			key    func(Execution) string
		}{
			{bucketCommand, func(e Execution) string { return e.CommandID }},
			{bucketMessage, func(e Execution) string { return e.MessageID }},
		} {
			n := 0
			if err := tx.Bucket(index.bucket).ForEach(func(k, v []byte) error {
				n++
				if e, ok := byExe[string(v)]; !ok || index.key(e) != string(k) {
					t.Errorf("%s entry %s -> %s names no stored record", index.bucket, k, v)
				}
				return nil
			}); err != nil {
				return err
			}
			if n != len(byExe) {
				t.Errorf("%s holds %d entries for %d records", index.bucket, n, len(byExe))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// prune runs Prune and checks what it reports and leaves: the records named in gone are
// removed and no longer found by any id, the others are found by command_id,
// execution_id and message_id as they were, and the replay position did not move.
func prune(t *testing.T, st *BoltStore, recs []pruneRecord, gone ...string) {
	t.Helper()
	ctx := context.Background()
	n, err := st.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(gone) {
		t.Errorf("Prune reported %d removed, want %d (%v)", n, len(gone), gone)
	}
	onDisk := stored(t, st)
	if len(onDisk) != len(recs)-len(gone) {
		t.Errorf("%d records after Prune, want %d", len(onDisk), len(recs)-len(gone))
	}
	for _, r := range recs {
		cmd, exe, msg := "cmd_"+r.name, "exe_"+r.name, "msg_"+r.name
		byCmd, errCmd := st.GetByCommandID(ctx, cmd)
		byExe, errExe := st.GetExecution(ctx, exe)
		byMsg, errMsg := st.GetByMessageID(ctx, msg)
		if slices.Contains(gone, r.name) {
			if _, ok := onDisk[cmd]; ok {
				t.Errorf("%s survived Prune", r.name)
			}
			for _, err := range []error{errCmd, errExe, errMsg} {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("pruned %s still found: %v", r.name, err)
				}
			}
			continue
		}
		if _, ok := onDisk[cmd]; !ok {
			t.Errorf("%s was pruned", r.name)
			continue
		}
		for _, got := range []struct {
			by  string
			e   Execution
			err error
		}{{"command_id", byCmd, errCmd}, {"execution_id", byExe, errExe}, {"message_id", byMsg, errMsg}} {
			want := StateFinished
			if r.running {
				want = StateStarted
			}
			if got.err != nil || got.e.CommandID != cmd || got.e.ExecutionID != exe || got.e.State != want || got.e.Acked != r.acked {
				t.Errorf("%s by %s after Prune: %+v %v", r.name, got.by, got.e, got.err)
			}
		}
	}
	if seq, err := st.LastSeq(ctx); err != nil || seq != pruneSeq {
		t.Errorf("LastSeq after Prune %d %v, want %d", seq, err, pruneSeq)
	}
}

// Finished records go once older than the retention, acknowledged or not: by then (25 h
// in a Ghost) the intent, at most 24 h long, has ended and Mirage would refuse the event.
// A started record stays however old: it is what a restart resumes.
func TestBoltStorePruneByAge(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	recs := []pruneRecord{
		{name: "old_acked", age: 2 * time.Hour, acked: true},
		{name: "old_unacked", age: 2 * time.Hour},
		{name: "old_running", age: 30 * time.Hour, running: true},
		{name: "at_cutoff", age: time.Hour, acked: true},
		{name: "recent_acked", age: 30 * time.Minute, acked: true},
		{name: "recent_unacked", age: 30 * time.Minute},
	}
	st := openPruneStore(t, BoltOptions{Retention: time.Hour}, &now, recs)
	prune(t, st, recs, "old_acked", "old_unacked")

	// The clock moves on: what was recent ages out in turn, the started record stays.
	now = now.Add(31 * time.Minute)
	prune(t, st, recs[2:], "at_cutoff", "recent_acked", "recent_unacked")
	if t.Failed() {
		return
	}
	if n, err := st.Prune(context.Background()); err != nil || n != 0 {
		t.Errorf("a second Prune removed %d %v, want 0", n, err)
	}
	if unfinished, err := st.Unfinished(context.Background()); err != nil || len(unfinished) != 1 || unfinished[0].CommandID != "cmd_old_running" {
		t.Errorf("unfinished after Prune: %+v %v", unfinished, err)
	}
}

// The retention is never below the seed's duplicate window (MinRetention), and unset it
// is DefaultRetention, as long as EDGE_CMD keeps commands.
func TestBoltStorePruneRetentionFloor(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention time.Duration
		effective time.Duration
	}{
		{"unset", 0, DefaultRetention},
		{"below the duplicate window", time.Minute, MinRetention},
		{"set", 2 * time.Hour, 2 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
			recs := []pruneRecord{
				{name: "inside", age: tc.effective - time.Minute, acked: true},
				{name: "outside", age: tc.effective + time.Minute, acked: true},
			}
			st := openPruneStore(t, BoltOptions{Retention: tc.retention}, &now, recs)
			prune(t, st, recs, "outside")
		})
	}
}

// Beyond MaxRecords (started records count) the oldest acknowledged records go first,
// down to the bound; unacknowledged ones only once no acknowledged one is left, oldest
// first; started ones never, even when the bound cannot be reached without them.
func TestBoltStorePruneToMaxRecords(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retention time.Duration
		max       int
		recs      []pruneRecord
		gone      []string
	}{
		{
			name: "oldest acknowledged first",
			max:  4,
			recs: []pruneRecord{
				{name: "running", age: 3 * time.Hour, running: true},
				{name: "unacked_old", age: 2 * time.Hour},
				{name: "acked_old", age: 90 * time.Minute, acked: true},
				{name: "acked_mid", age: time.Hour, acked: true},
				{name: "acked_new", age: 30 * time.Minute, acked: true},
				{name: "unacked_new", age: 10 * time.Minute},
			},
			gone: []string{"acked_old", "acked_mid"},
		},
		{
			name: "then the oldest unacknowledged",
			max:  3,
			recs: []pruneRecord{
				{name: "running_1", age: 3 * time.Hour, running: true},
				{name: "running_2", age: 3 * time.Hour, running: true},
				{name: "unacked_old", age: 2 * time.Hour},
				{name: "unacked_new", age: time.Hour},
				{name: "acked", age: 10 * time.Minute, acked: true},
			},
			gone: []string{"acked", "unacked_old"},
		},
		{
			name: "started records stay above the bound",
			max:  1,
			recs: []pruneRecord{
				{name: "running_1", age: 3 * time.Hour, running: true},
				{name: "running_2", age: 10 * time.Minute, running: true},
				{name: "unacked", age: 2 * time.Hour},
				{name: "acked", age: time.Hour, acked: true},
			},
			gone: []string{"unacked", "acked"},
		},
		{
			name: "at the bound nothing goes",
			max:  3,
			recs: []pruneRecord{
				{name: "running", age: 3 * time.Hour, running: true},
				{name: "unacked", age: 2 * time.Hour},
				{name: "acked", age: time.Hour, acked: true},
			},
		},
		{
			name:      "records past the retention count towards the bound",
			retention: time.Hour,
			max:       2,
			recs: []pruneRecord{
				{name: "expired", age: 2 * time.Hour, acked: true},
				{name: "running", age: 3 * time.Hour, running: true},
				{name: "acked_old", age: 30 * time.Minute, acked: true},
				{name: "unacked", age: 20 * time.Minute},
				{name: "acked_new", age: 10 * time.Minute, acked: true},
			},
			gone: []string{"expired", "acked_old", "acked_new"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
			st := openPruneStore(t, BoltOptions{Retention: tc.retention, MaxRecords: tc.max}, &now, tc.recs)
			prune(t, st, tc.recs, tc.gone...)
		})
	}
}

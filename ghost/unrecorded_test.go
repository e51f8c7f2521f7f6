package ghost_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// copyInFlight is a damagedRecord that lets a live copy of the bad command hold it while the
// Ghost answers the replay's give-up. Once the replay position is saved past the bad command
// (the replay gave up on it), SetPosition waits until a copy's Begin has started; that Begin
// waits for the next catch-up, which begins only once the give-up has been answered, and
// then fails as the store always does for that command.
type copyInFlight struct {
	*damagedRecord
	badSeq  uint64
	passed  chan struct{} // closed when the position is saved past the bad command
	entered chan struct{} // closed when a copy's Begin of the bad command waits
	next    chan struct{} // closed at the first catch-up after the copy's Begin began
	once    [3]sync.Once
}

func newCopyInFlight(byID bool, badSeq uint64) *copyInFlight {
	return &copyInFlight{damagedRecord: newDamagedRecord(byID), badSeq: badSeq,
		passed: make(chan struct{}), entered: make(chan struct{}), next: make(chan struct{})}
}

func (s *copyInFlight) SetPosition(ctx context.Context, seq uint64, commandID string) error {
	err := s.damagedRecord.SetPosition(ctx, seq, commandID)
	if err == nil && seq >= s.badSeq {
		s.once[0].Do(func() { close(s.passed) })
		select {
		case <-s.entered:
		case <-time.After(10 * time.Second):
		}
	}
	return err
}

func (s *copyInFlight) Begin(ctx context.Context, e ghost.Execution) (ghost.Execution, bool, error) {
	select {
	case <-s.passed:
		if e.Args["message"] == unrecordable {
			s.once[1].Do(func() { close(s.entered) })
			select {
			case <-s.next:
			case <-time.After(10 * time.Second):
			}
		}
	default:
	}
	return s.damagedRecord.Begin(ctx, e)
}

func (s *copyInFlight) Position(ctx context.Context) (uint64, string, error) {
	select {
	case <-s.entered:
		s.once[2].Do(func() { close(s.next) })
	default:
	}
	return s.damagedRecord.Position(ctx)
}

// A live copy of a command the replay gives up on may hold that command (its delivery
// began) when the Ghost answers the give-up. The 1500 waits for that copy: the replay
// position is past the command, so when the store fails the copy too (as it failed every
// replay), the 1500 is the command's one terminal event; without it the command would be
// neither run nor answered.
func TestGiveUpWaitsForACopyTheStoreFailsToo(t *testing.T) {
	for _, tc := range refusalStoreCases {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.New(t)
			ctx := context.Background()
			const id = "edge-given-up-copy"
			bad, badSeq := storeCommand(t, env, id, "echo", map[string]string{"message": unrecordable})
			stored := storedCommand(t, env, badSeq)
			store := newCopyInFlight(tc.byID, badSeq)
			logs := countingHandler{mu: &sync.Mutex{}, n: map[string]int{}}
			env.StartGhost(id, testenv.Store(store), testenv.Policy(ghost.PolicyHeadless), testenv.Seeds("seed.flow"), testenv.GhostLog(slog.New(logs)),
				testenv.Tune(func(c *ghost.Config) {
					c.CatchUpInterval = 100 * time.Millisecond
					ghost.SetUnrecordedPatience(c, 300*time.Millisecond)
				}))
			select {
			case <-store.passed:
			case <-time.After(10 * time.Second):
				t.Fatal("the replay did not give up on the command the store never records")
			}
			// The live copy (a Mirage re-dispatch), arriving as the replay gives up.
			if err := env.Conn("mirage").PublishMsg(bus.NewMsg(subjects.Command(id), stored.Data, bad, bus.TraceIDFrom(stored.Header))); err != nil {
				t.Fatal(err)
			}

			eventFor(t, env, id, bad)
			ev, _ := storedEvent(t, env, bus.EventID(id, bad))
			if ev.Outcome != bus.OutcomeError || ev.Error == nil || ev.Error.Code != bus.CodeInternal || ev.Result.Status != "refused" {
				t.Fatalf("event of the command given up on: %+v, want a 1500, not run", ev)
			}
			testenv.Eventually(t, 5*time.Second, "the copy failed by the store", func() bool {
				return logs.count("execution store failed: the command is not run and not answered; a later delivery or catch-up handles it") > 0
			})
			if n := logs.count("execution store never recorded the command: giving up on it; answered 1500, the replay position is past it"); n != 1 {
				t.Fatalf("answered the command given up on %d times, want once", n)
			}
			if n := logs.count("gave up on a command the execution store could not record, but it has its terminal event already (a copy of it got through meanwhile); the replay position is past it"); n != 0 {
				t.Fatal("took the copy holding the command for its answer before it ended")
			}
			rec, err := store.GetByCommandID(ctx, bad)
			switch {
			case err == nil && (rec.Refusal == nil || rec.Event == nil || rec.Event.EventID != ev.EventID || rec.Event.ExecutionID != ev.ExecutionID):
				t.Fatalf("the command given up on is recorded as %+v, event %+v; want its refusal with the 1500 sent", rec, rec.Event)
			case err != nil && !tc.byID:
				t.Fatalf("the refusal is not recorded (%v)", err)
			case err == nil && tc.byID:
				t.Fatalf("recorded %+v though the store failed the command_id", rec)
			}
		})
	}
}

package ghost

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	bolt "go.etcd.io/bbolt"
)

// SetResendPatience shortens how long a re-send tries one event before leaving it for the
// next pass (resendPatience), for tests that watch a re-send give up.
func SetResendPatience(c *Config, d time.Duration) { c.resendPatience = d }

// SetUnrecordedPatience shortens how long replays keep trying a command the execution store
// cannot record before they give up on it (unrecordedPatience).
func SetUnrecordedPatience(c *Config, d time.Duration) { c.unrecordedPatience = d }

// SetProbeWait replaces probeWait in c.
func SetProbeWait(c *Config, d time.Duration) { c.probeWait = d }

// SetLateAnswerWait replaces lateAnswerWait in c.
func SetLateAnswerWait(c *Config, d time.Duration) { c.lateAnswerWait = d }

// DamageCommandIndex points the store's index entry for commandID at an execution record
// that does not exist, as a damaged record under that command_id: every record of the
// command the store tries to write from then on fails, while reads find no execution.
func DamageCommandIndex(s *BoltStore, commandID string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCommand).Put([]byte(commandID), []byte("exe_damaged"))
	})
}

// LeaveOwnTrace marks g as having left a trace of its own (traceLeft), as a live command's
// event sent before its new store could look at cmd.<id> does.
func LeaveOwnTrace(g *Ghost) { g.traceLeft.Store(true) }

// StreamLast is the sequence of the last command on cmd.<id> as a Ghost of id without
// authentication reads it on nc (streamReader.last).
func StreamLast(ctx context.Context, nc *nats.Conn, id string) (uint64, error) {
	return streamReader{&Ghost{nc: nc, cfg: Config{ID: id}, log: slog.New(slog.DiscardHandler)}}.last(ctx)
}

// StreamTraced says whether a Ghost of id without authentication finds on nc the trace
// of an earlier Ghost of its id (streamReader.traced).
func StreamTraced(ctx context.Context, nc *nats.Conn, id string) bool {
	return streamReader{&Ghost{nc: nc, cfg: Config{ID: id}, log: slog.New(slog.DiscardHandler)}}.traced(ctx)
}

package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Replay consumers: a Ghost under auth may not create consumers, so it asks on
// mirage.replay.<ghost_id> for the one it reads its missed commands through. The subject
// token is the Ghost (the server lets only that Ghost publish there); the body only says
// where to start.

// onReplay serves mirage.replay.*: a bounded number at once, so that a fleet catching up
// after an outage is not answered one consumer creation at a time.
func (m *Mirage) onReplay(msg *nats.Msg) {
	select {
	case m.replays <- struct{}{}:
	case <-m.stop:
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer func() { <-m.replays }()
		reply := bus.ReplayReply{Status: "accepted"}
		n, err := m.createReplay(msg.Subject, msg.Data)
		if err != nil {
			perr := bus.AsError(err)
			reply = bus.ReplayReply{Status: "rejected", Error: perr}
			m.log.Warn("replay request rejected", "direction", "in", "subject", msg.Subject, "code", perr.Code, "err", perr.Message)
		} else {
			reply.NumPending = n
		}
		if data, err := json.Marshal(reply); err == nil && msg.Reply != "" {
			_ = msg.Respond(data)
		}
	}()
}

// createReplay (re)creates the replay consumer of the Ghost named by subject, from the
// request's start sequence, and returns how many commands it holds.
func (m *Mirage) createReplay(subject string, data []byte) (uint64, error) {
	id, err := subjects.GhostFromReplay(subject)
	if err != nil {
		return 0, bus.FieldError(bus.CodeSemantic, "subject", "%s", subjects.Reason(err))
	}
	req, err := bus.DecodeReplayRequest(data)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A leftover of an interrupted replay: its start is not this one's.
	if err := m.js.DeleteConsumer(ctx, bus.StreamCommands, bus.GhostReplayConsumer(id)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, bus.Errorf(bus.CodeInternal, "remove the old replay consumer of %s: %v", id, err)
	}
	cons, err := m.js.CreateConsumer(ctx, bus.StreamCommands, bus.GhostReplayConsumerConfig(id, req.StartSeq))
	if err != nil {
		return 0, bus.Errorf(bus.CodeInternal, "create the replay consumer of %s: %v", id, err)
	}
	n := cons.CachedInfo().NumPending
	m.log.Debug("replay consumer created", "peer", id, "start_seq", req.StartSeq, "pending", n)
	return n, nil
}

package mirage

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Replays: a Ghost under auth has no JetStream API permission, so it asks on
// mirage.replay.<ghost_id> for the commands it missed, and Mirage reads them from
// EDGE_CMD and sends them to the Ghost's inbox. The subject token is the Ghost (the
// server lets only that Ghost publish there); the body only says where to start, how
// many, and whether to say if the id shows a trace of an earlier Ghost (traced).

// onReplay serves mirage.replay.*. It never blocks the subscription: a request whose
// reply subject is not the Ghost's inbox (replyGuard) is dropped, one over its Ghost's
// bound (replayGate) is answered busy at once, without a JetStream call or a log line;
// the others wait for one of a bounded number of slots, so that a fleet catching up after
// an outage is not answered one Ghost at a time, and are dropped when they waited longer
// than the Ghost waits for the answer.
func (m *Mirage) onReplay(msg *nats.Msg) {
	arrived := time.Now()
	id, idErr := subjects.GhostFromReplay(msg.Subject)
	if !m.guard.allows(id, msg.Subject, msg.Reply) {
		return
	}
	req, err := bus.DecodeReplayRequest(msg.Data)
	if idErr != nil {
		err = bus.FieldError(bus.CodeSemantic, "subject", "%s", subjects.Reason(idErr))
	}
	if err != nil {
		// Refused before the gate (no JetStream call to bound); logged at a bounded rate.
		perr := bus.AsError(err)
		if ok, n := m.replayRefusals.Allow(); ok {
			m.log.Warn("replay request rejected", "direction", "in", "subject", msg.Subject, "code", perr.Code, "err", perr.Message, "rejected_since_last_warning", n)
		}
		m.answerReplay(msg, bus.ReplayReply{Status: "rejected", Error: perr})
		return
	}
	if !m.replayGate.enter(id, arrived) {
		m.answerReplay(msg, bus.ReplayReply{Status: "rejected", Error: bus.Errorf(bus.CodeBusy,
			"a replay request of %s is being served or was served less than %s ago: retry later", id, bus.ReplayEvery)})
		return
	}
	m.serveGated(m.replayGate, m.replays, id, arrived, bus.ReplaySlotWait, func() {
		reply, err := m.sendReplay(msg.Reply, id, req)
		if err != nil {
			perr := bus.AsError(err)
			reply.Status, reply.Error = "rejected", perr
			m.log.Warn("replay request rejected", "direction", "in", "subject", msg.Subject, "code", perr.Code, "err", perr.Message)
		}
		m.answerReplay(msg, reply)
	})
}

func (m *Mirage) answerReplay(msg *nats.Msg, reply bus.ReplayReply) {
	if data, err := json.Marshal(reply); err == nil && msg.Reply != "" {
		_ = msg.Respond(data)
	}
}

// replayMaxBytes bounds the command bytes one answer sends (past it, More is set): the
// Ghost's inbox subscription holds a whole answer.
const replayMaxBytes = 8 << 20

// sendReplay sends to reply every command on cmd.<id> from req.StartSeq on, at most
// req.Max and up to the last one when it looked, each as stored plus bus.HeaderStreamSeq,
// and returns the reply that ends the answer (Status set unless err; Traced when
// req.History asks). Commands are read by direct get (next by subject), never through a
// consumer.
func (m *Mirage) sendReplay(reply, id string, req bus.ReplayRequest) (bus.ReplayReply, error) {
	ctx, cancel := context.WithTimeout(m.running, 10*time.Second) // Close does not wait for it
	defer cancel()
	subject := subjects.Command(id)
	out := bus.ReplayReply{}
	if req.History {
		traced := m.traced(ctx, id)
		out.Traced = &traced
	}
	// Read as stored (directStored): jetstream's gets took a stored message with an empty
	// body and a Status header for the server's answer (an error, or 404: none), and the
	// catch-up of the Ghost stopped there on every try, or, one last on cmd.<id>, never
	// began. Such a message is sent as any other, its stored headers but bus.ReplayedHeaders
	// dropped: the Ghost refuses it (no command_id) and its replay position passes it.
	// A none is asked of the stream's leader again (storedSince): on a cluster it may come
	// from a replica behind it, and the Ghost would be told there is nothing to catch up.
	last, err := storedSince(ctx, m.nc, bus.StreamCommands, directRequest{LastFor: subject}, 0)
	switch {
	case err != nil:
		return out, bus.Errorf(bus.CodeInternal, "read the last command of %s: %v", id, err)
	case last == nil:
		out.Status = "accepted"
		return out, nil
	}
	out.LastSeq, out.LastCommandID = last.seq, bus.ProbeCommand(last.data).CommandID
	next, size := req.StartSeq, 0
	for out.Sent < req.Max && next <= out.LastSeq && size < replayMaxBytes {
		// One at or after next up to LastSeq exists, or did: a replica behind the one that
		// answered LastSeq says none, and the leader is asked (storedSince).
		sm, err := storedSince(ctx, m.nc, bus.StreamCommands, directRequest{Seq: next, NextFor: subject}, 0)
		if err != nil {
			return out, bus.Errorf(bus.CodeInternal, "read the commands of %s from %d: %v", id, next, err)
		}
		if sm == nil {
			break // removed since (retention, a purge): nothing more to send
		}
		if sm.seq > out.LastSeq {
			break
		}
		if readsAsStatus(sm.data, sm.header, false) {
			m.warnUnreadable("replay: a stored message on cmd.<id> reads as a server status (an empty body with a Status header); sent without it, for the Ghost to pass over",
				"stream", bus.StreamCommands, "subject", subject, "seq", sm.seq, "status", sm.header.Get("Status"), "code", bus.CodeFraming)
		}
		cmd := &nats.Msg{Subject: reply, Data: sm.data, Header: storedHeader(sm.header)}
		cmd.Header.Set(bus.HeaderStreamSeq, strconv.FormatUint(sm.seq, 10))
		if err := m.nc.PublishMsg(cmd); err != nil {
			return out, bus.Errorf(bus.CodeInternal, "send the commands of %s: %v", id, err)
		}
		out.Sent++
		size += len(sm.data)
		next = sm.seq + 1
	}
	out.Status, out.More = "accepted", out.Sent > 0 && next <= out.LastSeq
	m.log.Debug("replay sent", "peer", id, "start_seq", req.StartSeq, "commands", out.Sent, "last_seq", out.LastSeq, "more", out.More)
	return out, nil
}

// traced reports whether Ghost id shows a trace of an earlier Ghost, for a Ghost on a new
// execution store that asks before it subscribes and registers (bus.ReplayRequest's
// History): a record in KV edge_ghosts (it registered) or an event on evt.<id> in EDGE_EVT
// (it answered a command; events are kept 7 days, commands 25 h). An id without either
// never had a Ghost that ran a command it reported, so the commands waiting for it are
// run rather than answered 1700 (ghost/born.go). A read that fails counts as a trace. The
// last message is read as stored (directStored), as the Ghost reads it without auth
// (ghost/born.go): any message there but a delete marker is a trace, one that reads as a
// status too (jetstream's get took it for the server's 404, no trace, and the Ghost ran
// again what an earlier Ghost of the id may have run).
func (m *Mirage) traced(ctx context.Context, id string) bool {
	for _, look := range []struct {
		what, stream, subject string
	}{
		{"registry record", "KV_" + bus.BucketGhosts, "$KV." + bus.BucketGhosts + "." + id},
		{"last event", bus.StreamEvents, subjects.Event(id)},
	} {
		// None is asked of the stream's leader again (storedSince): a replica behind it
		// may not hold the trace yet, and the commands would run again.
		sm, err := storedSince(ctx, m.nc, look.stream, directRequest{LastFor: look.subject}, 0)
		switch {
		case err != nil:
			m.log.Warn("replay request: the "+look.what+" of a Ghost on a new execution store could not be read; taken as a trace of an earlier Ghost", "peer", id, "err", err)
			return true
		case sm != nil && !kvDeleted(sm.header):
			return true
		}
	}
	return false
}

// storedHeader is the part of a command's stored headers a Ghost reads
// (bus.ReplayedHeaders): a direct get adds its own, and a stored header such as Status
// (the operator or Mirage may store anything on cmd.<id>) must not reach the Ghost.
func storedHeader(h nats.Header) nats.Header {
	out := nats.Header{}
	for _, k := range bus.ReplayedHeaders {
		if v := h.Values(k); len(v) > 0 {
			out[k] = v
		}
	}
	return out
}

// Bounds on replay requests, per Ghost: one served at a time and one admitted per
// bus.ReplayEvery (each reading at most bus.ReplayBatch commands), so that a Ghost
// flooding mirage.replay.<id> costs Mirage a busy answer per request, not JetStream
// calls, and other Ghosts' requests are not held up.
// A request that waited longer than bus.ReplaySlotWait for a slot is dropped (the Ghost
// waits bus.ReplayAnswerWait for the first message of the answer).

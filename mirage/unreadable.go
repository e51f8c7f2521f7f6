package mirage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Stored messages that read as a status. JetStream delivers a stored message with the
// headers it was published with, and nats.go's consumers take a message with an empty
// body and a Status header (an empty body: every message of a headers-only consumer) for
// a status of the server (no responders, a timeout, a deleted consumer, a heartbeat):
// they never hand it over nor acknowledge it, and some stop the consumer. Anyone who may
// publish on a stream's subjects can store one; on evt.<id> that is every Ghost, with
// its permissions. Unhandled, one such event stopped the events consumer for good (400,
// 409 "consumer deleted": every later intent ended timeout), held every timeout back by
// the lost-delivery wait (never read, it is a hole below every later event), and made
// Mirage's restart fail (recover's replay ended on its "error").
//
// So: Mirage's stream reads pass over such a message (readStream), and the events
// consumer's supervisor deletes those on EDGE_EVT that it has not acknowledged
// (sweepEvents): an event has a body, and a deleted message counts as acknowledged, so
// the consumer's ack floor and the read mark move on. Each is logged, at a bounded rate.

// readsAsStatus reports whether nats.go's consumers read a stored message with this body
// and these headers as a status rather than a message; headersOnly for a consumer that
// delivers headers only.
func readsAsStatus(data []byte, h nats.Header, headersOnly bool) bool {
	return h.Get("Status") != "" && (len(data) == 0 || headersOnly)
}

// storedMsg is a message read by the JetStream API's message get.
type storedMsg struct {
	seq     uint64
	subject string
	data    []byte
	header  nats.Header
}

// nextStored returns the first message of stream on filter at or after seq, or at or
// after from when seq is 0; nil when there is none. It asks the API's message get, whose
// answer carries the message in a JSON body: a direct get's answer carries the stored
// headers as its own, and nats.go would read this very message's Status as the answer's.
func nextStored(ctx context.Context, nc *nats.Conn, stream, filter string, seq uint64, from time.Time) (*storedMsg, error) {
	req := msgGetRequest{Seq: seq, NextFor: filter}
	if seq == 0 {
		req.StartTime = &from
	}
	return msgGet(ctx, nc, stream, req)
}

// shortReadRetries is how many times readStream goes on from where a read ended short
// without getting further before it fails.
const shortReadRetries = 3

// readStream passes fn every message an ordered consumer of stream with cfg (one filter
// subject at most, a policy that starts at a time or a sequence, or all) has pending when
// called, as readAll does, passing over the messages nats.go reads as a status
// (readsAsStatus): when the read ends short, the next stored message is looked at, and
// when it is one, the read goes on past it. A read that ends short with messages left,
// and cannot go on, fails: its caller (a Mirage's start, a listing of keys) must not take
// part of a stream for all of it.
func readStream(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, log func(msg string, args ...any), fn func(jetstream.Msg)) error {
	filter := ">"
	if len(cfg.FilterSubjects) == 1 {
		filter = cfg.FilterSubjects[0]
	}
	var last uint64 // the last sequence read
	var from time.Time
	retries, retriedAt := 0, uint64(0) // reads gone on after one ended short, and from where
	switch {
	case cfg.DeliverPolicy == jetstream.DeliverByStartTimePolicy && cfg.OptStartTime != nil:
		from = *cfg.OptStartTime
	case cfg.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && cfg.OptStartSeq > 0:
		last = cfg.OptStartSeq - 1
	}
	for {
		cons, err := js.OrderedConsumer(ctx, stream, cfg)
		if err != nil {
			return err
		}
		complete, err := readAll(ctx, cons, fetchWait, func(msg jetstream.Msg) {
			if md, err := msg.Metadata(); err == nil {
				last = md.Sequence.Stream
			}
			fn(msg)
		})
		if complete && err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		seq := last + 1
		if last == 0 && !from.IsZero() {
			seq = 0 // nothing read yet: from the start time
		}
		sm, gerr := nextStored(ctx, js.Conn(), stream, filter, seq, from)
		switch {
		case gerr != nil:
			// Messages may be left: a read that ended short is not taken for a whole one.
			if err == nil {
				err = fmt.Errorf("reading %s: the read ended short after sequence %d, and what follows could not be looked at: %w", stream, last, gerr)
			}
			return err
		case sm == nil:
			return err // nothing left: the read had everything
		case readsAsStatus(sm.data, sm.header, cfg.HeadersOnly):
			log("passed over a stored message that reads as a server status (an empty body with a Status header): no consumer can read it",
				"stream", stream, "subject", sm.subject, "seq", sm.seq, "status", sm.header.Get("Status"), "code", bus.CodeFraming)
			last = sm.seq
			cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, sm.seq+1, nil
		case retries >= shortReadRetries && last == retriedAt:
			if err == nil {
				err = fmt.Errorf("reading %s: the read ended short %d times after sequence %d, with messages left (a loaded or unreachable server)", stream, retries+1, last)
			}
			return err
		default:
			// A message nats.go hands over: the read ended short for another reason (a
			// fetch that expired before the whole batch came), and goes on from there, a
			// few times without progress; then it fails rather than pass for whole.
			if last != retriedAt {
				retries = 0
			}
			retries, retriedAt = retries+1, last
			cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, sm.seq, nil
		}
	}
}

// Sweeping the events consumer.

// maxSweep bounds the messages one sweep looks at.
const maxSweep = 64

// sweepEvents deletes from EDGE_EVT the messages that read as a status among the first
// ones the events consumer delivered and has not acknowledged (at most maxSweep), and
// returns how many.
func (m *Mirage) sweepEvents(ctx context.Context) (int, error) {
	cons, err := m.js.Consumer(ctx, bus.StreamEvents, EventsConsumer)
	if err != nil {
		return 0, err
	}
	info := cons.CachedInfo()
	seq, delivered := info.AckFloor.Stream+1, info.Delivered.Stream
	deleted := 0
	for range maxSweep {
		if seq > delivered {
			break
		}
		sm, err := nextStored(ctx, m.nc, bus.StreamEvents, subjects.AllEvents, seq, time.Time{})
		if err != nil {
			return deleted, err
		}
		if sm == nil || sm.seq > delivered {
			break
		}
		if readsAsStatus(sm.data, sm.header, false) {
			if err := m.evts.DeleteMsg(ctx, sm.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return deleted, err
			}
			deleted++
			if ok, n := m.unreadable.Allow(); ok {
				m.log.Warn("deleted a stored event that reads as a server status (an empty body with a Status header): no consumer can read it, and it held the events consumer up",
					"direction", "in", "subject", sm.subject, "seq", sm.seq, "status", sm.header.Get("Status"), "code", bus.CodeFraming, "deleted_since_last_warning", n)
			}
		}
		seq = sm.seq + 1
	}
	return deleted, nil
}

// kickSweep asks the supervisor for a sweep, without blocking.
func (m *Mirage) kickSweep() {
	select {
	case m.sweep <- struct{}{}:
	default:
	}
}

// The events consumer's pulls. On a cluster a pull can be lost without a word: sent
// before Mirage's server learnt where a consumer just made (or just moved) lives, or
// dropped by the consumer's leader when it found no route to Mirage's inbox (a link
// between two servers down for a moment). nats.go pulls again only when the server
// answers (a message, the expiry, a status) or when the idle heartbeats it asked for stop
// coming for two intervals; with its defaults (30 s expiry, 15 s heartbeat) every event
// then waited up to 30 s. A pull of 5 s with a heartbeat each second is noticed lost
// within 2 s, for a heartbeat a second and a new pull every 5 s while idle.
const (
	eventsPullExpiry    = 5 * time.Second
	eventsPullHeartbeat = time.Second // at most half the expiry (nats.go)
)

// consumeEvents starts the events consumer's delivery into onEvent. Its errors (the
// statuses nats.go reads, stored junk among them, and a pull noticed lost) ask for a
// sweep.
func (m *Mirage) consumeEvents(cons jetstream.Consumer) (jetstream.ConsumeContext, error) {
	return cons.Consume(m.onEvent, jetstream.PullMaxMessages(1000),
		jetstream.PullExpiry(eventsPullExpiry), jetstream.PullHeartbeat(eventsPullHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			m.log.Debug("events consumer", "err", err)
			m.kickSweep()
		}))
}

// superviseEvents sweeps EDGE_EVT when asked (at most once a second), and starts the
// events consumer's delivery again when it stopped while Mirage runs (nats.go stops it on
// some statuses: one a stored message can fake), after a sweep.
func (m *Mirage) superviseEvents(cons jetstream.Consumer) {
	defer m.wg.Done()
	var last time.Time
	var restarts bus.RateLog
	sweep := func() {
		if d := time.Until(last.Add(time.Second)); d > 0 {
			select {
			case <-m.stop:
				return
			case <-time.After(d):
			}
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(m.running, 10*time.Second)
		defer cancel()
		if _, err := m.sweepEvents(ctx); err != nil && m.running.Err() == nil {
			m.log.Debug("sweeping the events consumer failed", "err", err)
		}
	}
	for {
		m.ccMu.Lock()
		if m.ccStopped {
			m.ccMu.Unlock()
			return
		}
		cc := m.cc
		m.ccMu.Unlock()
		select {
		case <-m.stop:
			return
		case <-m.sweep:
			sweep()
		case <-cc.Closed():
			m.ccMu.Lock()
			stopped := m.ccStopped
			m.ccMu.Unlock()
			if stopped {
				return
			}
			if ok, n := restarts.Allow(); ok {
				m.log.Warn("the events consumer stopped; starting it again", "restarts", n)
			}
			sweep()
			var failed bus.RateLog
			for {
				// Made again: it may be the consumer itself that is gone (deleted by hand).
				ctx, cancel := context.WithTimeout(m.running, 10*time.Second)
				again, err := m.js.CreateOrUpdateConsumer(ctx, bus.StreamEvents, eventsConsumerConfig())
				cancel()
				m.ccMu.Lock()
				if m.ccStopped {
					m.ccMu.Unlock()
					return
				}
				if err == nil {
					cons = again
					var next jetstream.ConsumeContext
					if next, err = m.consumeEvents(cons); err == nil {
						m.cc = next
					}
				}
				m.ccMu.Unlock()
				if err == nil {
					break
				}
				if ok, n := failed.Allow(); ok {
					m.log.Warn("the events consumer could not start again; retrying every second", "err", err, "failures", n)
				}
				select {
				case <-m.stop:
					return
				case <-time.After(time.Second):
				}
			}
		}
	}
}

// warnUnreadable logs a stored message a read passed over, at most once per
// bus.RateLogEvery.
func (m *Mirage) warnUnreadable(msg string, args ...any) {
	if ok, n := m.unreadable.Allow(); ok {
		m.log.Warn(msg, append(args, "passed_since_last_warning", n)...)
	}
}

package mirage

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// An intent's terminal state is its terminal report in EDGE_REPORT: its record in
// edge_intents stays as accepted (records written by earlier versions may be terminal
// too). Every report carries its phase in a header (bus.HeaderPhase), so the phases of
// all intents can be read without their bodies.

// endedIntents returns the intents whose latest valid report is terminal, with that
// phase, from one pass over the last report of every intent, headers only. A last message
// without a valid phase header (junk: a JetStream API answer can be stored on any
// report.<intent_id>, see ReadEnrollments; or a report of an earlier version) does not
// hide an earlier terminal report: that subject is read again through newestReport. A
// message that reads as a status (an empty body, or with headers only any message, with a
// Status header: anyone who may publish on report.<intent_id> can store one) is passed
// over (lastPerSubject), logged through log: before, it failed Mirage's start, or ended
// the pass early, the intents after it taken for open.
func endedIntents(ctx context.Context, js jetstream.JetStream, log func(string, ...any)) (map[string]string, error) {
	ended := map[string]string{}
	var unclear []string
	_, err := lastPerSubject(ctx, js, bus.StreamReports, subjects.AllReports, log, func(subject string, _ uint64, h nats.Header) {
		id := strings.TrimPrefix(subject, subjects.Report(""))
		switch phase := h.Get(bus.HeaderPhase); {
		case bus.Terminal(phase):
			ended[id] = phase
		case !validPhase(phase):
			unclear = append(unclear, id)
		}
	})
	if err != nil {
		return nil, err
	}
	for _, id := range unclear {
		r, _, err := newestReport(ctx, js, id)
		if err != nil {
			return nil, err
		}
		if r != nil && bus.Terminal(r.Phase) {
			ended[id] = r.Phase
		}
	}
	return ended, nil
}

func validPhase(p string) bool {
	switch p {
	case bus.PhasePending, bus.PhaseInProgress, bus.PhaseSatisfied, bus.PhaseFailed:
		return true
	}
	return false
}

// validReport decodes a message of report.<intentID> and returns it when it is a report
// of that intent whose phase header, if any, is its phase; else nil.
func validReport(intentID string, data []byte, h nats.Header) *bus.Report {
	var r bus.Report
	if bus.Decode(data, &r) != nil || r.IntentID != intentID {
		return nil
	}
	if phase := h.Get(bus.HeaderPhase); phase != "" && phase != r.Phase {
		return nil
	}
	return &r
}

// newestReport returns the newest valid report (validReport) stored for an intent and
// its stream sequence, or nil when there is none. A terminal report is final: the newest
// terminal one is returned before any later report that is not terminal (one stored out
// of order: an older Mirage's in_progress report stored after the terminal report of the
// Mirage that took over). It reads every message of the intent's subject: EDGE_REPORT
// keeps at most 64 per subject.
func newestReport(ctx context.Context, js jetstream.JetStream, intentID string) (*bus.Report, uint64, error) {
	var newest, terminal *bus.Report
	var seq, terminalSeq uint64
	err := readStream(ctx, js, bus.StreamReports, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		FilterSubjects:    []string{subjects.Report(intentID)},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
	}, func(string, ...any) {}, func(msg jetstream.Msg) {
		r := validReport(intentID, msg.Data(), msg.Headers())
		if r == nil {
			return
		}
		var at uint64
		if md, err := msg.Metadata(); err == nil {
			at = md.Sequence.Stream
		}
		newest, seq = r, at
		if bus.Terminal(r.Phase) {
			terminal, terminalSeq = r, at
		}
	})
	if err != nil {
		return nil, 0, err
	}
	if terminal != nil {
		return terminal, terminalSeq, nil
	}
	return newest, seq, nil
}

// fetchWait bounds how long a fetch of readAll waits for its batch.
const fetchWait = 5 * time.Second

// readAll passes fn every message a new ordered consumer has pending when called, in
// order, in batches of up to 1,000, each waited for at most wait. complete is false when
// it ended before the last of them: on an error, or a batch that brought fewer than asked
// (readStream looks at why). It does not wait for the rest of a batch once the last
// message came: nats.go drops a message that reads as a status (a stored Status 100), and
// the batch would wait for its place until it expired.
func readAll(ctx context.Context, cons jetstream.Consumer, wait time.Duration, fn func(jetstream.Msg)) (complete bool, _ error) {
	info, err := cons.Info(ctx)
	if err != nil {
		return false, err
	}
	remaining := info.NumPending
	for remaining > 0 {
		asked := int(min(remaining, 1000))
		got, done, err := fetchBatch(ctx, cons, asked, wait, func(msg jetstream.Msg) bool {
			fn(msg)
			if md, err := msg.Metadata(); err == nil {
				remaining = md.NumPending
			}
			return remaining > 0
		})
		switch {
		case done:
			return true, nil
		case err != nil:
			return false, err
		case got < asked:
			return false, nil
		}
	}
	return true, nil
}

// fetchBatch asks cons for asked messages and passes them to fn until fn says there are no
// more (done), and returns how many it passed, and the fetch's error. It does not wait for
// the rest of the batch then.
func fetchBatch(ctx context.Context, cons jetstream.Consumer, asked int, wait time.Duration, fn func(jetstream.Msg) bool) (got int, done bool, _ error) {
	fctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel() // ends a fetch left before its end
	batch, err := cons.Fetch(asked, jetstream.FetchContext(fctx))
	if err != nil {
		return 0, false, err
	}
	for msg := range batch.Messages() {
		got++
		if !fn(msg) {
			return got, true, nil
		}
	}
	switch err := batch.Error(); {
	case err == nil, errors.Is(err, jetstream.ErrNoMessages), errors.Is(err, nats.ErrTimeout):
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
	default:
		return got, false, err
	}
	return got, false, nil
}

// reportPhase returns the phase of an intent's latest valid report ("" when it has
// none). The phase header of the last message is enough (no answer JetStream can be made
// to store there carries one); without it, the reports are read (newestReport). The last
// message is read as it came (directStored): one that reads as a status is passed over
// there, where jetstream's get took it for the server's answer (an error, or 404: no
// report at all). A none is asked of the stream's leader again (storedSince): on a cluster
// it may come from a replica behind it, and an ended intent would be taken up again.
func (m *Mirage) reportPhase(ctx context.Context, intentID string) (string, error) {
	last, err := storedSince(ctx, m.nc, bus.StreamReports, directRequest{LastFor: subjects.Report(intentID)}, 0)
	switch {
	case err != nil:
		return "", err
	case last == nil:
		return "", nil
	}
	if phase := last.header.Get(bus.HeaderPhase); validPhase(phase) && !readsAsStatus(last.data, last.header, false) {
		return phase, nil
	}
	// Junk, or a report stored by an earlier version without the header.
	r, _, err := newestReport(ctx, m.js, intentID)
	if err != nil || r == nil {
		return "", err
	}
	return r.Phase, nil
}

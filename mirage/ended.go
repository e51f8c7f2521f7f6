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
// hide an earlier terminal report: that subject is read again through newestReport.
func endedIntents(ctx context.Context, js jetstream.JetStream) (map[string]string, error) {
	cons, err := js.OrderedConsumer(ctx, bus.StreamReports, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		FilterSubjects:    []string{subjects.AllReports},
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		HeadersOnly:       true,
	})
	if err != nil {
		return nil, err
	}
	ended := map[string]string{}
	var unclear []string
	_, err = readAll(ctx, cons, func(msg jetstream.Msg) {
		id := strings.TrimPrefix(msg.Subject(), subjects.Report(""))
		switch phase := msg.Headers().Get(bus.HeaderPhase); {
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
// its stream sequence, or nil when there is none. It reads every message of the
// intent's subject: EDGE_REPORT keeps at most 64 per subject.
func newestReport(ctx context.Context, js jetstream.JetStream, intentID string) (*bus.Report, uint64, error) {
	var newest *bus.Report
	var seq uint64
	err := readStream(ctx, js, bus.StreamReports, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		FilterSubjects:    []string{subjects.Report(intentID)},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
	}, func(string, ...any) {}, func(msg jetstream.Msg) {
		if r := validReport(intentID, msg.Data(), msg.Headers()); r != nil {
			newest = r
			if md, err := msg.Metadata(); err == nil {
				seq = md.Sequence.Stream
			}
		}
	})
	if err != nil {
		return nil, 0, err
	}
	return newest, seq, nil
}

// readAll passes fn every message a new ordered consumer has pending when called, in
// order, in batches of up to 1,000. complete is false when it ended before the last of
// them: on an error, or a batch that brought nothing (readStream looks at why).
func readAll(ctx context.Context, cons jetstream.Consumer, fn func(jetstream.Msg)) (complete bool, _ error) {
	info, err := cons.Info(ctx)
	if err != nil {
		return false, err
	}
	remaining := info.NumPending
	for remaining > 0 {
		batch, err := cons.Fetch(int(min(remaining, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return false, err
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			fn(msg)
			if md, err := msg.Metadata(); err == nil {
				remaining = md.NumPending
			}
		}
		if batch.Error() != nil && !errors.Is(batch.Error(), jetstream.ErrNoMessages) {
			return false, batch.Error()
		}
		if got == 0 {
			return false, nil
		}
	}
	return true, nil
}

// reportPhase returns the phase of an intent's latest valid report ("" when it has
// none). The phase header of the last message is enough (no answer JetStream can be made
// to store there carries one); without it, the reports are read (newestReport).
func (m *Mirage) reportPhase(ctx context.Context, intentID string) (string, error) {
	stream, err := m.js.Stream(ctx, bus.StreamReports)
	if err != nil {
		return "", err
	}
	raw, err := stream.GetLastMsgForSubject(ctx, subjects.Report(intentID))
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return "", nil
		}
		return "", err
	}
	if phase := raw.Header.Get(bus.HeaderPhase); validPhase(phase) {
		return phase, nil
	}
	// Junk, or a report stored by an earlier version without the header.
	r, _, err := newestReport(ctx, m.js, intentID)
	if err != nil || r == nil {
		return "", err
	}
	return r.Phase, nil
}

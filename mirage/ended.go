package mirage

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// An intent's terminal state is its terminal report in EDGE_REPORT: its record in
// edge_intents stays as accepted (records written by earlier versions may be terminal
// too). Every report carries its phase in a header (bus.HeaderPhase), so the phases of
// all intents can be read without their bodies.

// endedIntents returns the intents whose latest report is terminal, with that phase,
// from one pass over the last report of every intent, headers only.
func endedIntents(ctx context.Context, js jetstream.JetStream) (map[string]string, error) {
	cons, err := js.OrderedConsumer(ctx, bus.StreamReports, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.AllReports},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		HeadersOnly:    true,
	})
	if err != nil {
		return nil, err
	}
	ended := map[string]string{}
	err = readAll(ctx, cons, func(msg jetstream.Msg) {
		if phase := msg.Headers().Get(bus.HeaderPhase); bus.Terminal(phase) {
			ended[strings.TrimPrefix(msg.Subject(), subjects.Report(""))] = phase
		}
	})
	if err != nil {
		return nil, err
	}
	return ended, nil
}

// readAll passes fn every message a new ordered consumer has pending when called, in
// order, in batches of up to 1,000.
func readAll(ctx context.Context, cons jetstream.Consumer, fn func(jetstream.Msg)) error {
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	remaining := info.NumPending
	for remaining > 0 {
		batch, err := cons.Fetch(int(min(remaining, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return err
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
			return batch.Error()
		}
		if got == 0 {
			break
		}
	}
	return nil
}

// reportPhase returns the phase of an intent's latest report ("" when it has none).
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
	if phase := raw.Header.Get(bus.HeaderPhase); phase != "" {
		return phase, nil
	}
	var r bus.Report // stored by an earlier version, without the header
	if err := bus.Decode(raw.Data, &r); err != nil {
		return "", err
	}
	return r.Phase, nil
}

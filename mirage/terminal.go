package mirage

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// terminalWatch waits for an intent's terminal report from both places a report reaches
// a client: core NATS, as Mirage publishes it, and EDGE_REPORT, which stores it. The
// first valid terminal report from either ends the wait. The live copy arrives without
// waiting for the store (an fsync with --sync always); the stored one covers a report
// published before the watch began, and one the live subscription missed (a reconnect,
// a slow consumer). Both carry the same report: Mirage publishes it once, and the stream
// keeps what it published.
type terminalWatch struct {
	intentID string
	sub      *nats.Subscription
	it       jetstream.MessagesContext
	got      chan *bus.Report // the first terminal report; buffered 1
	failed   chan error       // why the stream reader stopped; buffered 1
	done     chan struct{}    // closed when the stream reader returns
}

// watchTerminal starts a terminalWatch; stop it with stop.
func (c *Client) watchTerminal(ctx context.Context, intentID string) (*terminalWatch, error) {
	if err := subjects.ValidateToken("intent_id", intentID); err != nil {
		return nil, err
	}
	w := &terminalWatch{intentID: intentID, got: make(chan *bus.Report, 1), failed: make(chan error, 1), done: make(chan struct{})}
	var err error
	w.sub, err = c.nc.Subscribe(subjects.Report(intentID), func(msg *nats.Msg) { w.offer(msg.Data, msg.Header) })
	if err != nil {
		return nil, err
	}
	cons, err := c.js.OrderedConsumer(ctx, bus.StreamReports, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.Report(intentID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err == nil {
		w.it, err = cons.Messages()
	}
	if err != nil {
		_ = w.sub.Unsubscribe()
		return nil, notProvisioned(err, "stream "+bus.StreamReports)
	}
	go w.readStored()
	return w, nil
}

// offer passes on a valid terminal report of the intent; anything else on its subject
// (an in_progress report, junk) is passed over.
func (w *terminalWatch) offer(data []byte, h nats.Header) bool {
	r := validReport(w.intentID, data, h)
	if r == nil || !bus.Terminal(r.Phase) {
		return false
	}
	select {
	case w.got <- r:
	default: // one terminal report is enough
	}
	return true
}

func (w *terminalWatch) readStored() {
	defer close(w.done)
	for {
		msg, err := w.it.Next()
		if err != nil {
			w.failed <- err
			return
		}
		if w.offer(msg.Data(), msg.Headers()) {
			return
		}
	}
}

// wait returns the first terminal report, or why none can come: ctx ended, or the stream
// reader failed (as the ordered consumer does only when it cannot go on).
func (w *terminalWatch) wait(ctx context.Context) (*bus.Report, error) {
	select {
	case r := <-w.got:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case err := <-w.failed:
		select {
		case r := <-w.got: // both readers ended at once: the report wins
			return r, nil
		default:
			return nil, err
		}
	}
}

// stop ends both readers and waits for the stream reader.
func (w *terminalWatch) stop() {
	_ = w.sub.Unsubscribe()
	w.it.Stop()
	<-w.done
}

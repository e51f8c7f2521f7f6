package bus

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// Answers receives the answers to a connection's requests that Mirage answers with
// several messages (a Ghost's replay and seed read requests) on one long-lived
// subscription, <inbox prefix>.<nuid>.*, each request a token of it.
//
// Why not a fresh subscription per request: with the fleet's two accounts (natsd) a
// Ghost's inbox reaches Mirage's account through a stream import, so in a cluster the
// subscription's interest travels to the other servers on that account's route while
// the request travels on the Ghosts' account's route, and the request can overtake it:
// Mirage's answer is then dropped on the way. A subscription made when the Ghost starts
// is known cluster-wide long before its requests.
type Answers struct {
	prefix string
	sub    *nats.Subscription
	mu     sync.Mutex
	boxes  map[string]*AnswerBox
}

// NewAnswers subscribes to <inboxPrefix>.<nuid>.* on nc.
func NewAnswers(nc *nats.Conn, inboxPrefix string) (*Answers, error) {
	a := &Answers{prefix: inboxPrefix + "." + nuid.Next() + ".", boxes: map[string]*AnswerBox{}}
	sub, err := nc.Subscribe(a.prefix+"*", a.deliver)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s*: %w", a.prefix, err)
	}
	// The boxes bound what each request holds; the subscription must not drop first.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	a.sub = sub
	return a, nil
}

func (a *Answers) deliver(m *nats.Msg) {
	token := strings.TrimPrefix(m.Subject, a.prefix)
	a.mu.Lock()
	b := a.boxes[token]
	a.mu.Unlock()
	if b == nil {
		return // the request was given up
	}
	select {
	case b.ch <- m:
	default:
		b.dropped.Add(1) // the reader finds the gap (a missing chunk or command)
	}
}

// Open returns a new reply subject, holding at most room messages until they are read.
func (a *Answers) Open(room int) *AnswerBox {
	b := &AnswerBox{a: a, token: nuid.Next(), ch: make(chan *nats.Msg, room)}
	b.Inbox = a.prefix + b.token
	a.mu.Lock()
	a.boxes[b.token] = b
	a.mu.Unlock()
	return b
}

// Close ends the subscription.
func (a *Answers) Close() error { return a.sub.Unsubscribe() }

// AnswerBox is the reply subject of one request.
type AnswerBox struct {
	// Inbox is the reply subject to send the request with.
	Inbox   string
	a       *Answers
	token   string
	ch      chan *nats.Msg
	dropped atomic.Int64
}

// Next returns the next message of the answer, nats.ErrNoResponders when the server said
// nothing subscribes to the request's subject, or ctx's error. A message carrying a stored
// command's stream sequence (HeaderStreamSeq) is returned as it is, whatever its headers.
func (b *AnswerBox) Next(ctx context.Context) (*nats.Msg, error) {
	select {
	case m := <-b.ch:
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" && m.Header.Get(HeaderStreamSeq) == "" {
			return nil, nats.ErrNoResponders
		}
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Dropped is how many messages of the answer found the box full.
func (b *AnswerBox) Dropped() int64 { return b.dropped.Load() }

// Close gives the request up: later messages of its answer are dropped.
func (b *AnswerBox) Close() {
	b.a.mu.Lock()
	delete(b.a.boxes, b.token)
	b.a.mu.Unlock()
}

package ghost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Reading cmd.<id> for a catch-up. Under auth a Ghost has no JetStream API permission:
// nats-server does not check a request's reply subject against the requester's
// permissions, and JetStream answers there with its own rights, sometimes with an empty
// body (a direct get that finds nothing, a pull request's status), which is a valid
// STREAM.DELETE. So it asks Mirage (mirage.replay.<id>), which reads EDGE_CMD and sends
// the commands to the Ghost's inbox. Without auth (headless, possibly no Mirage ever)
// nothing is confined, and the Ghost reads EDGE_CMD itself. The server says which in its
// INFO (auth_required), so the Ghost's config cannot get it wrong.

// commandReader reads the commands stored on cmd.<id>.
type commandReader interface {
	// last returns the stream sequence of the last command on cmd.<id> (0 when there is
	// none).
	last(ctx context.Context) (uint64, error)
	// beginning returns, for a new execution store, where cmd.<id> ends (as last) and
	// whether the id shows a trace of an earlier Ghost (born.go): true when the trace
	// could not be read, not looked for when cmd.<id> is empty.
	beginning(ctx context.Context) (last uint64, traced bool, err error)
	// read calls each, in stream order, for the commands on cmd.<id> from sequence start
	// on, until it has passed last or there are no more, and answered after each answer
	// (or fetch) whose commands have all gone to each and checked out. An error of each
	// or answered ends it and is returned as is.
	read(ctx context.Context, start, last uint64, each func(seq uint64, data []byte, hdr nats.Header) error, answered func() error) error
}

// commands returns how this Ghost reads cmd.<id>: through Mirage when the server requires
// authentication, from EDGE_CMD itself otherwise.
func (g *Ghost) commands() commandReader {
	if g.nc.AuthRequired() {
		return mirageReader{g}
	}
	return streamReader{g}
}

// errNoMirageForReplay: under auth no Mirage answered the replay request, and the Ghost
// may not read EDGE_CMD itself.
var errNoMirageForReplay = errors.New("no Mirage answered on " + subjects.Replay + ".<id>, and under auth this Ghost may not read EDGE_CMD itself; the catch-up is retried later (on its timer, a reconnect, or when a Mirage announces itself)")

// mirageReader reads cmd.<id> through Mirage (mirage.replay.<id>).
type mirageReader struct{ g *Ghost }

func (r mirageReader) last(ctx context.Context) (uint64, error) {
	reply, err := r.g.askReplay(ctx, bus.ReplayRequest{StartSeq: 1}, nil)
	if err != nil {
		return 0, err
	}
	return reply.LastSeq, nil
}

func (r mirageReader) read(ctx context.Context, start, last uint64, each func(uint64, []byte, nats.Header) error, answered func() error) error {
	next := start
	for ctx.Err() == nil {
		reached := uint64(0)
		reply, err := r.g.askReplay(ctx, bus.ReplayRequest{StartSeq: next, Max: bus.ReplayBatch}, func(seq uint64, data []byte, hdr nats.Header) error {
			reached = seq
			return each(seq, data, hdr)
		})
		if err != nil {
			return err
		}
		if err := answered(); err != nil {
			return err
		}
		if !reply.More || reply.Sent == 0 || reached >= last {
			return nil
		}
		next = reached + 1
	}
	return ctx.Err()
}

// A replay request answered busy (1501) is asked again after busyRetryAfter, a few times.
const (
	busyRetryAfter = 2 * bus.ReplayEvery
	maxBusyRetries = 5
)

// askReplay sends req to Mirage and reads the answer: each gets the commands (each may be
// nil when none are asked for), the returned reply is the answer's last message. Requests
// are spaced by bus.ReplayEvery (Mirage's bound per Ghost); one answered busy is asked
// again a few times. Called under catchMu.
func (g *Ghost) askReplay(ctx context.Context, req bus.ReplayRequest, each func(uint64, []byte, nats.Header) error) (bus.ReplayReply, error) {
	for busy := 0; ; busy++ {
		if wait := time.Until(g.replayAsked.Add(bus.ReplayEvery)); wait > 0 {
			select {
			case <-ctx.Done():
				return bus.ReplayReply{}, ctx.Err()
			case <-time.After(wait):
			}
		}
		reply, err := g.askReplayOnce(ctx, req, each)
		g.replayAsked = time.Now()
		if err != nil || reply.Error == nil || reply.Error.Code != bus.CodeBusy || reply.Sent > 0 || busy >= maxBusyRetries {
			if err == nil && reply.Status != "accepted" {
				if reply.Error != nil {
					err = fmt.Errorf("Mirage refused the replay request: %w", reply.Error)
				} else {
					err = fmt.Errorf("Mirage refused the replay request (status %q)", reply.Status)
				}
			}
			return reply, err
		}
		// Mirage serves one replay request per Ghost at a time: one of this Ghost's
		// that it is still serving (an answer given up on) may be that one.
		select {
		case <-ctx.Done():
			return reply, fmt.Errorf("Mirage was busy with this Ghost's replay requests: %w", ctx.Err())
		case <-time.After(busyRetryAfter):
		}
	}
}

// askReplayOnce sends one replay request with a fresh inbox of this Ghost as its reply
// subject (subscribed first) and reads the answer: the commands, in order, each with its
// stream sequence (bus.HeaderStreamSeq), then the reply, whose count must match. A
// message with a stream sequence is a command whatever other headers it has (a stored
// Status header must not end a catch-up); only one without is a server status (503: no
// Mirage) or the reply. A command out of order, before req.StartSeq or past req.Max ends
// the answer before it goes to each.
func (g *Ghost) askReplayOnce(ctx context.Context, req bus.ReplayRequest, each func(uint64, []byte, nats.Header) error) (bus.ReplayReply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return bus.ReplayReply{}, err
	}
	answers, err := g.answerSubscription()
	if err != nil {
		return bus.ReplayReply{}, err
	}
	box := answers.Open(bus.ReplayBatch + 16) // the commands asked for, the reply, statuses
	defer box.Close()
	inbox := box.Inbox
	subject := subjects.ReplayFor(g.cfg.ID)
	if err := g.nc.PublishRequest(subject, inbox, body); err != nil {
		return bus.ReplayReply{}, err
	}
	wait := bus.ReplayAnswerWait
	if g.replayWait > 0 {
		wait = g.replayWait
	}
	got, prev := 0, req.StartSeq-1 // StartSeq is at least 1
	for {
		wctx, cancel := context.WithTimeout(ctx, wait)
		msg, err := box.Next(wctx)
		cancel()
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			return bus.ReplayReply{}, errNoMirageForReplay
		case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			return bus.ReplayReply{}, fmt.Errorf("Mirage's answer on %s stopped after %d commands: nothing for %s", subject, got, wait)
		case err != nil:
			return bus.ReplayReply{}, err
		}
		if s := msg.Header.Get(bus.HeaderStreamSeq); s != "" {
			seq, err := strconv.ParseUint(s, 10, 64)
			switch {
			case err != nil:
				return bus.ReplayReply{}, fmt.Errorf("Mirage's answer on %s: command sequence %q is not a number; the catch-up is retried", subject, s)
			case seq <= prev:
				return bus.ReplayReply{}, fmt.Errorf("Mirage's answer on %s: command sequence %d after %d (asked from %d), out of order or repeated; the catch-up is retried", subject, seq, prev, req.StartSeq)
			case got >= req.Max:
				return bus.ReplayReply{}, fmt.Errorf("Mirage's answer on %s: more than the %d commands asked for; the catch-up is retried", subject, req.Max)
			}
			prev = seq
			got++
			if each != nil {
				msg.Header.Del(bus.HeaderStreamSeq)
				if err := each(seq, msg.Data, msg.Header); err != nil {
					return bus.ReplayReply{}, err
				}
			}
			continue
		}
		if msg.Header.Get("Status") == "503" {
			return bus.ReplayReply{}, errNoMirageForReplay
		}
		var reply bus.ReplayReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			return bus.ReplayReply{}, fmt.Errorf("malformed answer from Mirage on %s: %w", subject, err)
		}
		if reply.Sent != got {
			return bus.ReplayReply{}, fmt.Errorf("Mirage's answer on %s says %d commands, %d came; the catch-up is retried", subject, reply.Sent, got)
		}
		return reply, nil
	}
}

// streamReader reads cmd.<id> from EDGE_CMD itself: a server without authentication
// confines no one, and a headless Ghost may have no Mirage at all.
type streamReader struct{ g *Ghost }

// last is one direct get of the last message on cmd.<id>; 0 when there is none or no
// command stream yet.
func (r streamReader) last(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	subject := "$JS.API.DIRECT.GET." + bus.StreamCommands + "." + subjects.Command(r.g.cfg.ID)
	msg, err := r.g.directGet(ctx, subject, nil)
	if err != nil {
		return 0, err
	}
	if noStream(msg) {
		return 0, nil
	}
	if unreadable(msg) {
		return r.lastByAPI(ctx)
	}
	if err := directGetStatus(msg); err != nil {
		return 0, err
	}
	if directGetSeq(msg) == "" {
		// 404. On a cluster any replica of EDGE_CMD may answer a direct get, one behind
		// the leader too, which lacks the commands stored a moment ago: the stream's
		// leader says whether cmd.<id> is empty.
		return r.lastByAPI(ctx)
	}
	seq, err := strconv.ParseUint(directGetSeq(msg), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("direct get: no sequence header")
	}
	return seq, nil
}

// unreadable reports whether a direct get's answer is neither a message nor a status that
// nats.go could read: a message stored with a header block nats.go cannot parse (a line
// without a colon; anyone may store one on cmd.<id> without authentication) comes with no
// headers at all, the server's own (its sequence) lost with them.
func unreadable(msg *nats.Msg) bool {
	return directGetSeq(msg) == "" && msg.Header.Get("Status") == ""
}

// lastByAPI is last through the JetStream API's message get, which the stream's leader
// answers and which carries the message and its sequence in a JSON body: for a last
// command whose direct get answer is unreadable, or none (a replica may lag).
func (r streamReader) lastByAPI(ctx context.Context) (uint64, error) {
	seq, _, err := r.lastStored(ctx, bus.StreamCommands, subjects.Command(r.g.cfg.ID))
	return seq, err
}

// lastStored returns the sequence and headers of the last message on subject in stream,
// read through the JetStream API's message get (the stream's leader answers); 0 when
// there is none, or no stream (or no JetStream).
func (r streamReader) lastStored(ctx context.Context, stream, subject string) (uint64, nats.Header, error) {
	body, _ := json.Marshal(struct {
		LastBySubj string `json:"last_by_subj"`
	}{subject})
	msg, err := r.g.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return 0, nil, nil // no JetStream
	}
	if err != nil {
		return 0, nil, err
	}
	var resp struct {
		Message *struct {
			Seq  uint64 `json:"seq"`
			Hdrs []byte `json:"hdrs"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	switch err := json.Unmarshal(msg.Data, &resp); {
	case err != nil:
		return 0, nil, fmt.Errorf("stream message get: %w", err)
	case resp.Error != nil && resp.Error.Code == 404:
		return 0, nil, nil // no message on subject, or no stream
	case resp.Error != nil:
		return 0, nil, fmt.Errorf("stream message get: %d %s", resp.Error.Code, resp.Error.Description)
	case resp.Message == nil || resp.Message.Seq == 0:
		return 0, nil, fmt.Errorf("stream message get: an answer without a message")
	}
	var h nats.Header
	if len(resp.Message.Hdrs) > 0 {
		h, _ = nats.DecodeHeadersMsg(resp.Message.Hdrs) // unparsable: read without headers
	}
	return resp.Message.Seq, h, nil
}

// directGetStatus reads a direct get's answer: nil for a stored message (it carries its
// stream sequence; a Status header among its own stored headers is its own) or for 404
// (none), the server's error otherwise.
func directGetStatus(msg *nats.Msg) error {
	if directGetSeq(msg) != "" {
		return nil
	}
	switch status := msg.Header.Get("Status"); status {
	case "404":
		return nil
	case "":
		return fmt.Errorf("direct get: an answer with neither a message nor a status")
	default:
		return fmt.Errorf("direct get: status %s %s", status, msg.Header.Get("Description"))
	}
}

// directGetSeq is the stream sequence the server put on a direct get's answer: the last
// Nats-Sequence header, as the server adds its own after the message's stored headers
// (which a junk message may fill with one of its own).
func directGetSeq(msg *nats.Msg) string {
	v := msg.Header.Values(jetstream.SequenceHeader)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// directReads is how many commands a read takes by direct get before it makes a consumer:
// a catch-up that finds a few (a tick, the second look after a start) costs one request
// each, where a consumer costs four JetStream API calls and its set-up in the server, ten
// thousand times over when a fleet starts together.
const directReads = 16

// read takes the first directReads commands from start by direct get, then goes on, if
// more remain, through a pull consumer of the Ghost's own (bus.GhostReplayConsumerConfig)
// that lives only for this read. The commands read by direct get are handled with the
// consumer's first batch (answered): a long one among them does not hold up the rest.
func (r streamReader) read(ctx context.Context, start, last uint64, each func(uint64, []byte, nats.Header) error, answered func() error) error {
	direct := 0
	next, err := r.readDirect(ctx, start, last, func(seq uint64, data []byte, hdr nats.Header) error {
		direct++
		return each(seq, data, hdr)
	})
	if err != nil {
		return err
	}
	if next == 0 {
		return answered()
	}
	// The consumer's first batch makes up a whole one with the direct reads: the commands
	// are handled in batches of bus.ReplayBatch, however they were read.
	return r.readConsumer(ctx, next, last, each, answered, bus.ReplayBatch-direct)
}

// directGet sends a direct get request and returns the server's answer as it came, on a
// reply subject of its own: nats.go's request would take a stored message with an empty
// body and a Status 503 header of its own for "no responders".
func (g *Ghost) directGet(ctx context.Context, subject string, body []byte) (*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	inbox := g.nc.NewInbox()
	answers := make(chan *nats.Msg, 1)
	sub, err := g.nc.ChanSubscribe(inbox, answers) // NextMsg too takes a 503 for no responders
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }() // a no-op once the answer came
	// Gone from the server with its one answer, as a request's own reply subject is.
	if err := sub.AutoUnsubscribe(1); err != nil {
		return nil, err
	}
	if err := g.nc.PublishRequest(subject, inbox, body); err != nil {
		return nil, err
	}
	select {
	case msg := <-answers:
		return msg, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("direct get on %s: %w", subject, ctx.Err())
	}
}

// noStream reports whether a direct get's answer says no one serves the request: the
// stream does not exist (yet).
func noStream(msg *nats.Msg) bool {
	return directGetSeq(msg) == "" && msg.Header.Get("Status") == "503"
}

// directGetHeaders are the headers a direct get adds to a stored message's own.
var directGetHeaders = []string{"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending", "Nats-Last-Sequence"}

// readDirect hands each the commands on cmd.<id> from start up to last, one direct get
// each, at most directReads of them; it returns where a read must go on (0: nothing left).
func (r streamReader) readDirect(ctx context.Context, start, last uint64, each func(uint64, []byte, nats.Header) error) (uint64, error) {
	g := r.g
	subject := subjects.Command(g.cfg.ID)
	api := "$JS.API.DIRECT.GET." + bus.StreamCommands
	seq := max(start, 1)
	for range directReads {
		if seq > last {
			return 0, nil
		}
		body, _ := json.Marshal(struct {
			Seq  uint64 `json:"seq"`
			Next string `json:"next_by_subj"`
		}{seq, subject})
		msg, err := g.directGet(ctx, api, body)
		if err != nil {
			return 0, err
		}
		if noStream(msg) {
			return 0, nil // no command stream (any more)
		}
		if unreadable(msg) {
			// A message whose headers nats.go cannot read, its sequence lost with them: the
			// consumer, which takes a message's sequence from its reply subject, reads on
			// from here (the message goes to each without headers, as junk).
			return seq, nil
		}
		if err := directGetStatus(msg); err != nil {
			return 0, err
		}
		if directGetSeq(msg) == "" {
			// 404: nothing from seq on, though cmd.<id> ended at last. In a cluster a
			// direct get may be served by a replica behind the one that answered last:
			// the consumer, served by the stream's leader, reads the rest.
			return seq, nil
		}
		got, err := strconv.ParseUint(directGetSeq(msg), 10, 64)
		if err != nil || got < seq {
			return 0, fmt.Errorf("direct get from %d: sequence %q", seq, directGetSeq(msg))
		}
		if got > last {
			return seq, nil // as for a 404: the consumer reads what a replica did not have
		}
		for _, h := range directGetHeaders {
			msg.Header.Del(h)
		}
		if err := each(got, msg.Data, msg.Header); err != nil {
			return 0, err
		}
		seq = got + 1
	}
	if seq > last {
		return 0, nil
	}
	return seq, nil
}

// readConsumer reads through a pull consumer of the Ghost's own that lives only for this
// read. nats.go hands over no stored message that reads as a status (an empty body with a
// Status header, which anyone may store on cmd.<id> without authentication): it drops it
// (a gap in the consumer's sequences), ends the fetch short on it, or fails the fetch
// (400, 409, 503). Before, the catch-up then ended there, failed, or skipped past what the
// fetch dropped, on every try: the commands after such a message were never caught up,
// and the replay position stuck before it. So when a fetch brings less than it should, the
// read goes on from the first command not handed over by direct get (readDirect: its
// answer carries the server's sequence after the message's own headers, so the message is
// read as stored, and goes to each as the junk it is), then through a new consumer.
func (r streamReader) readConsumer(ctx context.Context, start, last uint64, each func(uint64, []byte, nats.Header) error, answered func() error, firstBatch int) error {
	g := r.g
	name := bus.GhostReplayConsumer(g.cfg.ID)
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = g.js.DeleteConsumer(dctx, bus.StreamCommands, name)
		cancel()
	}()
	reached := uint64(0)
	handle := func(seq uint64, data []byte, hdr nats.Header) error {
		reached = seq
		return each(seq, data, hdr)
	}
	var cons jetstream.Consumer
	var pending, delivered uint64 // commands on cmd.<id> from start, none fetched yet; the consumer's last sequence handed over
	open := func(from uint64) error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = g.js.DeleteConsumer(cctx, bus.StreamCommands, name) // a leftover from a crash, or the one before
		c, err := g.js.CreateConsumer(cctx, bus.StreamCommands, bus.GhostReplayConsumerConfig(g.cfg.ID, from))
		if err != nil {
			return err
		}
		cons, pending, delivered = c, c.CachedInfo().NumPending, 0
		return nil
	}
	if err := open(start); err != nil {
		return err
	}
	size := max(firstBatch, 1)
	resumed := uint64(0) // where the last read by direct get went on from
	for pending > 0 && reached < last && ctx.Err() == nil {
		asked := int(min(pending, uint64(size)))
		got, short, err := r.fetch(ctx, cons, asked, func(msg jetstream.Msg) (bool, error) {
			md, err := msg.Metadata()
			if err != nil {
				return true, nil
			}
			if md.Sequence.Consumer != delivered+1 {
				return false, errDropped // nats.go dropped a message before this one
			}
			delivered = md.Sequence.Consumer
			pending--
			if err := handle(md.Sequence.Stream, msg.Data(), msg.Headers()); err != nil {
				return false, err
			}
			return reached < last, nil // not waiting for the place of a message nats.go dropped
		})
		size = bus.ReplayBatch
		if err != nil {
			return err
		}
		if err := answered(); err != nil {
			return err
		}
		if !short || reached >= last {
			if got == 0 {
				break
			}
			continue
		}
		from := max(reached+1, start)
		if from == resumed {
			// The direct reads brought nothing here last time either (a message whose
			// headers nats.go cannot read, a replica behind): a later catch-up goes on.
			if ok, n := g.shortReads.Allow(); ok {
				g.log.Warn("catch-up: cmd.<id> could not be read past a stored message, by consumer or direct get; a later catch-up goes on", "seq", from, "last_seq", last, "stopped_since_last_warning", n)
			}
			return nil
		}
		resumed = from
		next, err := r.readDirect(ctx, from, last, handle)
		if err != nil {
			return err
		}
		if next == 0 {
			return answered()
		}
		if err := open(next); err != nil {
			return err
		}
	}
	return nil
}

// errDropped: a fetch found a gap in its consumer's sequences.
var errDropped = errors.New("a message was dropped")

// fetch asks cons for asked messages and passes them to each, in order, until each says
// to stop (or fails: its error is returned, but errDropped). short is whether the fetch
// brought fewer than it should have: nats.go dropped or stopped on a message (each saw a
// gap, or the fetch ended before asked messages, or failed). The fetch is not waited for
// once each said to stop.
func (r streamReader) fetch(ctx context.Context, cons jetstream.Consumer, asked int, each func(jetstream.Msg) (bool, error)) (got int, short bool, _ error) {
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel() // ends a fetch left before its end
	batch, err := cons.Fetch(asked, jetstream.FetchContext(fctx))
	if err != nil {
		return 0, false, err
	}
	for msg := range batch.Messages() {
		got++
		more, err := each(msg)
		switch {
		case errors.Is(err, errDropped):
			return got, true, nil
		case err != nil:
			return got, false, err
		case !more:
			return got, false, nil
		}
	}
	switch err := batch.Error(); {
	case err == nil, errors.Is(err, jetstream.ErrNoMessages), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return got, got < asked, nil
	case ctx.Err() != nil:
		return got, false, ctx.Err()
	}
	return got, true, nil
}

// answerSubscription returns the Ghost's subscription for Mirage's answers to its
// requests (bus.Answers: replay and seed reads, and its register under authentication),
// made when the Ghost starts under authentication, or now.
func (g *Ghost) answerSubscription() (*bus.Answers, error) {
	g.answersMu.Lock()
	defer g.answersMu.Unlock()
	if g.answersClosed {
		return nil, errStopping
	}
	if g.answers == nil {
		a, err := bus.NewAnswers(g.nc, bus.GhostInbox(g.cfg.ID))
		if err != nil {
			return nil, err
		}
		g.answers = a
	}
	return g.answers, nil
}

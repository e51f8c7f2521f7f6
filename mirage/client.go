package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// ErrNoMirage is returned when no Mirage answered on mirage.issue in time.
var ErrNoMirage = errors.New("no Mirage answered")

// noMirage is an ErrNoMirage with its own words: the server answered at once that nobody
// serves the subject (it also matches nats.ErrNoResponders), where a wait that ran out is
// an ErrNoMirage alone (a Mirage may have taken the request).
type noMirage string

func (e noMirage) Error() string { return string(e) }
func (e noMirage) Is(target error) bool {
	return target == ErrNoMirage || target == nats.ErrNoResponders
}

// ErrAnswerLost is returned when the connection to NATS closed after the issue was sent
// and before Mirage's answer came (the server died or was cut off): a Mirage may have
// accepted the issue all the same, as when no answer came in time (ErrNoMirage).
var ErrAnswerLost = errors.New("the connection to NATS closed before Mirage answered")

// ErrRejected wraps the error of an issue Mirage refused.
var ErrRejected = errors.New("issue rejected")

// Client is what the CLI and scripts use to talk to Mirage and read its state.
type Client struct {
	nc *nats.Conn
	js jetstream.JetStream
	// Presence sets the thresholds Ghosts() reports presence with (defaults: 15 s, 60 s,
	// counted from a flush interval, 5 s, after the last heartbeat time written to KV).
	Presence Presence
	// Now is this machine's clock (default time.Now). Ghosts() judges presence by the NATS
	// server's clock, and this one only when the server does not say its time.
	Now func() time.Time
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// NewClient returns a client on an open connection.
func NewClient(nc *nats.Conn) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, js: js}, nil
}

// IssueTimeout bounds the wait for Mirage to accept or reject an issue.
const IssueTimeout = 5 * time.Second

// Issue sends an issue and returns Mirage's acceptance. A rejection is an error wrapping
// ErrRejected whose *bus.Error is reachable with errors.As; no answer is ErrNoMirage, and a
// connection that closed while it waited is ErrAnswerLost: with either, the issue may have
// been accepted.
func (c *Client) Issue(ctx context.Context, is *bus.Issue) (*bus.IssueReply, error) {
	data, err := bus.Encode(is)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, IssueTimeout)
	defer cancel()
	// A connection already closed sends nothing; one that closes while the request waits
	// (nats.go ends a pending request with ErrConnectionClosed) may have sent it.
	wasClosed := c.nc.IsClosed()
	msg, err := c.nc.RequestMsgWithContext(ctx, bus.NewMsg(subjects.Issue, data, "", is.TraceID))
	if err != nil {
		if !wasClosed && (errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrDisconnected)) {
			return nil, fmt.Errorf("%w on %s (%v)", ErrAnswerLost, subjects.Issue, err)
		}
		if errors.Is(err, nats.ErrNoResponders) {
			// The server answered at once that nobody subscribes: no Mirage runs here.
			return nil, noMirage("no Mirage is serving " + subjects.Issue + " on this server")
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("%w on %s within %s", ErrNoMirage, subjects.Issue, IssueTimeout)
		}
		if errors.Is(err, nats.ErrMaxPayload) {
			return nil, bus.Errorf(bus.CodeTooLarge, "the issue is %d bytes with its headers, more than the server accepts (its max_payload)", len(data))
		}
		return nil, fmt.Errorf("%w: %v", bus.ErrUnavailable, err)
	}
	var reply bus.IssueReply
	if err := bus.Decode(msg.Data, &reply); err != nil {
		return nil, fmt.Errorf("malformed reply from Mirage: %w", err)
	}
	if reply.Status != "accepted" {
		return &reply, fmt.Errorf("%w: %w", ErrRejected, reply.Error)
	}
	return &reply, nil
}

// NoJetStreamError is returned when the server has no JetStream (or none for this
// client's account): edgectl's state lives there, so nothing can be read. It counts as
// bus.ErrUnavailable (exit 3 in the CLIs).
type NoJetStreamError struct{ URL string }

func (e *NoJetStreamError) Error() string {
	return fmt.Sprintf("the NATS server at %s has no JetStream, which edgectl needs: run nats-server with JetStream (nats-server -js, or jetstream {} in its configuration)", e.URL)
}

// Is makes a NoJetStreamError match bus.ErrUnavailable.
func (e *NoJetStreamError) Is(target error) bool { return target == bus.ErrUnavailable }

// IsNoJetStream reports whether err is a JetStream API request nobody answered, or the
// server saying JetStream is off: the server has no JetStream.
func IsNoJetStream(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}

// notProvisioned explains a missing edgectl asset: no Mirage ever ran against this server
// (or against this account), or the server has no JetStream at all. Other errors are
// returned as they are.
func (c *Client) notProvisioned(err error, asset string) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("%w: it has no %s (has a Mirage run against it?)", bus.ErrNotProvisioned, asset)
	}
	if IsNoJetStream(err) {
		return &NoJetStreamError{URL: c.nc.ConnectedUrlRedacted()}
	}
	return err
}

// LatestReport returns the newest report of an intent, or ErrIntentNotFound. A message
// on the intent's subject that is not a valid report of it (junk: see endedIntents; one
// that reads as a status too) is passed over for the newest valid one before it. A
// terminal report is final: when the last report is not terminal, the stored ones are
// read for a terminal one before it (newestReport), which a report stored out of order
// would otherwise hide.
func (c *Client) LatestReport(ctx context.Context, intentID string) (*bus.Report, error) {
	if err := subjects.ValidateToken("intent_id", intentID); err != nil {
		return nil, err
	}
	if _, err := c.js.Stream(ctx, bus.StreamReports); err != nil {
		return nil, c.notProvisioned(err, "stream "+bus.StreamReports)
	}
	// Read as stored: jetstream's get took a last message with an empty body and a Status
	// header for the server's answer (an error, or 404: no report at all).
	raw, err := directStored(ctx, c.nc, bus.StreamReports, directRequest{LastFor: subjects.Report(intentID)})
	switch {
	case err != nil:
		return nil, err
	case raw == nil:
		return c.pendingReport(ctx, intentID)
	}
	if r := validReport(intentID, raw.data, raw.header); r != nil && bus.Terminal(r.Phase) {
		return r, nil
	}
	r, _, err := newestReport(ctx, c.js, intentID)
	switch {
	case err != nil:
		return nil, err
	case r == nil:
		return c.pendingReport(ctx, intentID)
	}
	return r, nil
}

// pendingReport describes an accepted intent that has no report yet: Mirage publishes the
// first one when a result arrives, so until then the intent record is the truth.
func (c *Client) pendingReport(ctx context.Context, intentID string) (*bus.Report, error) {
	_, err := c.js.KeyValue(ctx, bus.BucketIntents)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return nil, fmt.Errorf("%w: no report for %s", ErrIntentNotFound, intentID)
	case err != nil:
		// Not "no such intent": the store could not be asked (exit 3, not 2).
		return nil, fmt.Errorf("%w: reading %s: %v", bus.ErrUnavailable, bus.BucketIntents, err)
	}
	rec, err := ReadIntent(ctx, c.js, intentID)
	if err != nil {
		if errors.Is(err, ErrIntentNotFound) {
			return nil, fmt.Errorf("%w: no report for %s", ErrIntentNotFound, intentID)
		}
		return nil, err
	}
	li := newLiveIntent(*rec)
	return li.report(time.Now()), nil
}

// readerIdle is how long the server keeps an ordered consumer of edgectl's (a report
// watch, a recovery read) once nobody pulls from it: nats.go's default is 5 minutes, so a
// client that exits would leave its consumer behind that long, thousands of them under a
// steady rate of issues. While its reader waits, the consumer has a pull outstanding and
// stays; one removed while its client was cut off is made again where it was.
const readerIdle = 10 * time.Second

// WatchReports calls fn with each report of an intent, the stored ones first, until fn
// returns false or ctx ends. Messages that are not valid reports of the intent are skipped
// (reportFeed: those that read as a status too).
func (c *Client) WatchReports(ctx context.Context, intentID string, fn func(*bus.Report) bool) error {
	return c.watchReports(ctx, intentID, 0, fn)
}

// watchReports reads report.<intentID> from stream sequence from (0: from the first).
func (c *Client) watchReports(ctx context.Context, intentID string, from uint64, fn func(*bus.Report) bool) error {
	if err := subjects.ValidateToken("intent_id", intentID); err != nil {
		return err
	}
	feed := &reportFeed{c: c, intentID: intentID, next: from}
	if err := feed.open(ctx); err != nil && !feedRetries(ctx, err) {
		return err
	}
	// The consumer goes with the watch: left to readerIdle, every wait that ended would
	// keep one 10 s, and a client waiting on one intent after another (hundreds a second,
	// or a thousand at once) would fill nats-server's 1 000 consumers per stream, refusing
	// every other reader of EDGE_REPORT, a Mirage starting among them.
	defer feed.drop()
	for {
		r, err := feed.read(ctx)
		if err != nil {
			return err
		}
		if !fn(r) {
			return nil
		}
	}
}

// reportFeed reads the reports of an intent as they are stored, passing over the messages
// that are not valid reports of it, through a consumer of report.<intent_id> of its own
// that it makes again from the first message not read when needed, as nats.go's ordered
// consumer does. Not that one: nats.go hands no message that reads as a status (an empty
// body with a Status header, which anyone who may publish on report.<intent_id> can
// store), and its ordered consumer, finding the gap or taking the message for a deleted
// consumer or no responders, made its consumer again at that very message, over and over
// (a thousand times a second), and never handed over a report after it: a watch never
// ended, 'miragectl report --wait' waited for ever. The feed's consumer drops such a
// message, or stops on it; either way the feed looks at the first stored message it has
// not read (directStored), and reads on past it when that one reads as a status.
//
// The feed reads by fetches of at most feedFetchWait, one after the other, not by one
// standing pull: on a cluster the answer to a consumer's creation can reach the client
// before its server knows where the consumer lives, and the first pull request, sent at
// once, is then lost. A standing pull that was lost is never asked again (nats.go would
// notice the missing heartbeats only inside one long wait for the next message), so the
// consumer, never pulled, delivered nothing and went away after readerIdle: a watch
// waited for ever on a report that was stored. A fetch that was lost ends by itself, and
// the next one is asked again; a consumer that went away meanwhile fails it, and is made
// again from the first message not read.
//
// A server that froze (SIGSTOP, a stopped VM) keeps its routes for about a minute, so what
// is routed to it goes unanswered rather than refused: the pulls of a consumer it holds
// (each fetch ends with nothing, as when no report came), the making of a consumer placed
// on it or, as the JetStream meta leader, to be placed by it, a direct get the cluster hands
// to it (any server with a copy of the stream may answer one, picked at random). So the
// feed also looks for itself (look): it reads the first stored message at or after next,
// by direct get, or by the API's message get (the stream's leader answers it) when the
// direct get is not answered within feedLookWait; after each fetch that ended with nothing
// and, while it has no consumer, before each making of one and every feedFetchWait between
// them. A report the look finds is handed over (stored, as a consumer's are), and a
// consumer that did not deliver it within a whole fetch is made again past it. The making
// of a consumer is bounded by feedMakeWait (the feed looks between tries) and tried again
// at the pace of open's retry, so a frozen server costs a wait about feedFetchWait +
// feedLookWait past the store of its report at most, and a cluster slow to make consumers
// one try per client every feedMakeWait + feedMaxRetry at most.
type reportFeed struct {
	c          *Client
	intentID   string
	next       uint64 // the first stream sequence not read; 0: none read yet
	cons       jetstream.Consumer
	batch      jetstream.MessageBatch // the fetch being read; nil: none
	cancel     context.CancelFunc     // ends batch
	delivered  uint64                 // the consumer sequence of the last message handed over
	reconnects uint64                 // the connection's reconnects when the consumer was made
	retry      time.Duration          // the wait after the next making of the consumer
	makeAt     time.Time              // when the consumer may be made again
}

// feedFetchWait is how long one fetch of a feed waits for reports: the longest a pull
// request lost on its way delays a report, and how often a waiting feed looks whether its
// connection reconnected meanwhile (messages delivered while it was cut off are lost).
const feedFetchWait = 2 * time.Second

// feedShortest is the least time left to a wait for which the feed still fetches.
const feedShortest = 20 * time.Millisecond

// feedFetchBatch is how many reports one fetch asks for.
const feedFetchBatch = 64

// feedMakeWait bounds one try to make the feed's consumer: the answer comes from the
// server the consumer is placed on, and a frozen one never sends it. The feed looks
// between tries.
const feedMakeWait = 2 * time.Second

// feedLookWait bounds a look's direct get, and feedLookLeaderWait the API's message get
// that follows one not answered in time: a direct get goes to any server with a copy of
// the stream (the cluster picks one at random, a frozen one too), the message get to the
// stream's leader alone, which stored the report.
const (
	feedLookWait       = 500 * time.Millisecond
	feedLookLeaderWait = time.Second
)

// feedMaxRetry is the longest wait between two makings of a feed's consumer.
const feedMaxRetry = 5 * time.Second

// feedMaxSkip bounds the messages that read as a status one look passes over.
const feedMaxSkip = 64

// open makes the feed's consumer, from next on (the first message when 0), and sets when
// it may be made again: retry after this try, which grows (100 ms, doubling, at most
// feedMaxRetry) until the consumer delivers. A try that ran out of feedMakeWait is not
// counted in it: under a cluster slow to make consumers, a client tries at most every
// feedMakeWait + retry, while its looks find the report.
func (f *reportFeed) open(ctx context.Context) error {
	f.drop()
	cfg := jetstream.ConsumerConfig{
		Name:              nuid.Next(),
		FilterSubject:     subjects.Report(f.intentID),
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: readerIdle,
		MemoryStorage:     true,
		Replicas:          1,
	}
	if f.next > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, f.next
	}
	f.reconnects = f.c.nc.Stats().Reconnects
	// Bounded: a request sent as the connection is cut off is never answered.
	cctx, cancel := context.WithTimeout(ctx, feedMakeWait)
	defer cancel()
	cons, err := f.c.js.CreateOrUpdateConsumer(cctx, bus.StreamReports, cfg)
	f.makeAt = time.Now().Add(f.retry)
	f.retry = min(2*f.retry+100*time.Millisecond, feedMaxRetry)
	if err != nil {
		// Unanswered (in time for this try, or for the wait: its context ended), the
		// consumer may have been made all the same, even after a delete sent at once (the
		// server may take the two requests out of order): not left behind.
		go f.c.deleteReportConsumer(cfg.Name, unansweredDeletes)
		return err
	}
	f.cons, f.delivered = cons, 0
	return nil
}

// feedRetries reports whether a consumer the feed could not make is tried again (read
// does, at the pace of open's retry) rather than failing the wait: its making went unanswered
// within feedMakeWait, or the server answered that JetStream is not available for now (a
// stream or the meta group electing a leader, a server restarting in a cluster), or the
// connection is cut off. A wait that failed on these would end a 'report --wait' or a
// waiting 'issue' (exit 3) seconds into a failover it is documented to wait through.
func feedRetries(ctx context.Context, err error) bool {
	if ctx.Err() != nil || IsNoJetStream(err) {
		return false
	}
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrNoServers) ||
		errors.As(err, &apiErr) && apiErr.Code == 503
}

// unansweredDeletes are the waits before each delete of a report consumer whose making
// went unanswered: at once, and again over the next seconds while it is not found, in case
// the server makes it after the first delete (or never, when it was not made: a few
// requests).
var unansweredDeletes = []time.Duration{0, 250 * time.Millisecond, time.Second, 2 * time.Second}

// deleteReportConsumer deletes the report consumer name, one try after each wait, until a
// try finds and deletes it or the connection is closed.
func (c *Client) deleteReportConsumer(name string, waits []time.Duration) {
	for _, wait := range waits {
		if !sleepOpen(c.nc, wait) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.js.DeleteConsumer(ctx, bus.StreamReports, name)
		cancel()
		if err == nil || c.nc.IsClosed() {
			return
		}
	}
}

// sleepOpen sleeps d, or less when nc is closed meanwhile (then false): a closed
// connection sends nothing more.
func sleepOpen(nc *nats.Conn, d time.Duration) bool {
	for end := time.Now().Add(d); ; {
		if nc.IsClosed() {
			return false
		}
		left := time.Until(end)
		if left <= 0 {
			return true
		}
		time.Sleep(min(left, 50*time.Millisecond))
	}
}

// drop ends the feed's fetch and deletes its consumer, in the background (the server
// removes it after readerIdle anyway).
func (f *reportFeed) drop() {
	f.close()
	if f.cons == nil {
		return
	}
	go f.c.deleteReportConsumer(f.cons.CachedInfo().Name, []time.Duration{0})
	f.cons = nil
}

// close ends the fetch being read, if any.
func (f *reportFeed) close() {
	if f.cancel != nil {
		f.cancel()
	}
	f.batch, f.cancel = nil, nil
}

// look reads the first stored message on the intent's subject at or after next,
// passing over those that are not valid reports of it (those that read as a status among
// them, which a consumer does not hand over), up to feedMaxSkip, and returns the first
// valid report; found tells whether it moved next (a message was stored there that the
// consumer, if any, has not delivered). A look not answered finds nothing.
func (f *reportFeed) look(ctx context.Context) (r *bus.Report, found bool) {
	for range feedMaxSkip {
		sm, err := f.lookAt(ctx, max(f.next, 1))
		if err != nil || sm == nil || sm.seq < f.next {
			return nil, found
		}
		f.next, found = sm.seq+1, true
		if r := validReport(f.intentID, sm.data, sm.header); r != nil {
			return r, true
		}
	}
	return nil, found
}

// lookAt reads the first stored message on the intent's subject at or after seq: by direct
// get, and when that is not answered within feedLookWait (it went to a frozen server), by
// the API's message get, which the stream's leader answers.
func (f *reportFeed) lookAt(ctx context.Context, seq uint64) (*storedMsg, error) {
	subject := subjects.Report(f.intentID)
	lctx, cancel := context.WithTimeout(ctx, feedLookWait)
	sm, err := directStored(lctx, f.c.nc, bus.StreamReports, directRequest{Seq: seq, NextFor: subject})
	cancel()
	if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return sm, err
	}
	lctx, cancel = context.WithTimeout(ctx, feedLookLeaderWait)
	defer cancel()
	return msgGet(lctx, f.c.nc, bus.StreamReports, msgGetRequest{Seq: seq, NextFor: subject})
}

// read returns the next valid report of the intent, waiting for it until ctx ends or the
// connection is closed. A consumer that cannot be made (the server restarting, the
// connection cut off, a frozen server) is tried again at the pace of open, the feed looking
// for the report meanwhile.
func (f *reportFeed) read(ctx context.Context) (*bus.Report, error) {
	for {
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case f.c.nc.IsClosed():
			return nil, nats.ErrConnectionClosed
		case f.cons == nil:
			if r, _ := f.look(ctx); r != nil {
				return r, nil
			}
			if wait := time.Until(f.makeAt); wait > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(min(wait, feedFetchWait)):
				}
				continue
			}
			_ = f.open(ctx)
			continue
		case f.batch == nil:
			if d, ok := ctx.Deadline(); ok && time.Until(d) < feedShortest {
				// Too short for a fetch (nats.go refuses one whose deadline has passed,
				// which would read as a failed fetch and make a consumer the ending wait
				// leaves behind).
				<-ctx.Done()
				return nil, ctx.Err()
			}
			fctx, cancel := context.WithTimeout(ctx, feedFetchWait)
			batch, err := f.cons.Fetch(feedFetchBatch, jetstream.FetchContext(fctx))
			if err != nil {
				cancel()
				if r := f.fetchEnded(ctx, err); r != nil {
					return r, nil
				}
				continue
			}
			f.batch, f.cancel = batch, cancel
		}
		var msg jetstream.Msg
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case msg = <-f.batch.Messages():
		}
		if msg == nil { // the fetch ended
			err := f.batch.Error()
			f.close()
			if r := f.fetchEnded(ctx, err); r != nil {
				return r, nil
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		if md.Sequence.Consumer != f.delivered+1 {
			// The consumer delivered a message that was not handed over: one that reads
			// as a status, or one lost while the connection was cut off. Made again past
			// it (read looks first).
			f.drop()
			continue
		}
		f.delivered, f.next, f.retry = md.Sequence.Consumer, md.Sequence.Stream+1, 0
		if r := validReport(f.intentID, msg.Data(), msg.Headers()); r != nil {
			return r, nil
		}
	}
}

// fetchEnded follows a fetch that ended (err: nil, or why it failed). After one that
// brought nothing more, the feed looks: a report stored that the consumer did not deliver
// within the whole fetch (its server frozen) is returned, and the consumer made again past
// it; otherwise the next fetch follows. After a reconnect (what was delivered meanwhile may
// be lost) or a failure (the consumer gone, the server shutting down, a stored message that
// reads as a status, 400 or 409, that stopped it), the consumer is made again.
func (f *reportFeed) fetchEnded(ctx context.Context, err error) *bus.Report {
	quiet := err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
	if ctx.Err() != nil {
		return nil
	}
	if !quiet || f.c.nc.Stats().Reconnects != f.reconnects {
		f.drop()
		return nil
	}
	r, found := f.look(ctx)
	if found {
		f.drop()
	}
	return r
}

// FollowReports calls fn with the newest stored report of an intent, then with each new
// one as Mirage publishes it, until fn returns false or ctx ends. Unlike WatchReports it
// does not replay the older ones.
func (c *Client) FollowReports(ctx context.Context, intentID string, fn func(*bus.Report) bool) error {
	if err := subjects.ValidateToken("intent_id", intentID); err != nil {
		return err
	}
	// From the newest valid report (a junk message after it must not hide it); before its
	// first result an intent has none: start from its record.
	_, seq, err := newestReport(ctx, c.js, intentID)
	if err != nil {
		return c.notProvisioned(err, "stream "+bus.StreamReports)
	}
	if seq == 0 {
		if r, err := c.pendingReport(ctx, intentID); err == nil && !fn(r) {
			return nil
		}
	}
	return c.watchReports(ctx, intentID, seq, fn)
}

// IssueAndWait issues an intent and waits for its terminal report. The report watch is
// set up before the issue is sent, so no round trip is spent on it after acceptance.
func (c *Client) IssueAndWait(ctx context.Context, is *bus.Issue) (*bus.IssueReply, *bus.Report, error) {
	feed := &reportFeed{c: c, intentID: is.IntentID}
	if err := feed.open(ctx); err != nil && !feedRetries(ctx, err) {
		return nil, nil, err
	}
	defer feed.drop()
	reply, err := c.Issue(ctx, is)
	if err != nil {
		return reply, nil, err
	}
	for {
		r, err := feed.read(ctx)
		if err != nil {
			return reply, nil, err
		}
		if bus.Terminal(r.Phase) {
			return reply, r, nil
		}
	}
}

// WaitTerminal returns the terminal report of an intent, waiting for it.
func (c *Client) WaitTerminal(ctx context.Context, intentID string) (*bus.Report, error) {
	var final *bus.Report
	err := c.WatchReports(ctx, intentID, func(r *bus.Report) bool {
		if bus.Terminal(r.Phase) {
			final = r
			return false
		}
		return true
	})
	if final != nil {
		return final, nil
	}
	return nil, err
}

// GhostStatus is one line of the fleet listing.
type GhostStatus struct {
	GhostID    string            `json:"ghost_id"`
	Status     string            `json:"status"`
	Version    string            `json:"version"`
	Labels     map[string]string `json:"labels"`
	Seeds      []string          `json:"seeds"`
	LastSeenMS int64             `json:"last_seen_ms"`
	// ClockOffsetMS is how far the Ghost's clock was ahead of Mirage's (negative: behind)
	// when it last registered, as Mirage measured it (the register's timestamp_ms against
	// its arrival, so a few ms of transit read as behind).
	ClockOffsetMS int64 `json:"clock_offset_ms"`
	// SilentFor is how long before the listing Mirage last heard from the Ghost, judged by
	// the NATS server's clock (not the caller's): 0 when heard from since.
	SilentFor time.Duration `json:"-"`
}

// Ghosts lists the registered Ghosts with their presence status, from KV edge_ghosts.
// last_seen_ms is a time on Mirage's clock; the presence is judged against the NATS
// server's clock (the bucket's stream info says when it answered), which Mirage's should
// agree with, not the caller's: a client whose clock ran minutes ahead showed every Ghost
// offline, one behind showed Ghosts gone for minutes online.
func (c *Client) Ghosts(ctx context.Context) ([]GhostStatus, error) {
	kv, err := c.js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		return nil, c.notProvisioned(err, "KV bucket "+bus.BucketGhosts)
	}
	ref := time.Time{}
	if st, err := kv.Status(ctx); err == nil {
		if b, ok := st.(*jetstream.KeyValueBucketStatus); ok && b.StreamInfo() != nil {
			ref = b.StreamInfo().TimeStamp
		}
	}
	if ref.IsZero() { // a server that does not say when: the caller's clock
		ref = c.now()
	}
	recs, err := ReadFleet(ctx, c.js)
	if err != nil {
		return nil, err
	}
	// KV holds the heartbeat times Mirage last flushed: up to a flush interval behind
	// what Mirage knows. Judged that much earlier, a live Ghost whose heartbeat came but
	// is not written yet is not shown stale, and the statuses agree with Mirage's.
	lag := c.Presence.Flush
	if lag <= 0 {
		lag = DefaultPresenceFlush
	}
	now := ref.Add(-lag)
	out := make([]GhostStatus, 0, len(recs))
	for _, r := range recs {
		seeds := make([]string, 0, len(r.Seeds))
		for _, s := range r.Seeds {
			seeds = append(seeds, s.ID)
		}
		labels := r.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		out = append(out, GhostStatus{GhostID: r.GhostID, Status: r.StatusWith(now, c.Presence), Version: r.Version, Labels: labels, Seeds: seeds, LastSeenMS: r.LastSeenMS,
			ClockOffsetMS: r.ClockOffsetMS, SilentFor: max(ref.Sub(time.UnixMilli(r.LastSeenMS)), 0)})
	}
	return out, nil
}

// ServerNow returns the NATS server's clock, as its stream info for EDGE_REPORT says when it
// answered. Mirage stamps intents' deadlines and reports with its own clock, which should
// agree with the server's; a client's may not: comparing those times with the server's
// keeps the client's clock out of it.
func (c *Client) ServerNow(ctx context.Context) (time.Time, error) {
	s, err := c.js.Stream(ctx, bus.StreamReports)
	if err != nil {
		return time.Time{}, c.notProvisioned(err, "stream "+bus.StreamReports)
	}
	if info := s.CachedInfo(); info != nil && !info.TimeStamp.IsZero() {
		return info.TimeStamp, nil
	}
	return time.Time{}, errors.New("the NATS server does not say its time (stream info without ts)")
}

// Intent returns the record of one intent from KV edge_intents, or ErrIntentNotFound.
func (c *Client) Intent(ctx context.Context, intentID string) (*IntentRecord, error) {
	if _, err := c.js.KeyValue(ctx, bus.BucketIntents); err != nil {
		return nil, c.notProvisioned(err, "KV bucket "+bus.BucketIntents)
	}
	return ReadIntent(ctx, c.js, intentID)
}

// Intents returns the newest limit intent records of KV edge_intents (every one when limit
// is 0 or less), newest first. A record holds the intent as accepted, with empty counts:
// its latest report (LatestReport) tells how far it is, and whether it ended.
func (c *Client) Intents(ctx context.Context, limit int) ([]IntentRecord, error) {
	kv, err := c.js.KeyValue(ctx, bus.BucketIntents)
	if err != nil {
		return nil, c.notProvisioned(err, "KV bucket "+bus.BucketIntents)
	}
	// One watcher streams every current value, rather than one get per key.
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := []IntentRecord{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("reading %s: the watcher stopped", bus.BucketIntents)
			}
			if e != nil {
				var rec IntentRecord
				if json.Unmarshal(e.Value(), &rec) == nil && rec.check(e.Key()) == nil {
					out = append(out, rec)
				}
				continue
			}
			// nil marks the end of the current values.
			sort.Slice(out, func(i, j int) bool {
				if out[i].CreatedMS != out[j].CreatedMS {
					return out[i].CreatedMS > out[j].CreatedMS
				}
				return out[i].IntentID > out[j].IntentID
			})
			if limit > 0 && len(out) > limit {
				out = out[:limit]
			}
			return out, nil
		}
	}
}

package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
)

// Reads of single stored messages and of the last message of every subject that a
// stored message reading as a status (unreadable.go) cannot stop or fool. nats.go's
// jetstream reads a direct get's answer with an empty body and a Status header as the
// server's answer (404: no message; 503, taken by its request for no responders; any
// other: an error), also when the answer is a stored message whose own headers carry the
// Status, and its KV watchers take one with Status 100 for a heartbeat and wait forever
// for the end of the listing. So: an answer is read here as it came (directStored), and
// listings read the stream (lastPerSubject).

// directGetHeaders are the headers the server adds to a stored message's own in a direct
// get's answer, after them.
var directGetHeaders = []string{"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending", "Nats-Last-Sequence"}

// directRequest says which message a direct get asks for: the last on LastFor, or the
// first at or after Seq on NextFor.
type directRequest struct {
	LastFor string `json:"-"`
	Seq     uint64 `json:"seq,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// directStored returns the message of stream that req asks for, nil when there is none,
// by a direct get read as it came: a stored message carries the server's Nats-Sequence
// after its own headers, so a Status among them is its own. An answer that is neither a
// stored message nor a status (a message whose header block nats.go cannot parse comes
// with no headers), and no responders (a stream without direct get, or a stored empty
// message with a Status 503, which nats.go's request takes for none) are read again
// through the API's message get, whose JSON body no header can fake.
func directStored(ctx context.Context, nc *nats.Conn, stream string, req directRequest) (*storedMsg, error) {
	sm, _, err := directRead(ctx, nc, stream, req)
	return sm, err
}

// storedSince is directStored for a read whose answer is acted on: a message that is
// none, or older than known (a sequence the caller saw already, 0 if none), is read
// again through the API's message get, which the stream's leader answers. On a cluster a
// direct get goes to any replica of the stream (allow_direct), the client's own server's
// first, and a replica that lags the leader (cut off from it, catching up after a restart)
// answers from what it holds: 404 for a message it has not received yet, or an older last
// message of the subject. Only such an answer costs a second request; the common one, a
// message at or past known, stays one direct get.
func storedSince(ctx context.Context, nc *nats.Conn, stream string, req directRequest, known uint64) (*storedMsg, error) {
	sm, leader, err := directRead(ctx, nc, stream, req)
	if err != nil || leader || sm != nil && sm.seq >= known {
		return sm, err
	}
	return msgGet(ctx, nc, stream, msgGetRequest{Seq: req.Seq, NextFor: req.NextFor, LastFor: req.LastFor})
}

// directRead is directStored, also saying whether the stream's leader answered (the
// API's message get it fell back to).
func directRead(ctx context.Context, nc *nats.Conn, stream string, req directRequest) (*storedMsg, bool, error) {
	subject := "$JS.API.DIRECT.GET." + stream
	var body []byte
	if req.LastFor != "" {
		subject += "." + req.LastFor
	} else {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return nil, false, err
		}
	}
	// nats.go's request returns any other answer as it came.
	msg, err := apiRequest(ctx, nc, subject, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		sm, err := msgGet(ctx, nc, stream, msgGetRequest{Seq: req.Seq, NextFor: req.NextFor, LastFor: req.LastFor})
		return sm, true, err
	case err != nil:
		return nil, false, err
	}
	seqs := msg.Header.Values(jetstream.SequenceHeader)
	if len(seqs) == 0 {
		switch status := msg.Header.Get("Status"); status {
		case "404":
			return nil, false, nil
		case "":
			sm, err := msgGet(ctx, nc, stream, msgGetRequest{Seq: req.Seq, NextFor: req.NextFor, LastFor: req.LastFor})
			return sm, true, err
		default:
			return nil, false, fmt.Errorf("direct get: status %s %s", status, msg.Header.Get("Description"))
		}
	}
	// The server's own come last: a stored message may carry headers of these names.
	seq, err := strconv.ParseUint(seqs[len(seqs)-1], 10, 64)
	if err != nil {
		return nil, false, fmt.Errorf("direct get: sequence %q", seqs[len(seqs)-1])
	}
	sm := &storedMsg{seq: seq, data: msg.Data, header: msg.Header}
	if v := msg.Header.Values(jetstream.SubjectHeader); len(v) > 0 {
		sm.subject = v[len(v)-1]
	}
	for _, h := range directGetHeaders {
		msg.Header.Del(h)
	}
	return sm, false, nil
}

// apiTimeout bounds a JetStream API request whose context has no deadline, as jetstream's
// own requests are.
const apiTimeout = 5 * time.Second

// apiRequest sends a JetStream API request, waiting for the answer until ctx ends, or
// apiTimeout when ctx has no deadline.
func apiRequest(ctx context.Context, nc *nats.Conn, subject string, body []byte) (*nats.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, apiTimeout)
		defer cancel()
	}
	return nc.RequestWithContext(ctx, subject, body)
}

// msgGetRequest says which message the API's message get asks for: the last on LastFor,
// the first at or after Seq on NextFor, or, Seq 0, at or after StartTime.
type msgGetRequest struct {
	Seq       uint64     `json:"seq,omitempty"`
	LastFor   string     `json:"last_by_subj,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
}

// msgGet returns the message of stream that req asks for, nil when there is none, read
// by the JetStream API's message get: its answer carries the message in a JSON body, so
// that no stored header can pass for the answer's own.
func msgGet(ctx context.Context, nc *nats.Conn, stream string, req msgGetRequest) (*storedMsg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg, err := apiRequest(ctx, nc, "$JS.API.STREAM.MSG.GET."+stream, body)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Message *struct {
			Subject string `json:"subject"`
			Seq     uint64 `json:"seq"`
			Hdrs    []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	switch err := json.Unmarshal(msg.Data, &resp); {
	case err != nil:
		return nil, fmt.Errorf("stream message get: %w", err)
	case resp.Error != nil && resp.Error.ErrCode == int(jetstream.JSErrCodeStreamNotFound):
		return nil, fmt.Errorf("stream message get: %w", jetstream.ErrStreamNotFound)
	case resp.Error != nil && resp.Error.Code == 404:
		return nil, nil
	case resp.Error != nil:
		return nil, fmt.Errorf("stream message get: %d %s", resp.Error.Code, resp.Error.Description)
	case resp.Message == nil:
		return nil, errors.New("stream message get: an answer without a message")
	}
	sm := &storedMsg{seq: resp.Message.Seq, subject: resp.Message.Subject, data: resp.Message.Data}
	if len(resp.Message.Hdrs) > 0 {
		sm.header, _ = nats.DecodeHeadersMsg(resp.Message.Hdrs) // unparsable: read without headers
	}
	return sm, nil
}

// lastPerSubjectWait bounds how long lastPerSubject's first read waits for a batch: a
// batch that does not come whole in time is read again, every message of the stream.
const lastPerSubjectWait = time.Second

// lastMsg is the last message of a subject, as lastPerSubject reads it.
type lastMsg struct {
	subject string
	seq     uint64
	h       nats.Header
}

// lastPerSubject calls fn with the headers of the last message of every subject of stream
// under filter, in stream order, passing over the messages that read as a status (a
// subject whose last message is one gets the one before it, if any). It reads the last
// message of each subject, headers only; nats.go hands none that reads as a status (with
// headers only, any with a Status header), and such a message ends that read short, stops
// it, or is dropped unseen (a consumer sequence it skipped says so): then it reads every
// message instead, passing over those (readStream), each logged through log.
//
// A consumer's reads end when its num_pending says nothing is left, and the server's count
// can fall short while the stream is written (addMissed): so the subjects the stream holds
// once the read is over are listed, and the last message of each one the read did not
// bring is got by itself.
//
// behind says the read came from a replica of the stream that the leader, once the read
// was over, reported behind it (not current, or lagging): on a cluster the listing's
// consumer lives on any replica and delivers what that replica holds, so a subject's last
// message may be older than the leader's. The subjects it lacks are completed from the
// leader's list (addMissed); a reader that acts on a subject's message reads it from the
// leader (kvKeys, kvLatest).
func lastPerSubject(ctx context.Context, js jetstream.JetStream, stream, filter string, log func(string, ...any), fn func(subject string, seq uint64, h nats.Header)) (behind bool, _ error) {
	var got []lastMsg
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		FilterSubjects:    []string{filter},
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		HeadersOnly:       true,
	})
	if err != nil {
		return false, err
	}
	var delivered uint64
	gap := false
	complete, err := readAll(ctx, cons, lastPerSubjectWait, func(msg jetstream.Msg) {
		md, err := msg.Metadata()
		if err != nil || md.Sequence.Consumer != delivered+1 {
			gap = true
			return
		}
		delivered = md.Sequence.Consumer
		got = append(got, lastMsg{msg.Subject(), md.Sequence.Stream, msg.Headers()})
	})
	readEvery := err != nil || !complete || gap
	host := "" // the server the read came from, "" when unknown
	if ci := cons.CachedInfo(); ci != nil && ci.Cluster != nil {
		host = ci.Cluster.Leader
	}
	if readEvery {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		host = ""
		latest, err := lastReadThrough(ctx, js, stream, filter, log)
		if err != nil {
			return false, err
		}
		got = got[:0]
		for _, l := range latest {
			got = append(got, l)
		}
	}
	if got, behind, err = addMissed(ctx, js, stream, filter, !readEvery, host, log, got); err != nil {
		return false, err
	}
	sort.Slice(got, func(i, j int) bool { return got[i].seq < got[j].seq })
	for _, l := range got {
		fn(l.subject, l.seq, l.h)
	}
	return behind, nil
}

// addMissed returns got with the last message of each subject of stream under filter that
// the stream holds now and got lacks. A consumer's num_pending can fall short of what it
// has left to deliver while the stream is written: the server lowers it at once for a
// message removed ahead of the consumer, and raises it for a new message later, from
// another goroutine; and a consumer of the last message per subject (a stream keeping
// more than one per subject) has it lowered for a removed message it never counted (an
// older message of a subject written again at its limit, or expired). A read ended by
// num_pending 0 then missed the subjects last written meanwhile, or the last few it had
// left: a listing of edge_ghosts missed a Ghost re-registering as it ran (its old record
// removed by the new one, History 1), one of edge_fleet a Ghost enrolled. The subjects
// the stream holds (a stream info with a subject filter) are counted by the server at one
// moment; each one missing is got by a direct get. One whose last message reads as a
// status is read through (readStream), for the one before it, when readJunk (the listing
// did not read every message already: then what it did not bring has only such messages,
// or was written after it). behind says host (the server the listing came from, "" if
// unknown) is a replica the stream's leader reports behind it.
func addMissed(ctx context.Context, js jetstream.JetStream, stream, filter string, readJunk bool, host string, log func(string, ...any), got []lastMsg) (_ []lastMsg, behind bool, _ error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, false, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, false, err
	}
	if c := info.Cluster; c != nil && host != "" && host != c.Leader {
		behind = true // not among the replicas: behind too
		for _, r := range c.Replicas {
			if r.Name == host {
				behind = !r.Current || r.Lag > 0
			}
		}
	}
	have := make(map[string]bool, len(got))
	for _, l := range got {
		have[l.subject] = true
	}
	for subject := range info.State.Subjects {
		if have[subject] {
			continue
		}
		// The stream info came from the leader: a replica behind it may not hold the
		// subject yet, so its none is asked of the leader again (storedSince).
		sm, err := storedSince(ctx, js.Conn(), stream, directRequest{LastFor: subject}, 0)
		switch {
		case err != nil:
			return nil, false, err
		case sm == nil:
			continue // removed since
		case !readsAsStatus(sm.data, sm.header, true):
			got = append(got, lastMsg{subject, sm.seq, sm.header})
			continue
		case !readJunk:
			continue
		}
		latest, err := lastReadThrough(ctx, js, stream, subject, log)
		if err != nil {
			return nil, false, err
		}
		if prev, ok := latest[subject]; ok {
			got = append(got, prev)
		}
	}
	return got, behind, nil
}

// lastReadThrough reads the headers of every message of stream under filter and returns
// the last one of each subject, passing over those that read as a status (readStream).
func lastReadThrough(ctx context.Context, js jetstream.JetStream, stream, filter string, log func(string, ...any)) (map[string]lastMsg, error) {
	latest := map[string]lastMsg{}
	err := readStream(ctx, js, stream, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		FilterSubjects:    []string{filter},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		HeadersOnly:       true,
	}, log, func(msg jetstream.Msg) {
		var seq uint64
		if md, err := msg.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		latest[msg.Subject()] = lastMsg{msg.Subject(), seq, msg.Headers()}
	})
	if err != nil {
		return nil, err
	}
	return latest, nil
}

// listedKey is a key of a KV bucket as kvKeys lists it, with the sequence of its last
// message then: a read of the key (kvLatest) answered with an older one came from a
// replica behind the listing. A listing read on a replica behind the leader
// (lastPerSubject) gives every key readFromLeader, for its value to be read from the
// leader.
type listedKey struct {
	key string
	seq uint64
}

// readFromLeader is the sequence kvKeys gives every key of a listing read on a replica
// behind the stream's leader: no direct get's answer is at least as recent as it.
const readFromLeader = ^uint64(0)

// kvKeys returns the keys of KV bucket whose last message is a value (not a delete
// marker; when the listing was read on a replica behind the leader, those too, each
// readFromLeader, for kvLatest to read from the leader), passing over the messages that read as a status (lastPerSubject): what
// jetstream's ListKeys returns, which a stored Status 100 held up until its context ended.
func kvKeys(ctx context.Context, js jetstream.JetStream, bucket string, log func(string, ...any)) ([]listedKey, error) {
	prefix := "$KV." + bucket + "."
	var keys, deleted []listedKey
	behind, err := lastPerSubject(ctx, js, "KV_"+bucket, prefix+">", log, func(subject string, seq uint64, h nats.Header) {
		k := listedKey{strings.TrimPrefix(subject, prefix), seq}
		if kvDeleted(h) {
			deleted = append(deleted, k)
		} else {
			keys = append(keys, k)
		}
	})
	if behind {
		// Deleted on that replica, maybe written again since: the leader says.
		keys = append(keys, deleted...)
		for i := range keys {
			keys[i].seq = readFromLeader
		}
	}
	return keys, err
}

// kvDeleted reports whether a KV message with these headers is a delete marker.
func kvDeleted(h nats.Header) bool {
	switch h.Get("KV-Operation") {
	case "DEL", "PURGE":
		return true
	}
	return false
}

// kvLatest returns the latest message on key in KV bucket (a value, whatever it holds: one
// that reads as a status is junk, for its reader to refuse), nil when there is none or the
// latest is a delete marker. known is the sequence of a message of the key the caller saw
// already (a listing's, kvKeys), 0 if none: a direct get that answers none, or a message
// older than known, came from a replica behind the leader, and the leader is asked
// (storedSince). A key is never taken for absent on a lagging replica's word.
func kvLatest(ctx context.Context, nc *nats.Conn, bucket, key string, known uint64) (*storedMsg, error) {
	sm, err := storedSince(ctx, nc, "KV_"+bucket, directRequest{LastFor: "$KV." + bucket + "." + key}, known)
	if err != nil || sm == nil {
		return nil, err
	}
	if kvDeleted(sm.header) {
		return nil, nil
	}
	return sm, nil
}

// kvHistory returns the messages stored on key in KV bucket, oldest first, passing over
// those that read as a status (readStream), each logged through log.
func kvHistory(ctx context.Context, js jetstream.JetStream, bucket, key string, log func(string, ...any)) ([]*storedMsg, error) {
	var out []*storedMsg
	err := readStream(ctx, js, "KV_"+bucket, jetstream.OrderedConsumerConfig{
		InactiveThreshold: readerIdle,
		FilterSubjects:    []string{"$KV." + bucket + "." + key},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
	}, log, func(msg jetstream.Msg) {
		sm := &storedMsg{subject: msg.Subject(), data: msg.Data(), header: msg.Headers()}
		if md, err := msg.Metadata(); err == nil {
			sm.seq = md.Sequence.Stream
		}
		out = append(out, sm)
	})
	return out, err
}

// rateLimited returns warn let through at most once per bus.RateLogEvery, saying how many
// lines each stands for: a store holding a flood of messages that read as a status must
// not flood the log of the read that passes over them.
func rateLimited(warn func(string, ...any)) func(string, ...any) {
	rl := new(bus.RateLog)
	return func(msg string, args ...any) {
		if ok, n := rl.Allow(); ok {
			warn(msg, append(args, "passed_since_last_warning", n)...)
		}
	}
}

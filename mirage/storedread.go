package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reads of single stored messages that a stored message reading as a status
// (unreadable.go) cannot stop or fool. nats.go's jetstream reads a direct get's answer
// with an empty body and a Status header as the server's answer (404: no message; 503,
// taken by its request for no responders; any other: an error), also when the answer is a
// stored message whose own headers carry the Status. So: an answer is read here as it
// came (directStored).

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
	subject := "$JS.API.DIRECT.GET." + stream
	var body []byte
	if req.LastFor != "" {
		subject += "." + req.LastFor
	} else {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return nil, err
		}
	}
	// nats.go's request returns any other answer as it came.
	msg, err := apiRequest(ctx, nc, subject, body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return msgGet(ctx, nc, stream, msgGetRequest{Seq: req.Seq, NextFor: req.NextFor, LastFor: req.LastFor})
	case err != nil:
		return nil, err
	}
	seqs := msg.Header.Values(jetstream.SequenceHeader)
	if len(seqs) == 0 {
		switch status := msg.Header.Get("Status"); status {
		case "404":
			return nil, nil
		case "":
			return msgGet(ctx, nc, stream, msgGetRequest{Seq: req.Seq, NextFor: req.NextFor, LastFor: req.LastFor})
		default:
			return nil, fmt.Errorf("direct get: status %s %s", status, msg.Header.Get("Description"))
		}
	}
	// The server's own come last: a stored message may carry headers of these names.
	seq, err := strconv.ParseUint(seqs[len(seqs)-1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("direct get: sequence %q", seqs[len(seqs)-1])
	}
	sm := &storedMsg{seq: seq, data: msg.Data, header: msg.Header}
	if v := msg.Header.Values(jetstream.SubjectHeader); len(v) > 0 {
		sm.subject = v[len(v)-1]
	}
	for _, h := range directGetHeaders {
		msg.Header.Del(h)
	}
	return sm, nil
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

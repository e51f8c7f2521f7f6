package bus

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/subjects"
)

// A Ghost reads the commands it missed from EDGE_CMD. Under auth it has no JetStream API
// permission at all (nats-server does not check a request's reply subject against the
// requester's permissions, and some JetStream answers have an empty body, which is what
// STREAM.DELETE takes), so it asks Mirage on mirage.replay.<ghost_id>
// (subjects.ReplayFor): Mirage reads cmd.<ghost_id> itself and sends the commands to the
// Ghost's inbox, one message each (the stored bytes and headers, plus HeaderStreamSeq),
// then a ReplayReply. Without auth (no Mirage needed) a Ghost reads EDGE_CMD itself,
// through a short-lived consumer of its own (GhostReplayConsumerConfig).

// ReplayRequest is the body of a replay request. The Ghost is the subject's token, never
// a field: only that Ghost may publish on its subject.
type ReplayRequest struct {
	// StartSeq is the first EDGE_CMD sequence to send (at least 1).
	StartSeq uint64 `json:"start_seq"`
	// Max is how many commands to send, at most ReplayBatch; 0 sends none: the answer
	// only says where cmd.<ghost_id> ends.
	Max int `json:"max"`
	// History asks whether the Ghost's id shows a trace of an earlier Ghost (ReplayReply's
	// Traced): a Ghost on a new execution store asks it once, before it subscribes to
	// cmd.<ghost_id> and before it registers.
	History bool `json:"history,omitempty"`
}

// ReplayReply is the last message of the answer to a replay request, after the commands.
type ReplayReply struct {
	Status string `json:"status"` // accepted | rejected
	// LastSeq is the stream sequence of the last command on cmd.<ghost_id> (0: none),
	// LastCommandID its command_id ("" when it does not read as a command).
	LastSeq       uint64 `json:"last_seq"`
	LastCommandID string `json:"last_command_id,omitempty"`
	// Sent is how many commands were sent before this reply; More says commands from
	// StartSeq up to LastSeq remain unsent (Max or the answer's byte bound was reached).
	Sent int  `json:"sent"`
	More bool `json:"more,omitempty"`
	// Traced, set only when the request asked for History, says whether the id shows a
	// trace of an earlier Ghost: a record in KV edge_ghosts (it registered) or an event on
	// evt.<ghost_id> in EDGE_EVT; true also when Mirage could not read them. Absent (a
	// Mirage of an older version) the Ghost takes it for true.
	Traced *bool  `json:"traced,omitempty"`
	Error  *Error `json:"error,omitempty"`
}

// HeaderStreamSeq carries a replayed command's EDGE_CMD sequence in Mirage's answer. A
// message of the answer that carries it is a command, whatever else it carries.
const HeaderStreamSeq = "Edge-Stream-Seq"

// ReplayedHeaders are the stored headers of a command that Mirage sends with it: the ones
// a Ghost reads on a command (de-duplication id, trace context, signature). No other
// stored header is sent: one such as Status would read as a server status on the way.
var ReplayedHeaders = []string{HeaderMsgID, HeaderTraceparent, HeaderSignature, HeaderSigner}

// ReplayEvery is how often Mirage serves a replay request of one Ghost at most; a request
// sooner is answered busy (CodeBusy). A Ghost spaces its requests by it.
const ReplayEvery = 250 * time.Millisecond

// ReplayAnswerWait is how long a Ghost waits for each message of Mirage's answer to a
// replay request.
const ReplayAnswerWait = 10 * time.Second

// ReplaySlotWait is how long Mirage lets a replay request wait for its turn before it
// drops it: well inside the Ghost's wait for the first message, so that a request served
// late still has the time its store reads take, and none is served to a Ghost that gave up.
const ReplaySlotWait = ReplayAnswerWait / 2

// DecodeReplayRequest reads a replay request: not JSON is 1100, a field of the wrong type
// (history too: a boolean) 1200, a missing or zero start_seq or a max outside
// 0..ReplayBatch 1300.
func DecodeReplayRequest(data []byte) (ReplayRequest, error) {
	var req ReplayRequest
	if err := decodeRequest(data, &req, "replay request"); err != nil {
		return req, err
	}
	if req.StartSeq == 0 {
		return req, FieldError(CodeSemantic, "start_seq", "missing: the first EDGE_CMD sequence to replay, at least 1")
	}
	if req.Max < 0 || req.Max > ReplayBatch {
		return req, FieldError(CodeSemantic, "max", "%d: between 0 and %d commands", req.Max, ReplayBatch)
	}
	return req, nil
}

// GhostReplayConsumerConfig is the replay consumer a Ghost without auth creates for
// itself from sequence start: a pull consumer (no deliver subject) filtered on
// cmd.<ghost_id>, no acks, in memory, gone a minute after its last use, at most 256
// commands and 30 s per pull request.
func GhostReplayConsumerConfig(ghostID string, start uint64) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Name:              GhostReplayConsumer(ghostID),
		FilterSubject:     subjects.Command(ghostID),
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       max(start, 1),
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
		Replicas:          1,
		MaxRequestBatch:   ReplayBatch,
		MaxRequestExpires: 30 * time.Second,
	}
}

// ReplayBatch is the most commands one replay request (or one fetch of a replay
// consumer) gets.
const ReplayBatch = 256

package bus

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/subjects"
)

// A Ghost reads the commands it missed through a short-lived pull consumer of its own on
// EDGE_CMD. Under auth a Ghost may not create consumers (nats-server does not check a
// new consumer's deliver_subject against its creator's permissions), so it asks Mirage
// on mirage.replay.<ghost_id> (subjects.ReplayFor) to create it, then binds to it.

// ReplayRequest is the body of a replay request. The Ghost is the subject's token, never
// a field: only that Ghost may publish on its subject.
type ReplayRequest struct {
	// StartSeq is the first EDGE_CMD sequence to deliver (at least 1).
	StartSeq uint64 `json:"start_seq"`
}

// ReplayReply answers a replay request.
type ReplayReply struct {
	Status string `json:"status"` // accepted | rejected
	// NumPending is how many commands on cmd.<ghost_id> the consumer holds from StartSeq
	// on, when it was created.
	NumPending uint64 `json:"num_pending"`
	Error      *Error `json:"error,omitempty"`
}

// DecodeReplayRequest reads a replay request: not JSON is 1100, a field of the wrong type
// 1200, a missing or zero start_seq 1300.
func DecodeReplayRequest(data []byte) (ReplayRequest, error) {
	var req ReplayRequest
	if err := json.Unmarshal(data, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := jsonPath(te.Field)
			if field == "" {
				field = "(root)"
			}
			return req, FieldError(CodeDecode, field, "expected %s, got JSON %s", te.Type, te.Value)
		}
		return req, Errorf(CodeFraming, "replay request is not valid JSON: %v", err)
	}
	if req.StartSeq == 0 {
		return req, FieldError(CodeSemantic, "start_seq", "missing: the first EDGE_CMD sequence to replay, at least 1")
	}
	return req, nil
}

// GhostReplayConsumerConfig is the replay consumer of Ghost ghostID from sequence start:
// a pull consumer (no deliver subject) filtered on cmd.<ghost_id>, no acks, in memory,
// gone a minute after its last use. One pull request gets at most 256 commands and
// waits at most 30 s: the server sends them to the request's reply subject, which it
// does not check against permissions either, so a request should not fetch more than
// the Ghost's own fetches (256, 5 s) do.
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

// ReplayBatch is the most commands one fetch of a replay consumer asks for.
const ReplayBatch = 256

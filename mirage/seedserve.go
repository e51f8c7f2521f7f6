package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
	"github.com/edgectl/edgectl/subjects"
)

// Seed reads: under auth a Ghost has no JetStream API permission on edge_seeds (any API
// call a Ghost may make can carry another in its reply subject, answered with the
// account's rights), so it asks on mirage.seed.<ghost_id> for the pushed objects it
// installs. The subject token is the Ghost (the server lets only that Ghost publish
// there); the body names the object and the most bytes the Ghost accepts. Mirage reads
// the object with its own access (declarative.Objects: direct get, re-reads, digest
// checks) and sends it to the reply subject, guarded like every answer to a Ghost
// (replyGuard), in chunks of at most bus.SeedChunkSize, then a bus.SeedAnswer.

// onSeedRead serves mirage.seed.*. Like onReplay it never blocks the subscription: a
// request whose reply subject is not the Ghost's inbox is dropped, a malformed one is
// answered rejected, one while another of its Ghost is served, or sooner than
// bus.SeedEvery after its last read ended, is answered busy at once (no JetStream call);
// the others wait at most bus.SeedSlotWait for one of seedReadSlots and are dropped after
// (the Ghost's first wait, bus.SeedFirstWait, covers that and the read).
func (m *Mirage) onSeedRead(msg *nats.Msg) {
	arrived := time.Now()
	id, idErr := subjects.GhostFromSeed(msg.Subject)
	if !m.guard.allows(id, msg.Subject, msg.Reply) {
		return
	}
	req, err := bus.DecodeSeedRequest(msg.Data)
	switch {
	case idErr != nil:
		err = bus.FieldError(bus.CodeSemantic, "subject", "%s", subjects.Reason(idErr))
	case err != nil:
	case req.MaxSize > declarative.MaxFileSize:
		err = bus.FieldError(bus.CodeSemantic, "max_size", "%d: at most %d (the largest seed file)", req.MaxSize, declarative.MaxFileSize)
	default:
		if nerr := declarative.ValidateObjectName(req.Object); nerr != nil {
			err = bus.FieldError(bus.CodeSemantic, "object", "%v", nerr)
		}
	}
	if err != nil {
		perr := bus.AsError(err)
		if ok, n := m.seedRefusals.Allow(); ok {
			m.log.Warn("seed read request rejected", "direction", "in", "subject", msg.Subject, "code", perr.Code, "err", perr.Message, "rejected_since_last_warning", n)
		}
		m.answerSeed(msg.Reply, bus.SeedAnswer{Status: bus.SeedRejected, Object: req.Object, Error: perr})
		return
	}
	if !m.seedGate.enter(id, arrived) {
		m.answerSeed(msg.Reply, bus.SeedAnswer{Status: bus.SeedBusy, Object: req.Object, Error: bus.Errorf(bus.CodeBusy,
			"a seed read request of %s is being served or its last ended less than %s ago: retry later", id, bus.SeedEvery)})
		return
	}
	// Dropped past bus.SeedSlotWait: the Ghost's first wait does not cover a longer one.
	m.serveGated(m.seedGate, m.seedReads, id, arrived, bus.SeedSlotWait, func() { m.serveSeed(id, msg.Reply, req) })
}

// serveSeed reads the object req names and sends it to reply. It gives up when Mirage
// stops (Close waits for it), when the read takes longer than bus.SeedReadTimeout, or when
// a message cannot be sent.
func (m *Mirage) serveSeed(id, reply string, req bus.SeedRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), bus.SeedReadTimeout)
	watched := make(chan struct{})
	defer func() { cancel(); <-watched }()
	go func() { // ends with serveSeed: cancel above
		defer close(watched)
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	data, err := m.readSeed(ctx, req)
	status, code := declarative.ReadOutcome(err)
	if err != nil {
		perr := &bus.Error{Code: code, Class: bus.ClassOf(code), Message: err.Error()}
		if status == bus.SeedFailed {
			perr.Message = "reading " + bus.BucketSeeds + ": " + err.Error()
		}
		if status == bus.SeedFailed || status == bus.SeedCorrupt {
			m.log.Warn("seed read failed", "peer", id, "object", req.Object, "status", status, "err", err)
		}
		m.answerSeed(reply, bus.SeedAnswer{Status: status, Object: req.Object, Error: perr})
		return
	}
	chunks := 0
	size := strconv.Itoa(len(data))
	for off := 0; off < len(data); off += bus.SeedChunkSize {
		if ctx.Err() != nil {
			m.log.Warn("seed read answer not sent in full", "peer", id, "object", req.Object, "chunks", chunks, "err", context.Cause(ctx))
			return
		}
		chunks++
		out := nats.NewMsg(reply)
		out.Header.Set(bus.HeaderSeedChunk, strconv.Itoa(chunks))
		out.Header.Set(bus.HeaderSeedSize, size)
		out.Data = data[off:min(off+bus.SeedChunkSize, len(data))]
		if err := m.nc.PublishMsg(out); err != nil {
			m.log.Warn("seed read answer not sent", "peer", id, "object", req.Object, "chunks", chunks-1, "err", err)
			return
		}
	}
	m.answerSeed(reply, bus.SeedAnswer{Status: bus.SeedOK, Object: req.Object, Size: uint64(len(data)),
		Digest: declarative.ObjectDigest(data), Chunks: chunks})
	m.log.Debug("seed object served", "peer", id, "object", req.Object, "size", len(data), "chunks", chunks)
}

// readSeed reads the object req names, at most req.MaxSize bytes.
func (m *Mirage) readSeed(ctx context.Context, req bus.SeedRequest) ([]byte, error) {
	obs, err := declarative.OpenObjects(ctx, m.js)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, errors.New("object store " + bus.BucketSeeds + " not found")
	}
	if err != nil {
		return nil, err
	}
	return obs.Get(ctx, req.Object, req.MaxSize)
}

func (m *Mirage) answerSeed(reply string, ans bus.SeedAnswer) {
	if data, err := json.Marshal(ans); err == nil && reply != "" {
		_ = m.nc.Publish(reply, data)
	}
}

// Bounds on seed reads: one request per Ghost at a time and bus.SeedEvery between the
// end of one and the next, seedReadSlots reads at once (each holds the object in memory,
// at most declarative.MaxFileSize), a request waiting for a slot at most
// bus.SeedSlotWait, a read at most bus.SeedReadTimeout.
const seedReadSlots = 8

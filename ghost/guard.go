package ghost

import (
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
)

// clockSkew is how far in the future a signed command's timestamp may be.
const clockSkew = time.Minute

// authMode reports whether commands must be signed by a trusted Mirage key.
func (g *Ghost) authMode() bool { return len(g.cfg.TrustedMirageKeys) > 0 }

// checkSignature verifies, in auth mode, that the exact bytes received were signed by a
// trusted Mirage key.
func (g *Ghost) checkSignature(data []byte, hdr nats.Header) *bus.Error {
	if !g.authMode() {
		return nil
	}
	_, err := bus.VerifySignature(data, hdr, func(signer string) bool {
		return slices.Contains(g.cfg.TrustedMirageKeys, signer)
	})
	if err != nil {
		return bus.AsError(err)
	}
	return nil
}

// checkFreshness refuses, in auth mode, a signed command stamped in the future or older
// than the freshness window. Judged on this Ghost's own clock, not on its estimate of
// Mirage's (clock.go), which a register.ack gives and no signature covers: a security
// check does not move with it. So a Ghost whose clock is more than clockSkew behind
// Mirage's refuses every signed command (1800, saying how far in the future it reads),
// and warns at registration that its clock is off.
func (g *Ghost) checkFreshness(cmd *bus.Command) *bus.Error {
	if !g.authMode() {
		return nil
	}
	err := bus.CheckFreshness(cmd.TimestampMS, g.cfg.Now().UnixMilli(), g.cfg.CommandMaxAge.Milliseconds(), clockSkew.Milliseconds())
	if err != nil {
		return bus.AsError(err)
	}
	return nil
}

// reject emits the security error event of a refused command, when its command_id can be
// read; nothing is executed or recorded.
func (g *Ghost) reject(data []byte, hdr nats.Header, perr *bus.Error) {
	probe := bus.ProbeCommand(data)
	if probe.TraceID == "" {
		probe.TraceID = bus.TraceIDFrom(hdr)
	}
	g.log.Warn("refused a command for security", "direction", "in", "message_type", bus.TypeCommand, "command_id", probe.CommandID, "code", perr.Code, "err", perr.Message)
	if probe.CommandID == "" {
		return
	}
	g.emit(g.send, g.pipeline.Reject(probe, data, perr))
}

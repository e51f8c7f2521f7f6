package subjects

import (
	"fmt"
	"strings"
)

// Fixed subjects.
const (
	// Issue is where users send an issue to Mirage (core request/reply).
	Issue = "mirage.issue"
	// Announce is where Mirage tells Ghosts it is up, so that they register again.
	Announce = "mirage.announce"
	// MirageProbe is where Mirages ask each other whether another one serves the
	// deployment (core request/reply, answered by every live Mirage).
	MirageProbe = "mirage.probe"
	// Attach is where an operator asks Mirage to bring a headless Ghost into the registry.
	Attach = "mirage.attach"
	// Fleet prefixes the enrollment requests (mirage.fleet.add, mirage.fleet.rm).
	Fleet = "mirage.fleet"
	// FleetAdd enrolls a Ghost's public key; FleetRemove revokes it.
	FleetAdd    = Fleet + ".add"
	FleetRemove = Fleet + ".rm"
	FleetList   = Fleet + ".list"
	// Replay prefixes the requests in which a Ghost asks Mirage for its replay consumer
	// (mirage.replay.<ghost_id>, core request/reply).
	Replay = "mirage.replay"
	// Seed prefixes the requests in which a Ghost reads a pushed seed object through Mirage
	// (mirage.seed.<ghost_id>, core request, answered with several messages).
	Seed = "mirage.seed"
)

// Subject prefixes, one token each.
const (
	prefixCommand   = "cmd"
	prefixEvent     = "evt"
	prefixAck       = "ack"
	prefixRegister  = "reg"
	prefixHeartbeat = "hb"
	prefixReport    = "report"
	prefixAttach    = "attach"
	prefixProbe     = "probe"
)

// Wildcards that streams and Mirage subscriptions use.
var (
	AllCommands   = prefixCommand + ".*"
	AllEvents     = prefixEvent + ".*"
	AllRegisters  = prefixRegister + ".*"
	AllHeartbeats = prefixHeartbeat + ".*"
	AllReports    = prefixReport + ".*"
	AllAcks       = prefixAck + ".*"
	AllAttaches   = prefixAttach + ".*"
	AllReplays    = Replay + ".*"
	AllSeeds      = Seed + ".*"
)

// Command is the subject a Ghost receives its commands on.
func Command(ghostID string) string { return prefixCommand + "." + ghostID }

// Event is the subject a Ghost publishes its events on.
func Event(ghostID string) string { return prefixEvent + "." + ghostID }

// Ack is the subject Mirage answers event.ack on.
func Ack(ghostID string) string { return prefixAck + "." + ghostID }

// Register is the subject a Ghost sends register on (request/reply).
func Register(ghostID string) string { return prefixRegister + "." + ghostID }

// Heartbeat is the subject a Ghost sends heartbeats on.
func Heartbeat(ghostID string) string { return prefixHeartbeat + "." + ghostID }

// Report is the subject Mirage publishes the reports of one intent on.
func Report(intentID string) string { return prefixReport + "." + intentID }

// AttachGhost is where Mirage asks a headless Ghost to register (request/reply).
func AttachGhost(ghostID string) string { return prefixAttach + "." + ghostID }

// Probe is where the instances of Ghost ghostID ask each other whether another one is
// running (core request/reply, answered by every live instance). Only that Ghost may
// publish or subscribe on it (natsd.GhostPermissions).
func Probe(ghostID string) string { return prefixProbe + "." + ghostID }

// ReplayFor is where Ghost ghostID asks Mirage for the commands it missed. Only that
// Ghost may publish on it (natsd.GhostPermissions): the subject token is its identity.
func ReplayFor(ghostID string) string { return Replay + "." + ghostID }

// GhostFromReplay returns the ghost_id of a mirage.replay.<ghost_id> subject.
func GhostFromReplay(subject string) (string, error) {
	return ghostAfter(Replay, "a replay request", subject)
}

// SeedFor is where Ghost ghostID asks Mirage for an object of the seed store. Only that
// Ghost may publish on it (natsd.GhostPermissions): the subject token is its identity.
func SeedFor(ghostID string) string { return Seed + "." + ghostID }

// GhostFromSeed returns the ghost_id of a mirage.seed.<ghost_id> subject.
func GhostFromSeed(subject string) (string, error) {
	return ghostAfter(Seed, "a seed read request", subject)
}

// ghostAfter returns the ghost_id of a <prefix>.<ghost_id> subject, what naming it in
// the error.
func ghostAfter(prefix, what, subject string) (string, error) {
	id, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", fmt.Errorf("subject %q is not %s subject", subject, what)
	}
	if err := ValidateGhostID(id); err != nil {
		return "", fmt.Errorf("subject %q: %w", subject, err)
	}
	return id, nil
}

// GhostFrom returns the ghost_id carried by a per-Ghost subject such as evt.<id>.
func GhostFrom(subject string) (string, error) {
	head, id, ok := strings.Cut(subject, ".")
	if !ok {
		return "", fmt.Errorf("subject %q has no ghost id token", subject)
	}
	switch head {
	case prefixCommand, prefixEvent, prefixAck, prefixRegister, prefixHeartbeat, prefixProbe:
	default:
		return "", fmt.Errorf("subject %q is not a per-ghost subject", subject)
	}
	if err := ValidateGhostID(id); err != nil {
		return "", fmt.Errorf("subject %q: %w", subject, err)
	}
	return id, nil
}

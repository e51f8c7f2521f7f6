package bus

import "time"

// AttachAnswerWithin is how long a Ghost may take to answer Mirage's attach request: it
// registers meanwhile, and a Mirage taking in many registrations at once may be slow to
// acknowledge. Mirage waits a little longer than this for the answer, the operator's
// client longer still, so that an attach that worked is not reported unreachable.
const AttachAnswerWithin = 15 * time.Second

// AttachRelayWait is how long Mirage waits for a Ghost's answer to attach, and
// AttachClientWait how long 'miragectl attach' waits for Mirage's.
const (
	AttachRelayWait  = AttachAnswerWithin + 2*time.Second
	AttachClientWait = AttachRelayWait + 3*time.Second
)

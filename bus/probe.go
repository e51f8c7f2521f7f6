package bus

// Envelope types of the duplicate-id probe on probe.<ghost_id> (docs/protocol.md).
const (
	// TypeProbe asks whether another live instance holds a ghost_id.
	TypeProbe = "probe"
	// TypeProbeAnswer is a live instance's answer: it holds the id.
	TypeProbeAnswer = "probe.answer"
)

// Phases of a Ghost instance, as its probe or answer tells them.
const (
	// InstanceStarting: it has not subscribed to cmd.<ghost_id> yet. A starting instance
	// that answers a probe refuses to start.
	InstanceStarting = "starting"
	// InstanceRunning: it serves cmd.<ghost_id>, and keeps it against a starting one.
	InstanceRunning = "running"
)

// Instance describes one running Ghost process (or in-process Ghost): what an operator
// needs to find the other one when two share an id.
type Instance struct {
	GhostID string `json:"ghost_id"`
	// InstanceID is random, made when the Ghost is built: two processes never share one.
	InstanceID string `json:"instance_id"`
	Hostname   string `json:"hostname"`
	PID        int    `json:"pid"`
	StartedMS  int64  `json:"started_ms"`
	// Phase is InstanceStarting or InstanceRunning.
	Phase string `json:"phase"`
}

// IDProbe is a Ghost's question on probe.<ghost_id>: is another instance of this id alive?
type IDProbe struct {
	Header
	Instance
}

// IDProbeAnswer is a live instance's answer to an IDProbe, on the probe's reply subject.
type IDProbeAnswer struct {
	Header
	Instance
}

// Validate checks a probe.
func (m *IDProbe) Validate() error {
	if err := validateHeader(&m.Header, TypeProbe); err != nil {
		return err
	}
	return m.Instance.validate()
}

// Validate checks a probe answer.
func (m *IDProbeAnswer) Validate() error {
	if err := validateHeader(&m.Header, TypeProbeAnswer); err != nil {
		return err
	}
	return m.Instance.validate()
}

func (i *Instance) validate() error {
	if err := ghostID("ghost_id", i.GhostID); err != nil {
		return err
	}
	if err := token("instance_id", i.InstanceID); err != nil {
		return err
	}
	if err := positive("started_ms", i.StartedMS); err != nil {
		return err
	}
	if i.Phase != InstanceStarting && i.Phase != InstanceRunning {
		return FieldError(CodeSemantic, "phase", "is %q, expected %q or %q", i.Phase, InstanceStarting, InstanceRunning)
	}
	return nil
}

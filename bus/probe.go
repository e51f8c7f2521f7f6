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
	return validateProcess(i.InstanceID, i.StartedMS, i.Phase)
}

// validateProcess checks what a Ghost's and a Mirage's instance share: the process's
// instance_id, start and phase.
func validateProcess(instanceID string, startedMS int64, phase string) error {
	if err := token("instance_id", instanceID); err != nil {
		return err
	}
	if err := positive("started_ms", startedMS); err != nil {
		return err
	}
	if phase != InstanceStarting && phase != InstanceRunning {
		return FieldError(CodeSemantic, "phase", "is %q, expected %q or %q", phase, InstanceStarting, InstanceRunning)
	}
	return nil
}

// Envelope types of the Mirage probe on mirage.probe (docs/protocol.md): one Mirage per
// deployment.
const (
	// TypeMirageProbe asks whether another Mirage serves the deployment.
	TypeMirageProbe = "mirage.probe"
	// TypeMirageProbeAnswer is a live Mirage's answer.
	TypeMirageProbeAnswer = "mirage.probe.answer"
)

// MirageInstance describes one Mirage process (or in-process Mirage): what an operator
// needs to find the other one when two serve one deployment. Phase is InstanceStarting
// (it does not take issues yet; in an answer: it will not) or InstanceRunning.
type MirageInstance struct {
	MirageID string `json:"mirage_id"`
	// InstanceID is random, made when the Mirage is built: two processes never share one.
	InstanceID string `json:"instance_id"`
	Hostname   string `json:"hostname"`
	PID        int    `json:"pid"`
	StartedMS  int64  `json:"started_ms"`
	Phase      string `json:"phase"`
}

// MirageProbe is a Mirage's question on mirage.probe: does another Mirage serve here?
type MirageProbe struct {
	Header
	MirageInstance
}

// MirageProbeAnswer is a live Mirage's answer to a MirageProbe, on the probe's reply
// subject.
type MirageProbeAnswer struct {
	Header
	MirageInstance
}

// Validate checks a Mirage probe.
func (m *MirageProbe) Validate() error {
	if err := validateHeader(&m.Header, TypeMirageProbe); err != nil {
		return err
	}
	return m.MirageInstance.validate()
}

// Validate checks a Mirage probe answer.
func (m *MirageProbeAnswer) Validate() error {
	if err := validateHeader(&m.Header, TypeMirageProbeAnswer); err != nil {
		return err
	}
	return m.MirageInstance.validate()
}

func (i *MirageInstance) validate() error {
	if err := token("mirage_id", i.MirageID); err != nil {
		return err
	}
	return validateProcess(i.InstanceID, i.StartedMS, i.Phase)
}

// StartedBefore reports whether a started before b: the earlier started_ms, then the
// smaller instance_id, so that both sides of a clash decide alike.
func (i MirageInstance) StartedBefore(b MirageInstance) bool {
	if i.StartedMS != b.StartedMS {
		return i.StartedMS < b.StartedMS
	}
	return i.InstanceID < b.InstanceID
}

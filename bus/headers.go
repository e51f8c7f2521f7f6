package bus

import (
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/subjects"
)

// Header names carried on stored envelopes.
const (
	HeaderMsgID       = jetstream.MsgIDHeader // "Nats-Msg-Id": de-duplication key
	HeaderTraceparent = "traceparent"         // W3C trace context
	// HeaderPhase is a report's phase, so that the phase of every intent can be read
	// from EDGE_REPORT's headers alone.
	HeaderPhase = "Edge-Phase"
)

// NewReportMsg is the stored message of a report.
func NewReportMsg(r *Report, data []byte) *nats.Msg {
	m := NewMsg(subjects.Report(r.IntentID), data, r.MessageID, r.TraceID)
	m.Header.Set(HeaderPhase, r.Phase)
	return m
}

// Traceparent returns a W3C traceparent value for traceID with a fresh span id.
func Traceparent(traceID string) string {
	return "00-" + traceID + "-" + subjects.NewSpanID() + "-01"
}

// TraceIDFrom returns the trace-id of a traceparent header value, or "".
func TraceIDFrom(h nats.Header) string {
	parts := strings.Split(h.Get(HeaderTraceparent), "-")
	if len(parts) != 4 || subjects.ValidateTraceID(parts[1]) != nil {
		return ""
	}
	return parts[1]
}

// NewMsg returns a message for subject carrying data with the de-duplication id and the
// trace context headers set.
func NewMsg(subject string, data []byte, msgID, traceID string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = data
	if msgID != "" {
		m.Header.Set(HeaderMsgID, msgID)
	}
	if traceID != "" {
		m.Header.Set(HeaderTraceparent, Traceparent(traceID))
	}
	return m
}

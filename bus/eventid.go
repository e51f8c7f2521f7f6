package bus

import (
	"crypto/sha256"
	"encoding/base32"

	"github.com/edgectl/edgectl/subjects"
)

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// EventID is the stable event_id of the one terminal event of commandID on ghostID: the
// same command always yields the same event_id, even across a lost store, so a re-sent
// event is the same event for JetStream de-duplication and for Mirage. Mirage counts no
// other event as a target's result.
func EventID(ghostID, commandID string) string {
	sum := sha256.Sum256([]byte(ghostID + "\x00" + commandID))
	return subjects.PrefixEvent + "_" + idEncoding.EncodeToString(sum[:16])
}

// RefusalEventID is the event_id of a refusal for security (1800) of the bytes data
// received on ghostID under commandID: derived from the bytes, so that a forged copy
// cannot take the genuine command's EventID.
func RefusalEventID(ghostID, commandID string, data []byte) string {
	sum := sha256.Sum256(append([]byte(ghostID+"\x00"+commandID+"\x00"), data...))
	return subjects.PrefixEvent + "_s" + idEncoding.EncodeToString(sum[:16])
}

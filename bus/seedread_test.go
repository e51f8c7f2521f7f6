package bus

import (
	"errors"
	"testing"
	"time"
)

func TestDecodeSeedRequest(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Code // 0: accepted
	}{
		{"valid", `{"object": "node.system/1.0.0/spec.toml", "max_size": 262144}`, 0},
		{"unknown field ignored", `{"object": "a/latest.json", "max_size": 1, "ghost_id": "other"}`, 0},
		{"not json", `object`, CodeFraming},
		{"empty", ``, CodeFraming},
		{"number object", `{"object": 7, "max_size": 1}`, CodeDecode},
		{"negative size", `{"object": "a/latest.json", "max_size": -1}`, CodeDecode},
		{"array", `[]`, CodeDecode},
		{"missing object", `{"max_size": 1}`, CodeSemantic},
		{"missing size", `{"object": "a/latest.json"}`, CodeSemantic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := DecodeSeedRequest([]byte(tt.body))
			if tt.want == 0 {
				if err != nil || req.Object == "" || req.MaxSize == 0 {
					t.Fatalf("DecodeSeedRequest(%s) = %+v, %v", tt.body, req, err)
				}
				return
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != tt.want {
				t.Fatalf("DecodeSeedRequest(%s) error %v, want code %d", tt.body, err, tt.want)
			}
		})
	}
}

// The Ghost's waits follow from Mirage's bounds: its first wait covers Mirage's wait for a
// read slot and the read, and a piece arrives within its wait on a slow link.
func TestSeedWaitsCoverMirage(t *testing.T) {
	if SeedFirstWait <= SeedSlotWait+SeedReadTimeout {
		t.Errorf("SeedFirstWait %s does not cover Mirage's slot wait %s and read %s", SeedFirstWait, SeedSlotWait, SeedReadTimeout)
	}
	const slowLink = 8 << 10 // bytes per second
	if need := time.Duration(SeedChunkSize / slowLink * int(time.Second)); need > SeedPieceWait {
		t.Errorf("a chunk of %d bytes takes %s at %d B/s, more than SeedPieceWait %s", SeedChunkSize, need, slowLink, SeedPieceWait)
	}
}

package bus

import (
	"errors"
	"testing"
)

func TestDecodeReplayRequest(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Code // 0: accepted
	}{
		{"valid", `{"start_seq": 7}`, 0},
		{"unknown field ignored", `{"start_seq": 1, "ghost_id": "other"}`, 0},
		{"not json", `start`, CodeFraming},
		{"empty", ``, CodeFraming},
		{"string seq", `{"start_seq": "7"}`, CodeDecode},
		{"negative seq", `{"start_seq": -1}`, CodeDecode},
		{"array", `[]`, CodeDecode},
		{"missing seq", `{}`, CodeSemantic},
		{"zero seq", `{"start_seq": 0}`, CodeSemantic},
		{"a batch", `{"start_seq": 3, "max": 256}`, 0},
		{"only where it ends", `{"start_seq": 1, "max": 0}`, 0},
		{"too many", `{"start_seq": 1, "max": 257}`, CodeSemantic},
		{"negative max", `{"start_seq": 1, "max": -1}`, CodeSemantic},
		{"string max", `{"start_seq": 1, "max": "9"}`, CodeDecode},
		{"history", `{"start_seq": 1, "max": 0, "history": true}`, 0},
		{"string history", `{"start_seq": 1, "history": "yes"}`, CodeDecode},
		{"number history", `{"start_seq": 1, "history": 1}`, CodeDecode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := DecodeReplayRequest([]byte(tt.body))
			if tt.want == 0 {
				if err != nil || req.StartSeq == 0 {
					t.Fatalf("DecodeReplayRequest(%s) = %+v, %v", tt.body, req, err)
				}
				return
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != tt.want {
				t.Fatalf("DecodeReplayRequest(%s) error %v, want code %d", tt.body, err, tt.want)
			}
		})
	}
}

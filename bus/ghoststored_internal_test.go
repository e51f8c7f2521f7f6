package bus

import "testing"

func TestSubjectsOverlap(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"hb.*", "hb.*", true},
		{"hb.edge-1", "hb.*", true},
		{"hb.>", "hb.*", true},
		{">", "mirage.seed.*", true},
		{"*.*", "reg.*", true},
		{"*.*", "mirage.seed.*", false},
		{"mirage.>", "mirage.replay.*", true},
		{"mirage.issue", "mirage.replay.*", false},
		{"hb", "hb.*", false},
		{"hb.a.b", "hb.*", false},
		{"cmd.*", "reg.*", false},
		{"evt.*", "hb.*", false},
	} {
		if got := subjectsOverlap(tt.a, tt.b); got != tt.want {
			t.Errorf("subjectsOverlap(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := subjectsOverlap(tt.b, tt.a); got != tt.want {
			t.Errorf("subjectsOverlap(%q, %q) = %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

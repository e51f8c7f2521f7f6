package main

import (
	"testing"
	"time"
)

// Durations in error messages read as an operator writes them.
func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		25 * time.Hour:                  "25h",
		90 * time.Minute:                "1h30m",
		3*time.Hour + time.Minute + 5e9: "3h1m5s",
		90 * time.Second:                "1m30s",
		2 * time.Minute:                 "2m",
		1500 * time.Millisecond:         "1.5s",
		time.Hour + 30*time.Second:      "1h0m30s",
		-time.Second:                    "-1s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

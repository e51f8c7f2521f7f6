package bus_test

import (
	"testing"

	"github.com/edgectl/edgectl/bus"
)

func BenchmarkCommandIDOf(b *testing.B) {
	data := readGolden(b, "command.json")
	b.Run("CommandIDOf", func(b *testing.B) {
		for b.Loop() {
			_ = bus.CommandIDOf(data)
		}
	})
	b.Run("ProbeCommand", func(b *testing.B) {
		for b.Loop() {
			_ = bus.ProbeCommand(data).CommandID
		}
	})
}

package bus_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// A key is created once and read back the same; a key directory every user may write is
// refused, since whoever deletes the key there would have a new one made at the next start.
func TestLoadOrCreateIdentityRefusesAKeyDirectoryOthersMayWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "mirage.nk")
	first, err := bus.LoadOrCreateIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := bus.LoadOrCreateIdentity(path)
	if err != nil || again.PublicKey() != first.PublicKey() {
		t.Fatalf("read back %v (%v), want the key created", again, err)
	}
	if runtime.GOOS == "windows" {
		return
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.LoadOrCreateIdentity(path); err == nil || !strings.Contains(err.Error(), "writable by every user") {
		t.Fatalf("key directory mode 0777: %v, want it refused", err)
	}
}

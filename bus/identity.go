package bus

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Identity is an nkey user: a Ghost, Mirage or the operator. Its public key (U…) is what
// the server and peers know it by; the seed never leaves its file.
type Identity struct {
	kp  nkeys.KeyPair
	pub string
}

// ErrKeyPermissions is returned for a key file readable by group or others.
var ErrKeyPermissions = errors.New("key file permissions are too open")

// NewIdentity creates a fresh user key pair.
func NewIdentity() (*Identity, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	return &Identity{kp: kp, pub: pub}, nil
}

// LoadIdentity reads an nkey seed file. Like ssh, it refuses a file that group or others
// can read, and it never puts the seed in an error.
func LoadIdentity(path string) (*Identity, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("nkey file %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is mode %04o; it holds a private key, run: chmod 600 %s", ErrKeyPermissions, path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nkey file %s: %w", path, err)
	}
	seed, err := nkeys.ParseDecoratedNKey(data)
	if err != nil {
		seed, err = nkeys.FromSeed([]byte(strings.TrimSpace(string(data))))
	}
	if err != nil {
		return nil, fmt.Errorf("nkey file %s does not hold a user nkey seed", path)
	}
	pub, err := seed.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return nil, fmt.Errorf("nkey file %s does not hold a user nkey seed", path)
	}
	return &Identity{kp: seed, pub: pub}, nil
}

// Save writes the identity's seed to path with mode 0600, refusing to overwrite.
func (id *Identity) Save(path string) error {
	seed, err := id.kp.Seed()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write nkey file: %w", err)
	}
	_, err = f.Write(append(seed, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// LoadOrCreateIdentity loads the identity at path, creating it when the file is missing.
// It refuses a directory every user may write (on systems with Unix modes): whoever can
// delete the file there would have a new identity made at the next start, and every
// Ghost trusting the old key would refuse what the new one signs.
func LoadOrCreateIdentity(path string) (*Identity, error) {
	if runtime.GOOS != "windows" {
		dir := filepath.Dir(path)
		if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o002 != 0 {
			return nil, fmt.Errorf("key directory %s is writable by every user (mode %04o): anyone can replace the key; run chmod o-w %s", dir, fi.Mode().Perm(), dir)
		}
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		id, err := NewIdentity()
		if err != nil {
			return nil, err
		}
		if err := id.Save(path); err != nil {
			return nil, err
		}
		return id, nil
	}
	return LoadIdentity(path)
}

// PublicKey returns the identity's public user key (U…).
func (id *Identity) PublicKey() string { return id.pub }

// Sign signs data.
func (id *Identity) Sign(data []byte) ([]byte, error) { return id.kp.Sign(data) }

// NATSOption authenticates a connection as this identity (nkey challenge-response).
func (id *Identity) NATSOption() nats.Option {
	return nats.Nkey(id.pub, func(nonce []byte) ([]byte, error) { return id.kp.Sign(nonce) })
}

// ValidatePublicKey checks a public user nkey (U…).
func ValidatePublicKey(pub string) error {
	if !nkeys.IsValidPublicUserKey(pub) {
		return fmt.Errorf("%q is not a public user nkey (56 characters starting with U)", pub)
	}
	return nil
}

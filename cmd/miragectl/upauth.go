package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
)

// upAuth holds the identities 'up --auth' runs with, kept under DATA_DIR/keys (mode 0600).
type upAuth struct {
	dir                     string
	operator, mirage, local *bus.Identity
}

func loadUpAuth(dataDir string) (*upAuth, error) {
	a := &upAuth{dir: filepath.Join(dataDir, "keys")}
	for _, k := range []struct {
		file string
		id   **bus.Identity
	}{{"operator.nk", &a.operator}, {"mirage.nk", &a.mirage}, {"ghost-local.nk", &a.local}} {
		id, err := bus.LoadOrCreateIdentity(filepath.Join(a.dir, k.file))
		if err != nil {
			return nil, err
		}
		*k.id = id
	}
	return a, nil
}

// OperatorKeyFile is where the operator's key lives.
func (a *upAuth) operatorFile() string { return filepath.Join(a.dir, "operator.nk") }

// mirageFile is where Mirage's key lives.
func (a *upAuth) mirageFile() string { return filepath.Join(a.dir, "mirage.nk") }

// users are the server's nkey users: operator, Mirage, the local Ghost, and the enrolled.
func (a *upAuth) users(enrolled map[string]string, local bool) []*server.NkeyUser {
	ghosts := map[string]string{}
	for id, pub := range enrolled {
		ghosts[id] = pub
	}
	if local {
		ghosts[LocalGhostID] = a.local.PublicKey()
	}
	return natsd.Users(a.operator.PublicKey(), a.mirage.PublicKey(), ghosts)
}

// explain tells the operator how to use the keys; it prints public keys and paths only.
func (a *upAuth) explain(w io.Writer, url string) {
	fmt.Fprintf(w, `auth is on: only enrolled nkeys connect; commands and events are signed.
  operator key:     %[1]s
  use it with:      miragectl issue%[4]s --nkey %[1]s ...   (or export EDGE_NKEY=%[1]s)
  nats CLI:         nats --server %[2]s --nkey %[1]s stream ls
  Mirage key:       %[3]s
  add a Ghost:      ghostctl init --id ID --server %[2]s --trust %[3]s
                    miragectl fleet add ID <public key printed by ghostctl init>%[4]s --nkey %[1]s
`, a.operatorFile(), url, a.mirage.PublicKey(), serverFlagFor(url))
}

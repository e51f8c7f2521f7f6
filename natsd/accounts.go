package natsd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// With authentication a fleet lives in two NATS accounts. Account EDGE holds the JetStream
// assets, Mirage and the operator; account EDGE_GHOSTS holds the Ghosts, and reaches EDGE
// only through the imports below.
//
// Why two: nats-server checks a message's subject against its sender's permissions but
// not its reply subject, and JetStream publishes its publish ack on the reply subject with
// the rights of the account it serves. In one account a Ghost could publish its event
// with a reply subject such as $KV.edge_fleet.<id>, and the ack would be stored there. A
// Ghost's event now crosses into EDGE through a service import, which replaces the reply
// subject with a private one that leads back to EDGE_GHOSTS, where nothing is stored. The
// ack is still delivered there on the reply subject the Ghost set, unchecked: a fixed
// body (JetStream's ack) on any subject of EDGE_GHOSTS, such as mirage.announce, once per
// event (docs/security.md, after the permission table).
//
// The Ghosts' requests to Mirage (registration, replay, seed reads) and their heartbeats
// cross as streams instead, which keep the reply subject as the Ghost set it: Mirage
// answers only on the requesting Ghost's own inbox (mirage/replyguard.go), and those
// inboxes come back to EDGE_GHOSTS as a stream, where each Ghost may read only its own. A
// service import would hand Mirage a reply subject it cannot check, and its answers (a seed
// read is up to 32 MiB) would go wherever in EDGE_GHOSTS the Ghost named: another Ghost's
// cmd.<id>, or mirage.announce, which every Ghost reads.
const (
	// AccountEdge holds JetStream, Mirage and the operator.
	AccountEdge = "EDGE"
	// AccountGhosts holds the Ghosts.
	AccountGhosts = "EDGE_GHOSTS"
)

// ghostServices are the subjects Ghosts publish into EDGE through a service import: their
// events, stored in EDGE_EVT and answered with the publish ack on a reply subject the
// server makes.
var ghostServices = []string{subjects.AllEvents}

// ghostPublishes are the subjects Ghosts publish into EDGE as a stream, reply subject kept:
// registration, heartbeats, and the replay and seed read requests Mirage answers on the
// Ghost's inbox. No stream of EDGE may store them (Mirage checks at start:
// bus.CheckGhostRequestsNotStored).
var ghostPublishes = bus.GhostRequestSubjects

// ghostStreams are the subjects Ghosts receive from EDGE: commands, event.acks, Mirage's
// announce, and Mirage's answers on their inboxes.
var ghostStreams = []string{subjects.AllCommands, subjects.AllAcks, subjects.Announce, bus.AllGhostInboxes}

// edgeServices are the subjects EDGE reaches in EDGE_GHOSTS: Mirage's attach request.
var edgeServices = []string{subjects.AllAttaches}

// accountsBlock renders the accounts of a fleet, each user line of edgeUsers and
// ghostUsers already indented for it.
func accountsBlock(edgeUsers, ghostUsers string) string {
	export := func(kind, to string, subjects ...string) []string {
		out := make([]string, len(subjects))
		for i, s := range subjects {
			out[i] = fmt.Sprintf("{ %s: %q, accounts: [%s] }", kind, s, to)
		}
		return out
	}
	imp := func(kind, from string, subjects ...string) []string {
		out := make([]string, len(subjects))
		for i, s := range subjects {
			out[i] = fmt.Sprintf("{ %s: { account: %s, subject: %q } }", kind, from, s)
		}
		return out
	}
	var b strings.Builder
	b.WriteString("accounts {\n")
	writeAccount(&b, "JetStream, Mirage and the operator.", AccountEdge, true, edgeUsers,
		append(export("service", AccountGhosts, ghostServices...), export("stream", AccountGhosts, ghostStreams...)...),
		append(imp("stream", AccountGhosts, ghostPublishes...), imp("service", AccountGhosts, edgeServices...)...))
	writeAccount(&b, "The Ghosts: they reach "+AccountEdge+" only through these imports.", AccountGhosts, false, ghostUsers,
		append(export("stream", AccountEdge, ghostPublishes...), export("service", AccountEdge, edgeServices...)...),
		append(imp("service", AccountEdge, ghostServices...), imp("stream", AccountEdge, ghostStreams...)...))
	b.WriteString("}\n")
	return b.String()
}

// writeAccount renders one account of accountsBlock.
func writeAccount(b *strings.Builder, comment, name string, jetstream bool, users string, exports, imports []string) {
	fmt.Fprintf(b, "  # %s\n  %s {\n", comment, name)
	if jetstream {
		b.WriteString("    jetstream: enabled\n")
	}
	fmt.Fprintf(b, "    users = [\n%s    ]\n", users)
	for _, list := range []struct {
		key     string
		entries []string
	}{{"exports", exports}, {"imports", imports}} {
		fmt.Fprintf(b, "    %s = [\n", list.key)
		for _, e := range list.entries {
			fmt.Fprintf(b, "      %s\n", e)
		}
		b.WriteString("    ]\n")
	}
	b.WriteString("  }\n")
}

// fleetAccounts returns the two accounts as nats-server options, from the same text
// 'fleet auth-config' prints, so the embedded server and an external one agree.
func fleetAccounts() ([]*server.Account, error) {
	var o server.Options
	if err := o.ProcessConfigString(accountsBlock("", "")); err != nil {
		return nil, fmt.Errorf("fleet accounts: %w", err)
	}
	return o.Accounts, nil
}

// inAccount is what goes in a user's Account field: nats-server binds a user to the account of that name.
func inAccount(name string) *server.Account { return server.NewAccount(name) }

// usesAccounts reports whether any user names an account; a server whose users do runs
// with the fleet accounts.
func usesAccounts(nkeys []*server.NkeyUser, users []*server.User) bool {
	for _, u := range nkeys {
		if u.Account != nil {
			return true
		}
	}
	for _, u := range users {
		if u.Account != nil {
			return true
		}
	}
	return false
}

// globalAccount is the account of a server without accounts.
const globalAccount = "$G"

// moveJetStreamAccount moves the JetStream store of account from to account to: nats-server
// keeps each account's streams under StoreDir/jetstream/<account>, so a store written
// without authentication ($G) is found again with it (EDGE), and back. It refuses when both
// hold streams: which to keep is the operator's choice. A clustered server is left alone:
// its streams are recorded by account in the cluster's metadata, which a moved directory
// would contradict (the cluster would delete the moved streams as orphans).
func moveJetStreamAccount(opts *server.Options, from, to string) error {
	if opts.Cluster.Port != 0 || len(opts.Routes) > 0 {
		return nil
	}
	base := filepath.Join(opts.StoreDir, "jetstream")
	src, dst := filepath.Join(base, from), filepath.Join(base, to)
	if ok, err := hasStreams(src); err != nil || !ok {
		return err
	}
	if ok, err := hasStreams(dst); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("the store %s holds streams of account %s and of account %s; edgectl uses %s now (move or remove the other: %s)", base, from, to, to, src)
	}
	if err := os.RemoveAll(dst); err != nil { // no streams: at most empty directories
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("moving the JetStream store of account %s to %s: %w", from, to, err)
	}
	// The rename is in the directory's entries: make it durable before the server writes.
	d, err := os.Open(base)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("moving the JetStream store of account %s to %s: %w", from, to, err)
	}
	return nil
}

// hasStreams reports whether an account's store holds streams; an unreadable one is an
// error, not an empty store.
func hasStreams(accountDir string) (bool, error) {
	entries, err := os.ReadDir(filepath.Join(accountDir, "streams"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the JetStream store: %w", err)
	}
	return len(entries) > 0, nil
}

var errAccountsFixed = errors.New("users with and without the fleet accounts: the server's accounts are fixed when it starts")

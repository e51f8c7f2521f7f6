package natsd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

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
// subject with a private one that leads back to EDGE_GHOSTS: an ack, or Mirage's answer
// to a request, can only land in EDGE_GHOSTS, where nothing is stored.
const (
	// AccountEdge holds JetStream, Mirage and the operator.
	AccountEdge = "EDGE"
	// AccountGhosts holds the Ghosts.
	AccountGhosts = "EDGE_GHOSTS"
)

// serviceImport is a subject EDGE serves to the Ghosts (a request or a publish whose
// answer, if any, goes back to the Ghost); stream says whether one request may have
// several answers.
type serviceImport struct {
	subject string
	stream  bool
}

// ghostServices are the subjects Ghosts publish into EDGE: events (stored in EDGE_EVT,
// answered with the publish ack), registration, heartbeats, and the requests Mirage
// answers with several messages (replay, seed reads).
var ghostServices = []serviceImport{
	{subject: subjects.AllEvents},
	{subject: subjects.AllRegisters},
	{subject: subjects.AllHeartbeats},
	{subject: subjects.AllReplays, stream: true},
	{subject: subjects.AllSeeds, stream: true},
}

// ghostStreams are the subjects Ghosts receive from EDGE: commands, event.acks and
// Mirage's announce.
var ghostStreams = []string{subjects.AllCommands, subjects.AllAcks, subjects.Announce}

// edgeServices are the subjects EDGE reaches in EDGE_GHOSTS: Mirage's attach request.
var edgeServices = []string{subjects.AllAttaches}

// accountsBlock renders the accounts of a fleet, each user line of edgeUsers and
// ghostUsers already indented for it.
func accountsBlock(edgeUsers, ghostUsers string) string {
	var b strings.Builder
	b.WriteString("accounts {\n")
	fmt.Fprintf(&b, "  # JetStream, Mirage and the operator.\n  %s {\n    jetstream: enabled\n", AccountEdge)
	fmt.Fprintf(&b, "    users = [\n%s    ]\n", edgeUsers)
	b.WriteString("    exports = [\n")
	for _, s := range ghostServices {
		resp := ""
		if s.stream {
			resp = ", response: stream"
		}
		fmt.Fprintf(&b, "      { service: %q%s, accounts: [%s] }\n", s.subject, resp, AccountGhosts)
	}
	for _, s := range ghostStreams {
		fmt.Fprintf(&b, "      { stream: %q, accounts: [%s] }\n", s, AccountGhosts)
	}
	b.WriteString("    ]\n    imports = [\n")
	for _, s := range edgeServices {
		fmt.Fprintf(&b, "      { service: { account: %s, subject: %q } }\n", AccountGhosts, s)
	}
	b.WriteString("    ]\n  }\n")
	fmt.Fprintf(&b, "  # The Ghosts: they reach %s only through these imports.\n  %s {\n", AccountEdge, AccountGhosts)
	fmt.Fprintf(&b, "    users = [\n%s    ]\n", ghostUsers)
	b.WriteString("    imports = [\n")
	for _, s := range ghostServices {
		fmt.Fprintf(&b, "      { service: { account: %s, subject: %q } }\n", AccountEdge, s.subject)
	}
	for _, s := range ghostStreams {
		fmt.Fprintf(&b, "      { stream: { account: %s, subject: %q } }\n", AccountEdge, s)
	}
	b.WriteString("    ]\n    exports = [\n")
	for _, s := range edgeServices {
		fmt.Fprintf(&b, "      { service: %q, accounts: [%s] }\n", s, AccountEdge)
	}
	b.WriteString("    ]\n  }\n}\n")
	return b.String()
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

// moveJetStreamAccount makes the JetStream store of account to the one a store kept for
// account from: nats-server keeps each account's streams under StoreDir/jetstream/<account>,
// so a store written without authentication ($G) is found again with it (EDGE), and back.
// It refuses when both hold streams: which to keep is the operator's choice.
func moveJetStreamAccount(storeDir, from, to string) error {
	base := filepath.Join(storeDir, "jetstream")
	src, dst := filepath.Join(base, from), filepath.Join(base, to)
	if !hasStreams(src) {
		return nil
	}
	if hasStreams(dst) {
		return fmt.Errorf("the store %s holds streams of account %s and of account %s; edgectl uses %s now (move or remove the other: %s)", base, from, to, to, src)
	}
	if err := os.RemoveAll(dst); err != nil { // empty: no streams
		return err
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("moving the JetStream store of account %s to %s: %w", from, to, err)
	}
	return nil
}

func hasStreams(accountDir string) bool {
	entries, err := os.ReadDir(filepath.Join(accountDir, "streams"))
	return err == nil && len(entries) > 0
}

var errAccountsFixed = errors.New("users with and without the fleet accounts: the server's accounts are fixed when it starts")

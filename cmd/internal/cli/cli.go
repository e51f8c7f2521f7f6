package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/nats-io/nats.go"
	"golang.org/x/term"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/config"
)

// Exit codes (CONTRACT.md).
const (
	ExitOK           = 0 // success; for issue: phase satisfied
	ExitNotSatisfied = 1 // finished but not satisfied
	ExitInvalid      = 2 // invalid input, or the issue refused by Mirage
	ExitUnavailable  = 3 // NATS unreachable, no Mirage answered, or the issue refused busy (1501)
)

// ExitError carries the exit code an error ends the program with.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Exit wraps err with an exit code.
func Exit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// Daemon decides the exit code of a daemon's error ('miragectl up', 'ghostctl run'): one
// not already classified (input: 2) is an environment the daemon cannot run in (a
// directory it cannot write, a store another process holds, a port in use): 3, never 1,
// which says an intent finished unsatisfied.
func Daemon(err error) error {
	if err == nil {
		return nil
	}
	var ee *ExitError
	var ce *config.Error
	if errors.As(err, &ee) || errors.As(err, &ce) {
		return err
	}
	return Exit(ExitUnavailable, err)
}

// Invalid is a usage or input error (exit 2).
func Invalid(format string, args ...any) error {
	return &ExitError{Code: ExitInvalid, Err: fmt.Errorf(format, args...)}
}

// ExitCode decides, once, the exit code of an error.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ce *config.Error
	if errors.As(err, &ce) {
		return ExitInvalid
	}
	if errors.Is(err, bus.ErrUnavailable) || errors.Is(err, bus.ErrNotProvisioned) || errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrConnectionClosed) {
		return ExitUnavailable
	}
	return ExitNotSatisfied
}

// Main runs a program's root command and exits with the decided code, printing an error
// as one line on stderr.
func Main(run func(ctx context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(ctx)
	stopOnRefusal.Store(&cancel)
	err := permissionDenied(run(ctx))
	cancel()
	stop()
	if err != nil {
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Err != errSilent {
			fmt.Fprintln(os.Stderr, "error: "+oneLine(err.Error()))
		}
	}
	os.Exit(ExitCode(err))
}

// errSilent marks an exit whose reason was already printed.
var errSilent = errors.New("silent")

// Silent exits with code and prints nothing more.
func Silent(code int) error { return &ExitError{Code: code, Err: errSilent} }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Logger returns a slog logger on w: text, or JSON with format "json".
func Logger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(orDefault(level, "info"))); err != nil {
		return nil, Invalid("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, Invalid("--log-format %q: use text or json", format)
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// IsTerminal reports whether f is a terminal (for progress output).
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Connect opens a client connection that fails fast: exit 3 when the server cannot be
// reached, exit 2 when it refuses this client's identity (no key, or one it does not
// know: an input to fix, not an outage to retry). It uses TLS as $EDGE_TLS_CA,
// $EDGE_TLS_CERT and $EDGE_TLS_KEY say (see TLSFromEnv).
func Connect(ctx context.Context, server, name string, opts ...nats.Option) (*nats.Conn, error) {
	url := bus.ServerURL(server)
	if err := bus.CheckServerURL(url); err != nil {
		return nil, Invalid("%s: %v", urlSource(server), err)
	}
	files, err := TLSFromEnv()
	if err != nil {
		return nil, err
	}
	nc, err := bus.Connect(ctx, bus.ConnConfig{URL: url, Name: name, TLS: files, Options: opts, OnAsyncError: notePermission})
	if err != nil {
		if strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
			return nil, Exit(ExitInvalid, fmt.Errorf("%w (the server requires a key this client does not have: pass --nkey FILE or set EDGE_NKEY, the operator's is DATA_DIR/keys/operator.nk)", err))
		}
		if errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "nkeys not supported") {
			return nil, Exit(ExitUnavailable, err)
		}
		return nil, Exit(ExitUnavailable, fmt.Errorf("%w (is 'miragectl up' running there? %s)", err, checkURL(server, url)))
	}
	return nc, nil
}

// urlSource names where the server URL came from: --server, else $NATS_URL when set, else
// the default.
func urlSource(server string) string {
	switch {
	case server != "":
		return "--server"
	case os.Getenv("NATS_URL") != "":
		return "$NATS_URL"
	}
	return "the default server URL"
}

// checkURL says which URL was tried and how to change it.
func checkURL(server, url string) string {
	switch {
	case server != "":
		return "check --server " + bus.Redact(url)
	case os.Getenv("NATS_URL") != "":
		return "check $NATS_URL (" + bus.Redact(url) + ") or pass --server URL"
	}
	return "tried the default " + bus.Redact(url) + ": pass --server URL"
}

// refused holds the first permissions violation of this process's connections: the
// server refuses a publish or subscription asynchronously, and what the command then
// sees is a timeout or no answer. Main names the refusal instead.
var refused atomic.Value

// stopOnRefusal cancels the command's context: what waits on it (a JetStream call, a
// request with a context) ends at the refusal instead of at its timeout.
var stopOnRefusal atomic.Pointer[context.CancelFunc]

// IsPermission reports whether err is the server refusing a publish or subscription of
// this client, or its identity.
func IsPermission(err error) bool {
	return err != nil && (errors.Is(err, nats.ErrPermissionViolation) || errors.Is(err, nats.ErrAuthorization) ||
		strings.Contains(strings.ToLower(err.Error()), "permissions violation"))
}

func notePermission(err error) {
	if IsPermission(err) && !errors.Is(err, nats.ErrAuthorization) {
		refused.CompareAndSwap(nil, err.Error())
		if cancel := stopOnRefusal.Load(); cancel != nil {
			(*cancel)()
		}
	}
}

// Interrupted reports whether ctx, the command's context from Main, ended because SIGINT
// or SIGTERM arrived: a daemon stopped that way exits 0 even while it was still starting.
// A context ended by a permission refusal (stopOnRefusal) is not an interruption.
func Interrupted(ctx context.Context) bool {
	v, _ := refused.Load().(string)
	return ctx.Err() != nil && v == ""
}

// permissionDenied turns a failure that followed a permissions violation into what it is.
func permissionDenied(err error) error {
	v, _ := refused.Load().(string)
	if v == "" || err == nil {
		return err
	}
	return Invalid("permission denied: %s: this key may not do that; with --auth, client commands need the operator key (--nkey DATA_DIR/keys/operator.nk or EDGE_NKEY)", strings.TrimPrefix(v, "nats: permissions violation: "))
}

// Environment variables of a client command's TLS: the CA that verifies the server, and
// the client certificate and key for a server that verifies clients (mTLS).
const (
	EnvTLSCA   = "EDGE_TLS_CA"
	EnvTLSCert = "EDGE_TLS_CERT"
	EnvTLSKey  = "EDGE_TLS_KEY"
)

// TLSFromEnv returns the client TLS files the environment names, checked; an unreadable
// or invalid file is an invalid-input error (exit 2) naming the variable and the file.
func TLSFromEnv() (bus.TLSFiles, error) {
	files := bus.TLSFiles{CA: os.Getenv(EnvTLSCA), Cert: os.Getenv(EnvTLSCert), Key: os.Getenv(EnvTLSKey)}
	if err := files.CheckClient(); err != nil {
		var fe *bus.TLSFileError
		if errors.As(err, &fe) {
			env := map[string]string{bus.TLSFieldCA: EnvTLSCA, bus.TLSFieldCert: EnvTLSCert, bus.TLSFieldKey: EnvTLSKey}[fe.Field]
			return files, Invalid("$%s: %v", env, err)
		}
		return files, Invalid("%v", err)
	}
	return files, nil
}

package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// DefaultURL is the server a client uses when neither --server nor $NATS_URL says.
const DefaultURL = "nats://127.0.0.1:4222"

// ServerURL resolves the server URL the way the nats CLI does: flag, then $NATS_URL, then
// DefaultURL.
func ServerURL(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("NATS_URL"); env != "" {
		return env
	}
	return DefaultURL
}

// CheckServerURL checks a NATS server URL, or a comma list of them, as nats.go reads it:
// nats://, tls://, ws:// or wss:// (or host:port, taken as nats://), with a host.
func CheckServerURL(s string) error {
	named := false
	for _, one := range strings.Split(s, ",") {
		one = strings.TrimSpace(one)
		if one == "" {
			continue // nats.go (and the nats CLI) skip an empty entry of a list
		}
		named = true
		if !strings.Contains(one, "://") {
			one = "nats://" + one
		}
		u, err := url.Parse(one)
		if err != nil {
			return fmt.Errorf("%q is not a URL: %v", one, err)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("%q: scheme %q is not nats, tls, ws or wss", one, u.Scheme)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("%q names no host", one)
		}
	}
	if !named {
		return fmt.Errorf("%q names no server", s)
	}
	return nil
}

// ErrUnavailable is wrapped by connection failures (exit code 3 in the CLIs).
var ErrUnavailable = errors.New("NATS unavailable")

// ErrNotProvisioned is wrapped when a server lacks edgectl's streams or buckets: no Mirage
// has run against it (exit code 3 in the CLIs, as for no Mirage answering).
var ErrNotProvisioned = errors.New("no edgectl on this server")

// ConnConfig says how to reach NATS.
type ConnConfig struct {
	URL  string
	Name string
	// InProcess connects to an embedded server without a socket; URL is then ignored.
	InProcess nats.InProcessConnProvider
	// Persistent connections (Ghost, Mirage) retry forever; client commands fail fast.
	Persistent bool
	// TLS, when set, are the CA that verifies the server and the client certificate. An
	// in-process connection is not a socket and ignores them.
	TLS TLSFiles
	// Extra options (credentials).
	Options []nats.Option
	Logger  *slog.Logger
	// OnAsyncError, when set, is told every asynchronous error of the connection (a
	// permissions violation arrives this way, after the publish that caused it).
	OnAsyncError func(error)
}

// Connect opens a NATS connection. A client connection that cannot reach the server
// returns an error wrapping ErrUnavailable; invalid TLS files return a *TLSFileError.
func Connect(ctx context.Context, cfg ConnConfig) (*nats.Conn, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{nats.Name(cfg.Name), nats.Timeout(5 * time.Second)}
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess))
	}
	var lastErr atomic.Value // why the latest connect attempt failed (refused, TLS, authorization)
	// Not enrolled yet, revoked, or a key the server does not know: a daemon keeps trying
	// (enrolling it lets it in), backing off to authRetryMax so that a refused fleet does
	// not fill the server's log, and says so now and then. nats.go reports a refusal as a
	// reconnect error on the first connect and as an asynchronous error on a reconnect.
	var authRefused atomic.Bool
	var refusals RateLog
	noteRefusal := func(err error) {
		authRefused.Store(true)
		if ok, n := refusals.Allow(); ok {
			log.Warn("NATS refuses this identity; retrying (is it enrolled? miragectl fleet ls)", "component", "bus", "err", err, "refusals", n)
		}
	}
	if cfg.Persistent {
		opts = append(opts,
			nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
				if err == nil {
					return
				}
				lastErr.Store(err.Error())
				if isAuthError(err) {
					noteRefusal(err)
					return
				}
				log.Debug("connect attempt failed", "component", "bus", "err", err)
			}),
			// nats.go closes a connection for good after the same authorization error
			// twice; a daemon must outlive an enrollment made after it started, a
			// revocation undone, a server reloading its users.
			nats.IgnoreAuthErrorAbort(),
			nats.MaxReconnects(-1),
			nats.CustomReconnectDelay(func(attempts int) time.Duration {
				if authRefused.Load() {
					return min(authRetryMax, time.Second<<min(max(attempts-1, 0), 5)) + rand.N(time.Second)
				}
				return 250*time.Millisecond + rand.N(250*time.Millisecond)
			}),
			nats.RetryOnFailedConnect(true),
			nats.ReconnectBufSize(64<<20),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					log.Warn("disconnected from NATS", "component", "bus", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				authRefused.Store(false)
				log.Info("reconnected to NATS", "component", "bus", "peer", nc.ConnectedUrlRedacted())
			}),
			nats.ConnectHandler(func(*nats.Conn) { authRefused.Store(false) }),
		)
	} else {
		opts = append(opts, nats.MaxReconnects(2), nats.ReconnectWait(200*time.Millisecond))
	}
	if cfg.TLS.Enabled() && cfg.InProcess == nil {
		tlsOpts, err := cfg.TLS.ClientOptions()
		if err != nil {
			return nil, err
		}
		opts = append(opts, tlsOpts...)
	}
	// Asynchronous errors (a permissions violation, a slow consumer) go to the log, not to
	// nats.go's default of a raw line on stderr.
	var asyncErrs RateLog
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
		if cfg.OnAsyncError != nil {
			cfg.OnAsyncError(err)
		}
		if !cfg.Persistent {
			log.Debug("NATS error", "component", "bus", "err", err)
			return
		}
		if isAuthError(err) {
			noteRefusal(err)
			return
		}
		if ok, n := asyncErrs.Allow(); ok {
			attrs := []any{"component", "bus", "err", err, "count", n}
			if sub != nil {
				attrs = append(attrs, "subject", sub.Subject)
			}
			log.Warn("NATS error", attrs...)
		}
	}))
	opts = append(opts, cfg.Options...)
	url := cfg.URL
	if cfg.InProcess != nil {
		url = ""
	}
	nc, err := connectUntil(ctx, url, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: connect to %s: %v", ErrUnavailable, redact(url), err)
	}
	if cfg.Persistent && !nc.IsConnected() {
		// RetryOnFailedConnect returns at once; wait a little so start-up logs say the truth.
		deadline := time.Now().Add(5 * time.Second)
		for !nc.IsConnected() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if !nc.IsConnected() {
			why, _ := lastErr.Load().(string)
			log.Warn("NATS not reachable yet; retrying in the background", "component", "bus", "peer", redact(url), "err", why)
		}
	}
	return nc, nil
}

// connectUntil is nats.Connect, given up when ctx ends first (a signal while a server
// that does not answer is being tried, for up to its connect timeout per URL): the
// connection, should it come later, is closed.
func connectUntil(ctx context.Context, url string, opts []nats.Option) (*nats.Conn, error) {
	if ctx.Done() == nil {
		return nats.Connect(url, opts...)
	}
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, opts...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		return r.nc, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// Redact hides the credentials a server URL (or comma list of them) may embed, for logs.
func Redact(url string) string {
	parts := strings.Split(url, ",")
	for i, p := range parts {
		parts[i] = redact(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// redact hides credentials embedded in a URL.
func redact(url string) string {
	if url == "" {
		return "in-process server"
	}
	for i := 0; i+3 <= len(url); i++ {
		if url[i:i+3] == "://" {
			rest := url[i+3:]
			for j := 0; j < len(rest); j++ {
				if rest[j] == '@' {
					return url[:i+3] + "***@" + rest[j+1:]
				}
				if rest[j] == '/' {
					break
				}
			}
			break
		}
	}
	return url
}

// authRetryMax is the longest wait between a daemon's connection attempts while the
// server refuses its identity.
const authRetryMax = 30 * time.Second

// isAuthError reports whether err is the server refusing the connection's identity.
func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

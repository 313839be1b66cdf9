// Package natsconn connects paystream processes to NATS with the options a
// long-running service needs: reconnect forever, fail publishes fast while
// disconnected, and log connection changes.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Options says how to reach NATS.
type Options struct {
	// URL is the server list, e.g. nats://a:4222,nats://b:4222. Ignored
	// when InProcess is set.
	URL string
	// InProcess connects to an embedded server without a socket (a
	// *server.Server of nats-server). It is an interface so that only the
	// process that embeds a server links nats-server.
	InProcess nats.InProcessConnProvider
	// Name identifies the client in server monitoring.
	Name string
	// Logger receives connection changes.
	Logger zerolog.Logger
	// Extra options, e.g. credentials and TLS.
	Extra []nats.Option
	// ConnectWait bounds how long the first connection is retried while
	// no server answers, so that processes can start in any order. Zero
	// tries once. A refusal of the credentials is never retried.
	ConnectWait time.Duration
}

// Connect returns a connection that reconnects forever. While disconnected,
// publishes fail at once instead of being buffered, so callers such as the
// webhook endpoint can answer 503 promptly. The first connection is tried
// again with backoff for up to o.ConnectWait, or until ctx ends.
func Connect(ctx context.Context, o Options) (*nats.Conn, error) {
	deadline := time.Now().Add(o.ConnectWait)
	for wait, logged := 250*time.Millisecond, false; ; wait = min(2*wait, 5*time.Second) {
		nc, err := connect(o)
		if err == nil || errors.Is(err, nats.ErrAuthorization) || !time.Now().Add(wait).Before(deadline) {
			if err != nil && o.ConnectWait > 0 && !errors.Is(err, nats.ErrAuthorization) {
				err = fmt.Errorf("%w (gave up after %s)", err, o.ConnectWait)
			}
			return nc, err
		}
		if !logged {
			o.Logger.Info().Err(err).Dur("connect_wait", o.ConnectWait).Msg("waiting for NATS")
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (stopped while waiting: %v)", err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func connect(o Options) (*nats.Conn, error) {
	log := o.Logger
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			// A nil error is our own Drain or Close, not a failure.
			if err != nil {
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn().Err(err).Msg("nats async error")
		}),
	}
	if o.InProcess != nil {
		opts = append(opts, nats.InProcessServer(o.InProcess))
	}
	opts = append(opts, o.Extra...)
	url := o.URL
	if o.InProcess != nil {
		url = ""
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %q: %w", redact(url), err)
	}
	return nc, nil
}

// redact hides the password of any user:password@, and any token@, in a
// server list, so a URL with credentials can be reported in errors.
func redact(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		u, err := neturl.Parse(strings.TrimSpace(p))
		if err != nil {
			parts[i] = "<unparseable url>"
			continue
		}
		if u.User != nil {
			if _, has := u.User.Password(); has {
				u.User = neturl.UserPassword(u.User.Username(), "xxxxx")
			} else {
				// nats://<token>@host: the user part is the secret.
				u.User = neturl.User("xxxxx")
			}
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// DefaultDrainWait is how long Drain waits for a drain to finish.
const DefaultDrainWait = 2 * time.Second

// Drain stops nc softly, then hard: it drains the connection (its
// subscriptions stop taking messages and finish the ones they hold, and
// pending publishes are flushed), waits up to wait for that to close the
// connection, and then closes it whatever is left. It returns once nc is
// closed; a nil or closed connection is left as it is.
func Drain(nc *nats.Conn, wait time.Duration) {
	if nc == nil || nc.IsClosed() {
		return
	}
	if err := nc.Drain(); err == nil {
		deadline := time.Now().Add(wait)
		// Polled rather than waited for with a ClosedHandler, which would
		// replace one the caller may have set.
		for !nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	nc.Close()
}

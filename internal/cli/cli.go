// Package cli holds what paystream's commands share: flags that fall back
// to environment variables, logger set-up and signal handling.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Flags wraps a FlagSet whose defaults come from environment variables.
type Flags struct {
	*flag.FlagSet
	getenv func(string) string
	errs   []error
}

// NewFlags returns a FlagSet named name reading env through getenv.
func NewFlags(name string, getenv func(string) string, out io.Writer) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return &Flags{FlagSet: fs, getenv: getenv}
}

func (f *Flags) env(name, env string) (string, bool) {
	v := f.getenv(env)
	return v, v != ""
}

func usage(u, env string) string { return u + " (env " + env + ")" }

// String defines a string flag defaulting to env, then def.
func (f *Flags) String(name, env, def, u string) *string {
	p := new(string)
	f.StringTo(p, name, env, def, u)
	return p
}

// StringTo defines a string flag stored in p, defaulting to env, then
// def.
func (f *Flags) StringTo(p *string, name, env, def, u string) {
	if v, ok := f.env(name, env); ok {
		def = v
	}
	f.FlagSet.StringVar(p, name, def, usage(u, env))
}

// Duration defines a duration flag defaulting to env, then def.
func (f *Flags) Duration(name, env string, def time.Duration, u string) *time.Duration {
	p := new(time.Duration)
	f.DurationTo(p, name, env, def, u)
	return p
}

// DurationTo defines a duration flag stored in p, defaulting to env,
// then def.
func (f *Flags) DurationTo(p *time.Duration, name, env string, def time.Duration, u string) {
	if v, ok := f.env(name, env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: %w", env, v, err))
		}
		def = d
	}
	f.FlagSet.DurationVar(p, name, def, usage(u, env))
}

// Int defines an int flag defaulting to env, then def.
func (f *Flags) Int(name, env string, def int, u string) *int {
	p := new(int)
	f.IntTo(p, name, env, def, u)
	return p
}

// IntTo defines an int flag stored in p, defaulting to env, then def.
func (f *Flags) IntTo(p *int, name, env string, def int, u string) {
	if v, ok := f.env(name, env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: %w", env, v, err))
		}
		def = n
	}
	f.FlagSet.IntVar(p, name, def, usage(u, env))
}

// Bool defines a bool flag defaulting to env (strconv.ParseBool), then def.
func (f *Flags) Bool(name, env string, def bool, u string) *bool {
	p := new(bool)
	f.BoolTo(p, name, env, def, u)
	return p
}

// BoolTo defines a bool flag stored in p, defaulting to env
// (strconv.ParseBool), then def.
func (f *Flags) BoolTo(p *bool, name, env string, def bool, u string) {
	if v, ok := f.env(name, env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: %w", env, v, err))
		}
		def = b
	}
	f.FlagSet.BoolVar(p, name, def, usage(u, env))
}

// ErrBadFlag wraps an error of Parse about the command line itself: an
// unknown flag or a value that does not parse (the flag package has
// printed it and the usage). Commands exit with status 2 on it, as the
// flag package does.
var ErrBadFlag = errors.New("invalid command line")

// ExitStatus reports err on stderr as "name: err" and returns the
// process's exit status: 0 on success and after help asked for with -h, 2
// for a wrong command line (ErrBadFlag: a flag that does not parse, flags
// that contradict each other, an unknown command), 1 for anything else.
func ExitStatus(name string, err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrBadFlag):
		fmt.Fprintln(stderr, name+":", err)
		return 2
	}
	fmt.Fprintln(stderr, name+":", err)
	return 1
}

// Parse parses args and reports bad environment values first. A request
// for help (-h) returns flag.ErrHelp, an error about the command line one
// wrapping ErrBadFlag.
func (f *Flags) Parse(args []string) error {
	if len(f.errs) > 0 {
		return f.errs[0]
	}
	err := f.FlagSet.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return fmt.Errorf("%w: %w", ErrBadFlag, err)
	}
	return err
}

// ReadSecretFile reads a one-line secret, such as a token, from path.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}

// NewLogger returns a zerolog logger writing JSON (or console text) to w.
func NewLogger(w io.Writer, level, format, service string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log level %q: %w", level, err)
	}
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	} else if format != "json" {
		return zerolog.Nop(), fmt.Errorf("log format %q: want json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("service", service).Logger(), nil
}

// SignalContext returns a context cancelled on the first SIGINT or SIGTERM,
// for a soft stop. A second signal exits the process at once (hard stop).
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "second signal: stopping now")
		os.Exit(1)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

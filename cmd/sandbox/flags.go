package main

import (
	"fmt"
	"strconv"

	"github.com/paystream/paystream/internal/cli"
)

// moreFlags adds the bool and float flags internal/cli lacks, with the same
// environment fallback. Bad environment values are reported by parse.
type moreFlags struct {
	*cli.Flags
	getenv func(string) string
	errs   []error
}

func usage(u, env string) string { return u + " (env " + env + ")" }

// float defines a float64 flag defaulting to env, then def. It is for
// ratios and rates only, never money.
func (f *moreFlags) float(name, env string, def float64, u string) *float64 {
	if v := f.getenv(env); v != "" {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("%s=%q: %w", env, v, err))
		}
		def = x
	}
	return f.FlagSet.Float64(name, def, usage(u, env))
}

// parse reports bad environment values first, then parses args.
func (f *moreFlags) parse(args []string) error {
	if len(f.errs) > 0 {
		return f.errs[0]
	}
	return f.Flags.Parse(args)
}

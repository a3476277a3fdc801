package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/netward/netward/config"
	"github.com/netward/netward/steer"
)

func init() {
	register("cleanup", "remove what a crashed netward left in the kernel", func(args []string) int {
		return cleanupMain(args, os.Stdout, os.Stderr)
	})
}

// cleanupMain removes netward's chains, ip rules, routes and TUN left by a
// run that did not stop cleanly. It prints each removed object; exit 0 when
// everything is clean (also when there was nothing), 1 when something
// could not be removed, 2 on a usage error.
func cleanupMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("netward cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config `FILE` (YAML) to take the TUN, mark, table and rule priority from; flags override it")
	tun := fs.String("tun", "", "TUN device `NAME` (default "+steer.DefaultTUN+")")
	mark := uintFlag(fs, "mark", "firewall `MARK` netward used (default "+fmt.Sprintf("%#x", steer.DefaultMark)+")")
	mask := uintFlag(fs, "mask", "mask of the mark (default "+fmt.Sprintf("%#x", steer.DefaultMask)+")")
	table := uintFlag(fs, "table", "routing `TABLE` netward used (default "+strconv.Itoa(steer.DefaultTable)+")")
	prio := uintFlag(fs, "rule-priority", "`PRIORITY` of netward's ip rules (default "+strconv.Itoa(steer.DefaultRulePriority)+")")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: netward cleanup [flags]\n\nRemoves what a netward that did not stop cleanly (kill -9, crash) left\nbehind: NETWARD* chains in mangle and raw and the jumps to them, its ip\nrules, the routes in its table (IPv4 and IPv6), and its TUN. Refuses while\na running netward holds the TUN open.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netward cleanup: unexpected arguments: %s\n", strings.Join(fs.Args(), " "))
		return 2
	}

	cfg := steer.DefaultConfig()
	if *path != "" {
		c, err := config.Load(*path)
		if err != nil {
			fmt.Fprintf(stderr, "netward cleanup: %v\n", err)
			return 2
		}
		cfg.TUN, cfg.Mark, cfg.Table, cfg.RulePriority = c.TUN, c.Mark, c.Table, c.RulePriority
	}
	if *tun != "" {
		cfg.TUN = *tun
	}
	if mark.set {
		cfg.Mark = uint32(mark.v)
	}
	if mask.set {
		cfg.Mask = uint32(mask.v)
	}
	if table.set {
		cfg.Table = int(table.v)
	}
	if prio.set {
		cfg.RulePriority = int(prio.v)
	}

	removed, err := steer.Cleanup(cfg)
	for _, r := range removed {
		fmt.Fprintf(stdout, "removed: %s\n", r)
	}
	if err != nil {
		fmt.Fprintf(stderr, "netward cleanup: %v\n", err)
		if errors.Is(err, steer.ErrBadConfig) {
			return 2
		}
		return 1
	}
	if len(removed) == 0 {
		fmt.Fprintf(stdout, "nothing to clean up (tun %s, mark %#x/%#x, table %d, rule priority %d)\n",
			cfg.TUN, cfg.Mark, cfg.Mask, cfg.Table, cfg.RulePriority)
	}
	return 0
}

// uintValue is a flag that takes decimal or 0x-hex and remembers whether it
// was given.
type uintValue struct {
	v   uint64
	set bool
}

func (u *uintValue) String() string { return "" }

func (u *uintValue) Set(s string) error {
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return fmt.Errorf("%q is not a number from 0 to 4294967295 (decimal or 0x hex)", s)
	}
	u.v, u.set = v, true
	return nil
}

func uintFlag(fs *flag.FlagSet, name, usage string) *uintValue {
	u := &uintValue{}
	fs.Var(u, name, usage)
	return u
}

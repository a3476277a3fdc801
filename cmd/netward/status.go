package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/netward/netward/config"
	"github.com/netward/netward/metrics"
)

func init() {
	register("status", "show flows and counters of a running netward", runStatus)
}

func runStatus(args []string) int {
	return statusMain(context.Background(), args, os.Stdout, os.Stderr)
}

// statusMain asks the admin socket of a running netward for its status and
// prints it: a summary, then one line per active flow in the style of
// `conntrack -L`, or all of it as JSON with --json.
func statusMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "admin socket `PATH` (default: admin.socket of --config, else "+config.Default().Admin.Socket+")")
	cfgPath := fs.String("config", "", "config `FILE` whose admin.socket to use")
	asJSON := fs.Bool("json", false, "print the whole status as JSON")
	src := fs.String("src", "", "only flows from `ADDR`: IP, CIDR, IP:port or :port")
	dst := fs.String("dst", "", "only flows to `ADDR`: IP, CIDR, IP:port or :port")
	verdict := fs.String("verdict", "", "only flows with `VERDICT`: allow, deny, drop, alert or pending")
	rule := fs.String("rule", "", "only flows decided by rule `NAME` (default: the default action)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after `DURATION`")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: netward status [flags]\n\nShows uptime, rules, counters and the active flows of the running netward.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netward status: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	filter, err := metrics.ParseFilter(*src, *dst, *verdict, *rule)
	if err != nil {
		fmt.Fprintf(stderr, "netward status: --%v\n", err)
		return 2
	}
	path := *socket
	if path == "" {
		cfg, err := config.Load(*cfgPath) // "" gives the defaults
		if err != nil {
			fmt.Fprintf(stderr, "netward status: %v\n", err)
			return 1
		}
		path = cfg.Admin.Socket
	}
	if path == "" {
		fmt.Fprintln(stderr, "netward status: the admin socket is disabled (admin.socket is empty)")
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := metrics.FetchStatus(ctx, path, filter)
	if err != nil {
		fmt.Fprintf(stderr, "netward status: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			fmt.Fprintf(stderr, "netward status: %v\n", err)
			return 1
		}
		return 0
	}
	printStatus(stdout, st)
	return 0
}

func printStatus(w io.Writer, st *metrics.Status) {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	fmt.Fprintf(w, "netward %s, up %s, %s\n", st.Version, roundDuration(st.UptimeSeconds), ready)

	r := st.Rules
	switch {
	case r.Loaded:
		hash := r.Hash
		if len(hash) > 16 {
			hash = hash[:16]
		}
		fmt.Fprintf(w, "rules     %s, %d rules, loaded %s", hash, r.Count, r.LoadedAt.Format(time.RFC3339))
	default:
		fmt.Fprint(w, "rules     none loaded (all flows allowed)")
	}
	fmt.Fprintf(w, ", reloads ok %d failed %d\n", r.ReloadsOK, r.ReloadsFailed)
	if r.LastError != "" {
		fmt.Fprintf(w, "          last reload failed: %s\n", r.LastError)
	}

	c := st.Counters
	fmt.Fprintf(w, "flows     %d active, %d total, bytes to server %d, to client %d\n",
		c.FlowsActive, c.FlowsTotal, c.BytesToServer, c.BytesToClient)
	fmt.Fprintf(w, "verdicts  %s\n", joinCounts(c.Verdicts))
	fmt.Fprintf(w, "inspect   timeouts %d, errors %s\n", c.InspectTimeouts, joinCounts(c.InspectErrors))
	fmt.Fprintf(w, "limits    %s\n", joinCounts(c.LimitHits))
	if t := c.TUN; t != nil {
		fmt.Fprintf(w, "tun       rx %d tx %d packets, dropped rx %d tx %d\n", t.RxPackets, t.TxPackets, t.RxDropped, t.TxDropped)
	}
	if e := c.Events; e != nil {
		fmt.Fprintf(w, "events    written %d, dropped %d, failed %d\n", e.Written, e.Dropped, e.Failed)
	}
	if len(st.Flows) > 0 {
		fmt.Fprintln(w)
	}
	for i := range st.Flows {
		printFlow(w, &st.Flows[i])
	}
	fmt.Fprintf(w, "netward status: %d flow entries have been shown.\n", len(st.Flows))
}

// printFlow writes one flow as key=value pairs, like conntrack -L.
func printFlow(w io.Writer, f *metrics.FlowStatus) {
	var b strings.Builder
	fmt.Fprintf(&b, "tcp id=%d age=%s src=%s sport=%d dst=%s dport=%d",
		f.ID, roundDuration(f.AgeSeconds), f.Src.Addr().Unmap(), f.Src.Port(), f.Dst.Addr().Unmap(), f.Dst.Port())
	if f.App != "" {
		b.WriteString(" app=" + kvValue(f.App))
	}
	if f.Name != "" {
		b.WriteString(" name=" + kvValue(f.Name))
	}
	b.WriteString(" verdict=" + kvValue(f.Verdict))
	if f.Rule != "" {
		b.WriteString(" rule=" + kvValue(f.Rule))
	}
	if f.Leg != "" && f.Leg != "gvisor" { // the usual case goes unsaid
		b.WriteString(" leg=" + kvValue(f.Leg))
	}
	fmt.Fprintf(&b, " bytes_toserver=%d bytes_toclient=%d\n", f.BytesToServer, f.BytesToClient)
	io.WriteString(w, b.String())
}

// kvValue quotes what could break the key=value line: a Host header or rule
// name is not ours to trust.
func kvValue(s string) string {
	for _, r := range s {
		if r <= ' ' || r == '"' || r == '=' || r >= 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}

func joinCounts(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, kvValue(k)+" "+strconv.FormatUint(m[k], 10))
	}
	return strings.Join(parts, ", ")
}

func roundDuration(seconds float64) time.Duration {
	return time.Duration(seconds * float64(time.Second)).Round(time.Second)
}

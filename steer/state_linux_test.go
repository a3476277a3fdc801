package steer

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// stateOpts selects what state() includes.
type stateOpts struct {
	tunSysctls bool // the TUN's sysctls (left out where a test reuses a TUN across runs)
}

// state is the appliance's packet-path state as text: iptables-save and
// ip6tables-save (timestamps, counters and tables with nothing in them
// dropped), ip rules, all routes, the TUN's IPv4 addresses and sysctls.
// Two states are equal when netward left nothing behind.
func (l *lab) state(o stateOpts) string {
	l.t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		fmt.Fprintf(&b, "== %s\n%s", cmd, normalizeSave(l.mustSh(l.applName, cmd)))
	}
	for _, args := range [][]string{
		{"ip", "rule"},
		{"ip", "-6", "rule"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "== %s\n%s", strings.Join(args, " "), dropLinkLocal(l.mustSh(l.applName, args...)))
	}
	if out, err := l.sh(l.applName, "ip", "-4", "addr", "show", "dev", labTUN); err == nil {
		fmt.Fprintf(&b, "== ip -4 addr show dev %s\n%s", labTUN, out)
	}
	if o.tunSysctls {
		for _, k := range []string{"ipv4/conf/" + labTUN + "/rp_filter", "ipv4/conf/" + labTUN + "/forwarding", "ipv6/conf/" + labTUN + "/disable_ipv6"} {
			if out, err := l.sh(l.applName, "cat", "/proc/sys/net/"+k); err == nil {
				fmt.Fprintf(&b, "== %s = %s", k, out)
			}
		}
	}
	return b.String()
}

// kernelLinkLocal matches the routes the kernel's IPv6 autoconfiguration
// adds on its own, some time after a link comes up (fe80:: local and
// anycast in table local): they come and go with the link, not with
// anything netward installs.
var kernelLinkLocal = regexp.MustCompile(`^(anycast|local) fe80:[0-9a-f:]* dev \S+ table local proto kernel`)

func dropLinkLocal(routes string) string {
	var out strings.Builder
	for _, line := range strings.SplitAfter(routes, "\n") {
		if !kernelLinkLocal.MatchString(line) {
			out.WriteString(line)
		}
	}
	return out.String()
}

var saveCounters = regexp.MustCompile(`\[\d+:\d+\]`)

// normalizeSave drops comments and counters, and tables that hold no rule
// and no user chain (iptables-nft creates a table the first time it is
// listed, so an empty table is no trace of netward).
func normalizeSave(s string) string {
	var out strings.Builder
	var table []string
	keep := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table, keep = []string{line}, false
		case line == "COMMIT":
			if keep {
				out.WriteString(strings.Join(append(table, line), "\n") + "\n")
			}
			table = nil
		default:
			line = saveCounters.ReplaceAllString(line, "")
			table = append(table, line)
			if strings.HasPrefix(line, "-") || (strings.HasPrefix(line, ":") && strings.Contains(line, " - ")) ||
				(strings.HasPrefix(line, ":") && !strings.Contains(line, " ACCEPT")) {
				keep = true
			}
		}
	}
	return out.String()
}

// netwardTraces lists the lines of a state that look like netward's.
func netwardTraces(state string, c Config) []string {
	needles := []string{
		ChainPrefix,
		fmt.Sprintf("%#x", c.Mark),
		fmt.Sprintf("lookup %d", c.Table),
		fmt.Sprintf("table %d", c.Table),
		c.TUNAddr.String(),
	}
	var out []string
	for _, line := range strings.Split(state, "\n") {
		for _, n := range needles {
			if strings.Contains(line, n) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// requireClean fails unless state equals before and has no netward trace.
func requireClean(t *testing.T, what, before, after string, c Config) {
	t.Helper()
	if tr := netwardTraces(after, c); len(tr) > 0 {
		t.Errorf("%s: netward's objects left behind:\n%s", what, strings.Join(tr, "\n"))
	}
	if before != after {
		t.Errorf("%s: state differs from before Install:\n%s", what, lineDiff(before, after))
	}
}

// lineDiff lists the lines only in a (-) or only in b (+), with counts.
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		switch {
		case n > 0:
			out = append(out, fmt.Sprintf("- %s (x%d)", l, n))
		case n < 0:
			out = append(out, fmt.Sprintf("+ %s (x%d)", l, -n))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

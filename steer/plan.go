package steer

import (
	"fmt"
	"strings"
)

// chainPlan is one netward chain: its rules in order and the rule in the
// built-in PREROUTING chain that jumps to it (inserted first, so netward
// sees packets before anything else in that table).
type chainPlan struct {
	table string
	chain string
	jump  []string
	rules [][]string
}

// iptablesPlan returns netward's chains for one family, in install order:
// raw before mangle, so steered packets are untracked before they are
// marked.
//
// Both chains select the same packets (the "selection" RETURN rules), so
// exactly the packets that are marked are also untracked:
//   - arriving on lo (all-interfaces mode): never steered;
//   - fragments: never steered, so all fragments of a packet take the same
//     path (plain forwarding). When conntrack is active in the namespace the
//     kernel reassembles before the raw table and these rules see the whole
//     packet, which is then steered as one (and re-fragmented as it was on
//     its way into the TUN);
//   - addressed to the appliance itself (addrtype LOCAL): delivered locally.
func iptablesPlan(c *Config, v6 bool) []chainPlan {
	var selection [][]string
	if len(c.Interfaces) == 0 {
		selection = append(selection, []string{"-i", "lo", "-j", "RETURN"})
	}
	if v6 {
		// -m frag with no options matches any packet with a Fragment header.
		selection = append(selection, []string{"-m", "frag", "-j", "RETURN"})
	} else {
		// Bytes 6-7 of the IPv4 header: MF flag and fragment offset. Any of
		// them set is a fragment; -f alone would miss first fragments.
		selection = append(selection, []string{"-m", "u32", "!", "--u32", "0x4&0x3fff=0x0", "-j", "RETURN"})
	}
	selection = append(selection, []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"})

	ifaces := c.Interfaces
	if len(ifaces) == 0 {
		ifaces = []string{""} // one rule without -i
	}
	per := func(action ...string) [][]string {
		var out [][]string
		for _, name := range ifaces {
			var r []string
			if name != "" {
				r = append(r, "-i", name)
			}
			r = append(r, "-p", "tcp")
			out = append(out, append(r, action...))
		}
		return out
	}

	raw := chainPlan{
		table: "raw",
		chain: RawChain,
		jump:  []string{"-j", RawChain},
	}
	// Everything from the TUN is gVisor's (both legs, same 5-tuple as the
	// other leg): untracked, so conntrack never merges the legs, and
	// ACCEPTed so that nothing later in raw PREROUTING (an rpfilter match
	// that sees a source routed elsewhere, for example) drops it.
	raw.rules = append(raw.rules,
		[]string{"-i", c.TUN, "-j", "CT", "--notrack"},
		[]string{"-i", c.TUN, "-j", "ACCEPT"},
		// The rest is about TCP only; other protocols leave at once.
		[]string{"!", "-p", "tcp", "-j", "RETURN"},
	)
	raw.rules = append(raw.rules, selection...)
	raw.rules = append(raw.rules, per("-j", "CT", "--notrack")...)

	mangle := chainPlan{
		table: "mangle",
		chain: MangleChain,
		jump:  []string{"-p", "tcp", "-j", MangleChain},
	}
	// Packets out of the TUN are never steered again: no loop.
	mangle.rules = append(mangle.rules, []string{"-i", c.TUN, "-j", "RETURN"})
	mangle.rules = append(mangle.rules, selection...)
	mangle.rules = append(mangle.rules, per("-j", "MARK", "--set-xmark", c.markMask())...)

	return []chainPlan{raw, mangle}
}

func (c *Config) markMask() string { return fmt.Sprintf("%#x/%#x", c.Mark, c.Mask) }

// Describe returns, as iptables and ip commands, every kernel object
// Install creates for cfg, in install order. It touches nothing; sysctls
// are listed with the value Install sets when the current value does not
// already do.
func Describe(cfg Config) []string {
	c := &cfg
	var out []string
	out = append(out,
		fmt.Sprintf("ip link set %s up", c.TUN),
		fmt.Sprintf("sysctl -w net.ipv4.conf.%s.forwarding=1", c.TUN),
		fmt.Sprintf("sysctl -w net.ipv4.conf.%s.rp_filter=2   # only if max(all, %s) is 1 (strict)", c.TUN, c.TUN),
	)
	if c.IPv6 {
		out = append(out, fmt.Sprintf("sysctl -w net.ipv6.conf.%s.disable_ipv6=0", c.TUN))
	}
	out = append(out, describeAddr(c))
	for _, v6 := range c.families() {
		for _, r := range routePlan(c, v6) {
			out = append(out, r.String())
		}
	}
	for _, v6 := range c.families() {
		for _, cp := range iptablesPlan(c, v6) {
			cmd := iptablesCmd(v6) + " -t " + cp.table
			out = append(out, cmd+" -N "+cp.chain)
			for _, r := range cp.rules {
				out = append(out, cmd+" -A "+cp.chain+" "+shellJoin(r))
			}
			out = append(out, cmd+" -I PREROUTING 1 "+shellJoin(cp.jump))
		}
	}
	for _, v6 := range c.families() {
		out = append(out, describeRule(c, v6))
	}
	return out
}

func (c *Config) families() []bool {
	if c.IPv6 {
		return []bool{false, true}
	}
	return []bool{false}
}

func iptablesCmd(v6 bool) string {
	if v6 {
		return "ip6tables"
	}
	return "iptables"
}

func ipCmd(v6 bool) string {
	if v6 {
		return "ip -6"
	}
	return "ip"
}

func describeAddr(c *Config) string {
	return fmt.Sprintf("ip addr add %s/32 scope link dev %s", c.TUNAddr, c.TUN)
}

func describeRule(c *Config, v6 bool) string {
	return fmt.Sprintf("%s rule add priority %d fwmark %s lookup %d", ipCmd(v6), c.RulePriority, c.markMask(), c.Table)
}

// plannedRoute is one route in the steering table.
type plannedRoute struct {
	v6      bool
	closed  bool // prohibit route (fail closed) instead of dev TUN
	metric  int
	table   int
	tunName string
}

func (r plannedRoute) String() string {
	if r.closed {
		return fmt.Sprintf("%s route add prohibit default table %d metric %d", ipCmd(r.v6), r.table, r.metric)
	}
	return fmt.Sprintf("%s route add default dev %s table %d metric %d", ipCmd(r.v6), r.tunName, r.table, r.metric)
}

func routePlan(c *Config, v6 bool) []plannedRoute {
	rs := []plannedRoute{{v6: v6, metric: tunRouteMetric, table: c.Table, tunName: c.TUN}}
	if c.FailMode == FailClosed {
		rs = append(rs, plannedRoute{v6: v6, closed: true, metric: failClosedMetric, table: c.Table})
	}
	return rs
}

// shellJoin quotes the arguments that a shell would split or expand, so
// Describe's lines can be pasted into one.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=+,", r))
		}) < 0 {
			q[i] = a
			continue
		}
		if a == "!" {
			q[i] = a // negation, fine unquoted in sh as an argument
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// splitRule splits one line of `iptables -S` output into arguments. The
// output quotes arguments with double quotes and escapes '"' and '\' inside
// them (iptables' save_string); nothing else is special.
func splitRule(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case inQuote && ch == '\\':
			if i+1 >= len(line) {
				return nil, fmt.Errorf("steer: iptables output %q ends inside an escape", line)
			}
			i++
			cur.WriteByte(line[i])
		case inQuote && ch == '"':
			inQuote = false
		case inQuote:
			cur.WriteByte(ch)
		case ch == '"':
			inQuote, inArg = true, true
		case ch == ' ' || ch == '\t':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(ch)
			inArg = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("steer: iptables output %q has an unterminated quote", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// jumpTarget returns the chain a rule (split `-S` output) jumps or goes to.
func jumpTarget(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "--jump", "-g", "--goto":
			return args[i+1]
		}
	}
	return ""
}

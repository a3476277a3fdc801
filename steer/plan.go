package steer

import (
	"fmt"
	"strconv"
	"strings"
)

// chainPlan is one netward chain: its rules in order and the rule in the
// built-in chain hook (PREROUTING, or OUTPUT) that jumps to it (inserted
// first, so netward sees packets before anything else in that table).
type chainPlan struct {
	table string
	chain string
	hook  string
	jump  []string
	rules [][]string
}

// chainsPlan is every netward chain for one family, in install order:
// steering's, then the kernel upstream leg's when it is on.
func chainsPlan(c *Config, v6 bool) []chainPlan {
	cps := iptablesPlan(c, v6)
	if c.kernelUpstream() {
		cps = append(cps, upstreamPlan(c, v6)...)
	}
	return cps
}

// upstreamPlan returns the chains of the kernel upstream leg (the same in
// both families):
//   - raw OUTPUT: the upstream sockets' own packets (SO_MARK UpstreamMark)
//     are not tracked. Their answers are untracked by the raw PREROUTING
//     rules like all steered TCP, so tracked SYNs would only leave SYN_SENT
//     entries behind.
//   - mangle PREROUTING, inserted after (so in front of) the steering
//     chain's jump: TCP for a transparent socket gets TransparentMark and
//     is ACCEPTed, which ends mangle PREROUTING before steering would mark
//     it; the ip rule for TransparentMark delivers it locally. The TUN is
//     excluded because gVisor's client leg carries the same addresses as
//     the upstream socket; -m socket matches the socket's own 4-tuple only,
//     so the client's packets (reversed tuple) are caught only by a client
//     leg netward handed off to a kernel socket (netstack.Stack.Handoff),
//     which has the server's address. SYNs are never caught: a new
//     connection from a port whose handed-off predecessor is still in the
//     kernel's TIME_WAIT must reach gVisor, not that socket (netward then
//     destroys it).
//
// With the kernel client leg (AcceptPort) every TCP connection of a client
// is a kernel socket from its SYN on, none has a handshake in gVisor, so
// the socket match takes every transparent socket of the tuple: the
// request socket that the handshake's last ACK completes (which has no
// mark to restore), and a TIME_WAIT, whose answer to a late segment is
// the kernel's as for any connection. --nowildcard keeps listeners out.
func upstreamPlan(c *Config, v6 bool) []chainPlan {
	tmark := fmt.Sprintf("%#x/%#x", c.TransparentMark, c.Mask)
	match := []string{"!", "-i", c.TUN, "-p", "tcp", "-m", "socket", "--transparent", "--restore-skmark",
		"-m", "mark", "--mark", fmt.Sprintf("%#x/%#x", c.UpstreamMark, c.Mask), "-j", "MARK", "--set-xmark", tmark}
	if c.kernelAccept() {
		match = []string{"!", "-i", c.TUN, "-p", "tcp", "-m", "socket", "--transparent", "--nowildcard", "-j", "MARK", "--set-xmark", tmark}
	}
	transparent := [][]string{
		{"-p", "tcp", "--syn", "-j", "RETURN"},
		// Only netward's own full sockets (their SO_MARK restored
		// onto the packet): a TIME_WAIT socket of a flow handed
		// off to the kernel would take the packets of a new
		// connection on its tuple, whose handshake is in gVisor.
		// Those go on to the TUN.
		match,
		{"-m", "mark", "--mark", tmark, "-j", "ACCEPT"},
	}
	if c.ReplaySYN {
		// SYN replay: the only SYNs out of the TUN are those netward
		// writes back for the listener (gVisor dials no server: the
		// upstream leg is a kernel socket).
		replay := []string{"-i", c.TUN, "-p", "tcp", "--syn", "-j", "TPROXY", "--on-port", strconv.Itoa(int(c.AcceptPort)),
			"--on-ip", loopback(v6), "--tproxy-mark", tmark}
		transparent = append([][]string{replay}, transparent...)
	}
	return []chainPlan{
		{
			table: "raw",
			chain: UpstreamChain,
			hook:  "OUTPUT",
			jump:  []string{"-j", UpstreamChain},
			rules: [][]string{
				{"-m", "mark", "--mark", fmt.Sprintf("%#x/%#x", c.UpstreamMark, c.Mask), "-j", "CT", "--notrack"},
			},
		},
		{
			table: "mangle",
			chain: TransparentChain,
			hook:  "PREROUTING",
			jump:  []string{"-p", "tcp", "-j", TransparentChain},
			rules: transparent,
		},
	}
}

// loopback is the transparent listener's address in a family.
func loopback(v6 bool) string {
	if v6 {
		return "::1"
	}
	return "127.0.0.1"
}

// earlyDemuxMarker is the rule Install appends to the IPv4 UpstreamChain
// before it turns tcp_early_demux off: the value to restore, kept in the
// kernel, where Cleanup finds it after a crash.
func earlyDemuxMarker(old int) []string {
	return []string{"-m", "comment", "--comment", fmt.Sprintf("netward: %s was %d", earlyDemuxSysctl, old)}
}

// parseEarlyDemuxMarker reads the value earlyDemuxMarker recorded from a
// rule (split `-S` output).
func parseEarlyDemuxMarker(args []string) (int, bool) {
	prefix := "netward: " + earlyDemuxSysctl + " was "
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "--comment" || !strings.HasPrefix(args[i+1], prefix) {
			continue
		}
		v, err := strconv.Atoi(strings.TrimPrefix(args[i+1], prefix))
		if err != nil || v < 0 {
			return 0, false
		}
		return v, true
	}
	return 0, false
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
	perProto := func(proto string, action ...string) [][]string {
		var out [][]string
		for _, name := range ifaces {
			var r []string
			if name != "" {
				r = append(r, "-i", name)
			}
			r = append(r, "-p", proto)
			out = append(out, append(r, action...))
		}
		return out
	}
	per := func(action ...string) [][]string { return perProto("tcp", action...) }

	raw := chainPlan{
		table: "raw",
		chain: RawChain,
		hook:  "PREROUTING",
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
		hook:  "PREROUTING",
		jump:  []string{"-p", "tcp", "-j", MangleChain},
	}
	if c.UDP {
		mangle.jump = []string{"-j", MangleChain}
	}
	// Packets out of the TUN are never steered again: no loop.
	mangle.rules = append(mangle.rules, []string{"-i", c.TUN, "-j", "RETURN"})
	mangle.rules = append(mangle.rules, selection...)
	if c.UDP {
		mangle.rules = append(mangle.rules, udpBypassRules(c, v6)...)
	}
	if c.kernelAccept() && !c.ReplaySYN {
		// The kernel client leg: a SYN becomes a connection to netward's
		// listener (on-ip loopback: nothing else reaches it). The mark
		// is the socket-match rule's, whose ip rule delivers locally.
		mangle.rules = append(mangle.rules, per("--syn", "-j", "TPROXY", "--on-port", strconv.Itoa(int(c.AcceptPort)),
			"--on-ip", loopback(v6), "--tproxy-mark", fmt.Sprintf("%#x/%#x", c.TransparentMark, c.Mask))...)
	}
	mangle.rules = append(mangle.rules, per("-j", "MARK", "--set-xmark", c.markMask())...)
	if c.UDP {
		mangle.rules = append(mangle.rules, perProto("udp", "-j", "MARK", "--set-xmark", c.markMask())...)
	}

	return []chainPlan{raw, mangle}
}

// udpBypassRules leave the later datagrams of UDP flows netward allowed
// (conntrack mark set by Conntrack.Bypass) to plain forwarding. The u32
// matches read the first bytes of the UDP payload: at the IHL's offset + 8
// in IPv4, at 48 in IPv6 (no extension headers: a packet with one is not
// matched and stays steered, which is safe). A QUIC long header is its
// first bit set (RFC 9000 §17.2) and, for v1/v2, the version in the next
// four bytes; a short header has the first bit clear (§17.3).
func udpBypassRules(c *Config, v6 bool) [][]string {
	payload, version := "0>>22&0x3C@8", "0>>22&0x3C@9"
	if v6 {
		payload, version = "48", "49"
	}
	long := func(v uint32) string {
		return fmt.Sprintf("%s>>24&0x80=0x80&&%s=%#x", payload, version, v)
	}
	short := payload + ">>24&0x80=0x0"
	return [][]string{
		{"-p", "udp", "-m", "connmark", "--mark", fmt.Sprintf("%#x/%#x", c.BypassMark, c.Mask),
			"-m", "u32", "!", "--u32", long(quicVersion1), "-m", "u32", "!", "--u32", long(quicVersion2), "-j", "RETURN"},
		{"-p", "udp", "-m", "connmark", "--mark", fmt.Sprintf("%#x/%#x", c.BypassQUICMark, c.Mask),
			"-m", "u32", "--u32", short, "-j", "RETURN"},
	}
}

// QUIC versions whose long headers stay steered on bypassed flows.
const (
	quicVersion1 = 0x00000001
	quicVersion2 = 0x6b3343cf
)

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
		for _, cp := range chainsPlan(c, v6) {
			cmd := iptablesCmd(v6) + " -t " + cp.table
			out = append(out, cmd+" -N "+cp.chain)
			for _, r := range cp.rules {
				out = append(out, cmd+" -A "+cp.chain+" "+shellJoin(r))
			}
			out = append(out, cmd+" -I "+cp.hook+" 1 "+shellJoin(cp.jump))
		}
	}
	if c.kernelUpstream() {
		out = append(out,
			"iptables -t raw -A "+UpstreamChain+" "+shellJoin(earlyDemuxMarker(1))+"   # the value it had; only if not 0",
			"sysctl -w "+earlyDemuxSysctl+"=0",
		)
	}
	for _, v6 := range c.families() {
		for _, r := range rulePlan(c, v6) {
			out = append(out, r.String())
		}
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

// plannedRule is one fwmark ip rule.
type plannedRule struct {
	v6         bool
	priority   int
	mark, mask uint32
	table      int
}

func (r plannedRule) String() string {
	return fmt.Sprintf("%s rule add priority %d fwmark %#x/%#x lookup %d", ipCmd(r.v6), r.priority, r.mark, r.mask, r.table)
}

// rulePlan returns the ip rules for one family, in install order: the
// steering rule last, so steering starts when everything else is in place.
func rulePlan(c *Config, v6 bool) []plannedRule {
	var rs []plannedRule
	if c.kernelUpstream() {
		rs = append(rs, plannedRule{v6: v6, priority: c.TransparentRulePriority, mark: c.TransparentMark, mask: c.Mask, table: c.TransparentTable})
	}
	return append(rs, plannedRule{v6: v6, priority: c.RulePriority, mark: c.Mark, mask: c.Mask, table: c.Table})
}

// plannedRoute is one route in the steering table (or, local, in the
// kernel upstream leg's table).
type plannedRoute struct {
	v6      bool
	closed  bool // prohibit route (fail closed) instead of dev TUN
	local   bool // local default dev lo: deliver to this host's sockets
	metric  int
	table   int
	tunName string
}

func (r plannedRoute) String() string {
	switch {
	case r.closed:
		return fmt.Sprintf("%s route add prohibit default table %d metric %d", ipCmd(r.v6), r.table, r.metric)
	case r.local:
		return fmt.Sprintf("%s route add local default dev lo table %d", ipCmd(r.v6), r.table)
	}
	return fmt.Sprintf("%s route add default dev %s table %d metric %d", ipCmd(r.v6), r.tunName, r.table, r.metric)
}

func routePlan(c *Config, v6 bool) []plannedRoute {
	rs := []plannedRoute{{v6: v6, metric: tunRouteMetric, table: c.Table, tunName: c.TUN}}
	if c.FailMode == FailClosed {
		rs = append(rs, plannedRoute{v6: v6, closed: true, metric: failClosedMetric, table: c.Table})
	}
	if c.kernelUpstream() {
		rs = append(rs, plannedRoute{v6: v6, local: true, table: c.TransparentTable})
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

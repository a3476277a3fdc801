package steer

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"strings"
)

// Defaults. They match config.Default so a config file that says nothing
// and `netward cleanup` with no flags agree on what is netward's.
const (
	DefaultTUN  = "netward0"
	DefaultMark = 0x4e57 // "NW"
	// DefaultAcceptPort is the transparent listener's port (netward run
	// --tcp-accept kernel), on 127.0.0.1 and ::1.
	DefaultAcceptPort   = 20057
	DefaultMask         = 0xffff // netward owns the low 16 mark bits only
	DefaultTable        = 20055
	DefaultRulePriority = 20055

	// The kernel upstream leg's table and rule priority (see
	// Config.TransparentMark). Cleanup removes them whether or not the run
	// that left them used the kernel upstream leg.
	DefaultTransparentTable        = 20056
	DefaultTransparentRulePriority = 20054

	// Conntrack marks of allowed UDP flows (Config.BypassMark).
	DefaultBypassMark     = 0x4e5a
	DefaultBypassQUICMark = 0x4e5b
)

// DefaultTUNAddr is the link-local /32 Install puts on the TUN. The kernel's
// reverse-path filter drops every packet that arrives on an interface with
// no IPv4 address when rp_filter is 1 or 2 (fib_validate_source's
// "no_addr" case); with any address, loose mode (2) accepts gVisor's
// packets. 169.254.0.0/16 is never routed, so the address cannot clash
// with a real network, and scope link keeps the kernel from choosing it as
// the source of its own traffic.
var DefaultTUNAddr = netip.AddrFrom4([4]byte{169, 254, 78, 87})

// Chain names. Every iptables chain netward creates starts with ChainPrefix;
// Cleanup removes every chain with that prefix in the mangle and raw tables.
const (
	ChainPrefix = "NETWARD"
	MangleChain = "NETWARD"     // mangle: marks steered packets
	RawChain    = "NETWARD_RAW" // raw: notrack for both legs

	// Only with the kernel upstream leg (Config.TransparentMark != 0).
	TransparentChain = "NETWARD_TPROXY"   // mangle PREROUTING: server answers to transparent sockets
	UpstreamChain    = "NETWARD_UPSTREAM" // raw OUTPUT: notrack for the upstream sockets' packets
)

// earlyDemuxSysctl is the one global sysctl Install changes, and only for
// the kernel upstream leg. It covers IPv6 TCP too (ip6_rcv_finish_core
// reads net.ipv4.tcp_early_demux).
const earlyDemuxSysctl = "net.ipv4.tcp_early_demux"

// Route metrics in the steering table. The TUN route wins while the TUN
// exists; the fail-closed route takes over when the TUN (and with it its
// route) disappears.
const (
	tunRouteMetric    = 100
	failClosedMetric  = 10000
	minRulePriority   = 1     // 0 is the local table's rule
	maxRulePriority   = 32765 // 32766 is main's rule: ours must come first
	maxIfNameLen      = 15    // IFNAMSIZ - 1
	iptablesWaitSecs  = 5     // --wait: another iptables user holds the lock
	linkLocalPrefixV4 = 16
)

var linkLocalV4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 0, 0}), linkLocalPrefixV4)

// FailMode is what happens to steered traffic while netward is not running
// (killed, crashed) but its rules are still in place.
type FailMode uint8

const (
	// FailOpen: the TUN vanishes with the process, its route in the steering
	// table is flushed, the ip rule's lookup finds nothing and falls through
	// to the main table: plain kernel forwarding.
	FailOpen FailMode = iota
	// FailClosed: a prohibit route in the steering table (higher metric than
	// the TUN route) takes over when the TUN vanishes: steered traffic is
	// refused with ICMP administratively prohibited until netward is back.
	FailClosed
)

// String returns "open" or "closed".
func (m FailMode) String() string {
	switch m {
	case FailOpen:
		return "open"
	case FailClosed:
		return "closed"
	}
	return fmt.Sprintf("FailMode(%d)", uint8(m))
}

// ParseFailMode parses "open" or "closed".
func ParseFailMode(s string) (FailMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "open":
		return FailOpen, nil
	case "closed":
		return FailClosed, nil
	}
	return 0, fmt.Errorf("steer: fail mode %q is not open or closed", s)
}

// MarshalText implements encoding.TextMarshaler.
func (m FailMode) MarshalText() ([]byte, error) {
	if m > FailClosed {
		return nil, fmt.Errorf("steer: invalid fail mode %d", uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler (flags, YAML).
func (m *FailMode) UnmarshalText(b []byte) error {
	v, err := ParseFailMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Config says what to steer and with which kernel objects. Start from
// DefaultConfig: zero values are not replaced by defaults, they are errors.
type Config struct {
	// TUN is the name of netward's TUN device. It must exist (netstack
	// creates it) when Install runs; Preflight does not need it.
	TUN string
	// Interfaces are the input interfaces whose forwarded TCP is steered.
	// Empty means every interface but lo and TUN, matched by exclusion so
	// that interfaces added later are steered too. A name may end in '+'
	// (iptables wildcard: "eth+"); other names must exist.
	Interfaces []string
	// Mark and Mask: steered packets get Mark in the Mask bits of their
	// fwmark (iptables MARK --set-xmark Mark/Mask), and the ip rule
	// matches fwmark Mark/Mask. Mark must lie inside Mask.
	Mark, Mask uint32
	// Table is the routing table with the default route to the TUN.
	// 1..251 or 256..2^32-1 (253-255 are the kernel's).
	Table int
	// RulePriority is the priority of the fwmark ip rule (v4 and v6):
	// 1..32765, so it is looked at before the main table's rule.
	RulePriority int
	// FailMode: see FailOpen, FailClosed.
	FailMode FailMode
	// IPv6 steers IPv6 too (ip6tables, ip -6 rule/route). Set it to false
	// on kernels without IPv6 (see KernelHasIPv6).
	IPv6 bool
	// TUNAddr is the IPv4 link-local address (/32, scope link) Install
	// gives the TUN so that rp_filter loose mode accepts what gVisor sends
	// (see DefaultTUNAddr). Must be in 169.254.0.0/16.
	TUNAddr netip.Addr

	// TransparentMark, when not 0, turns on the rules of the kernel
	// upstream leg (netstack's UpstreamKernel: an IP_TRANSPARENT socket
	// bound to the client's address): TCP that arrives on any interface but
	// the TUN for a transparent socket gets TransparentMark (in Mask's
	// bits) and is accepted in mangle PREROUTING before steering sees it;
	// an ip rule at TransparentRulePriority sends that mark to
	// TransparentTable, which holds "local default dev lo", so the answers
	// are delivered to the socket instead of forwarded to the client.
	// 0 (the default): no kernel upstream, nothing of this is installed.
	TransparentMark uint32
	// TransparentTable is the routing table with the local default route;
	// TransparentRulePriority the priority of the ip rule that looks it up.
	// Same ranges as Table and RulePriority, and different from them.
	TransparentTable        int
	TransparentRulePriority int
	// UpstreamMark is the SO_MARK of the upstream sockets (netstack's
	// UpstreamMark): their packets are NOTRACK'ed in raw OUTPUT, because
	// steer's raw rules untrack the answers and conntrack would otherwise
	// keep SYN_SENT entries. Required (inside Mask, different from Mark and
	// TransparentMark) when TransparentMark is set, 0 otherwise.
	UpstreamMark uint32
	// AcceptPort, when not 0 (it needs TransparentMark), hands forwarded
	// TCP SYNs to netward's transparent listener on the loopback address
	// (127.0.0.1 and ::1) and this port with a TPROXY rule, instead of
	// steering them into the TUN (netstack.ServeAccepted: the kernel
	// client leg). The connections' later packets reach the accepted
	// sockets by the kernel upstream leg's socket-match rule; TCP of no
	// socket is steered into the TUN as before (gVisor resets it).
	AcceptPort uint16
	// ReplaySYN, with AcceptPort, keeps steering SYNs into the TUN, so
	// netward admits a flow and dials its server before the client hears
	// anything, and hands the listener only the SYNs that netward writes
	// back into the TUN (netstack's SYN replay): a TPROXY rule for SYNs
	// out of the TUN, instead of the one for forwarded SYNs.
	ReplaySYN bool

	// UDP steers forwarded UDP too (QUIC, DNS, everything else), with the
	// kernel bypass below for flows netward has allowed.
	UDP bool
	// BypassMark and BypassQUICMark are the conntrack marks (in Mask's
	// bits) netward gives a UDP flow it has allowed (see Conntrack): the
	// steering rules then leave the flow's later datagrams to plain
	// forwarding. BypassMark skips every datagram but QUIC v1/v2 long
	// headers (a QUIC handshake starting on a flow first judged as plain
	// UDP is still read); BypassQUICMark only QUIC short-header packets,
	// so every later Initial (a Retry, a new connection on the same
	// 5-tuple) is judged again. Required, different from each other and
	// from the packet marks, when UDP is set.
	BypassMark, BypassQUICMark uint32

	// Logger gets every kernel object installed or removed at debug level,
	// leftovers removed at info. nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: TUN netward0, all interfaces, mark
// 0x4e57/0xffff, table 20055, rule priority 20055, fail open, IPv6 on.
func DefaultConfig() Config {
	return Config{
		TUN:          DefaultTUN,
		Mark:         DefaultMark,
		Mask:         DefaultMask,
		Table:        DefaultTable,
		RulePriority: DefaultRulePriority,
		FailMode:     FailOpen,
		IPv6:         true,
		TUNAddr:      DefaultTUNAddr,
		UDP:          true,

		BypassMark:     DefaultBypassMark,
		BypassQUICMark: DefaultBypassQUICMark,

		TransparentTable:        DefaultTransparentTable,
		TransparentRulePriority: DefaultTransparentRulePriority,
	}
}

// kernelUpstream reports whether the kernel upstream leg's rules are
// installed.
func (c *Config) kernelUpstream() bool { return c.TransparentMark != 0 }

// kernelAccept reports whether SYNs go to the transparent listener.
func (c *Config) kernelAccept() bool { return c.kernelUpstream() && c.AcceptPort != 0 }

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// validate checks the values alone (no kernel access) and returns every
// problem at once, each wrapping ErrBadConfig.
func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("steer: %w: %s", ErrBadConfig, fmt.Sprintf(format, args...)))
	}
	if err := validIfName(c.TUN, false); err != nil {
		bad("tun: %v", err)
	} else if c.TUN == "lo" {
		bad("tun: %q is the loopback device", c.TUN)
	}
	seen := map[string]bool{}
	for _, name := range c.Interfaces {
		switch {
		case validIfName(name, true) != nil:
			bad("interfaces: %v", validIfName(name, true))
		case name == c.TUN:
			bad("interfaces: %q is netward's own TUN device; steering it would loop", name)
		case name == "lo":
			bad("interfaces: %q: loopback traffic is never steered", name)
		case seen[name]:
			bad("interfaces: %q is listed twice", name)
		}
		seen[name] = true
	}
	errs = append(errs, c.validateIDs()...)
	if c.UDP {
		for _, m := range []struct {
			name string
			v    uint32
		}{{"bypass mark", c.BypassMark}, {"QUIC bypass mark", c.BypassQUICMark}} {
			switch {
			case m.v == 0:
				bad("%s must be set when UDP is steered", m.name)
			case m.v&^c.Mask != 0:
				bad("%s %#x has bits outside the mask %#x", m.name, m.v, c.Mask)
			case m.v&c.Mask == c.Mark&c.Mask:
				bad("%s %#x is the steering mark", m.name, m.v)
			}
		}
		if c.BypassMark != 0 && c.BypassMark == c.BypassQUICMark {
			bad("bypass mark and QUIC bypass mark are both %#x", c.BypassMark)
		}
	}
	if c.FailMode > FailClosed {
		bad("fail mode %d is not open or closed", uint8(c.FailMode))
	}
	if !c.TUNAddr.Is4() || !linkLocalV4.Contains(c.TUNAddr) {
		bad("tun address %v is not an IPv4 link-local address (169.254.0.0/16)", c.TUNAddr)
	}
	switch {
	case c.TransparentMark == 0 && c.UpstreamMark != 0:
		bad("upstream mark %#x without a transparent mark: both or neither", c.UpstreamMark)
	case c.TransparentMark != 0 && c.UpstreamMark == 0:
		bad("transparent mark %#x without an upstream mark: both or neither", c.TransparentMark)
	case c.TransparentMark != 0:
		for _, m := range []struct {
			name string
			v    uint32
		}{{"transparent mark", c.TransparentMark}, {"upstream mark", c.UpstreamMark}} {
			if m.v&^c.Mask != 0 {
				bad("%s %#x has bits outside the mask %#x", m.name, m.v, c.Mask)
			}
			if m.v&c.Mask == c.Mark&c.Mask {
				bad("%s %#x is the steering mark", m.name, m.v)
			}
		}
		if c.TransparentMark&c.Mask == c.UpstreamMark&c.Mask {
			bad("transparent mark and upstream mark are both %#x", c.UpstreamMark)
		}
		if c.TransparentTable == 0 {
			bad("transparent table must be set with the transparent mark")
		}
		if c.TransparentRulePriority == 0 {
			bad("transparent rule priority must be set with the transparent mark")
		}
	}
	if c.AcceptPort != 0 && c.TransparentMark == 0 {
		bad("accept port %d without a transparent mark: the kernel client leg needs the kernel upstream leg's rules", c.AcceptPort)
	}
	if c.ReplaySYN && c.AcceptPort == 0 {
		bad("SYN replay without an accept port: the replayed SYNs go to the transparent listener")
	}

	return errors.Join(errs...)
}

// validateIDs checks the values that identify netward's objects; Cleanup
// needs only these.
func (c *Config) validateIDs() []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("steer: %w: %s", ErrBadConfig, fmt.Sprintf(format, args...)))
	}
	if c.Mask == 0 {
		bad("mark mask must not be 0")
	}
	if c.Mark == 0 {
		bad("mark must not be 0")
	} else if c.Mark&^c.Mask != 0 {
		bad("mark %#x has bits outside its mask %#x", c.Mark, c.Mask)
	}
	if c.Table <= 0 || (c.Table >= 252 && c.Table <= 255) || int64(c.Table) > math.MaxUint32 {
		bad("table %d is not a free routing table id (1..251, 256..%d)", c.Table, uint32(math.MaxUint32))
	}
	if c.RulePriority < minRulePriority || c.RulePriority > maxRulePriority {
		bad("rule priority %d is outside %d..%d", c.RulePriority, minRulePriority, maxRulePriority)
	}
	// The kernel upstream leg's table and priority: 0 means none.
	if t := c.TransparentTable; t != 0 {
		if t < 0 || (t >= 252 && t <= 255) || int64(t) > math.MaxUint32 {
			bad("transparent table %d is not a free routing table id (1..251, 256..%d)", t, uint32(math.MaxUint32))
		} else if t == c.Table {
			bad("transparent table %d is the steering table", t)
		}
	}
	if p := c.TransparentRulePriority; p != 0 {
		if p < minRulePriority || p > maxRulePriority {
			bad("transparent rule priority %d is outside %d..%d", p, minRulePriority, maxRulePriority)
		} else if p == c.RulePriority {
			bad("transparent rule priority %d is the steering rule's", p)
		}
	}
	return errs
}

// validIfName checks a Linux interface name; wildcard allows a trailing
// '+' (iptables' prefix match).
func validIfName(name string, wildcard bool) error {
	base := name
	if wildcard {
		base = strings.TrimSuffix(name, "+")
		if base == "" && name == "+" {
			return fmt.Errorf("interface name %q matches every interface; leave the list empty instead", name)
		}
	}
	if base == "" || len(name) > maxIfNameLen {
		return fmt.Errorf("interface name %q must be 1..%d bytes", name, maxIfNameLen)
	}
	if base == "." || base == ".." || strings.ContainsAny(base, "/:+!\"' \t\n") {
		return fmt.Errorf("interface name %q has a forbidden character", name)
	}
	return nil
}

package steer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// builtinChains are the chains of the tables netward uses that can hold a
// jump to one of its chains.
var builtinChains = map[string][]string{
	"raw":    {"PREROUTING", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// Cleanup removes what a netward that did not stop cleanly (kill -9, crash,
// power loss of a persistent setup) left behind, for IPv4 and IPv6 alike:
// every chain whose name starts with NETWARD in the mangle and raw tables
// and the jumps to them, the ip rules at cfg.RulePriority with cfg's mark
// and every ip rule that looks up cfg.Table, every route in cfg.Table, and
// the TUN device named cfg.TUN if it is still there and no process holds
// it open. The kernel upstream leg's leftovers go too: the ip rules that
// look up cfg.TransparentTable (or match cfg.TransparentMark at
// cfg.TransparentRulePriority), the routes in that table, and
// net.ipv4.tcp_early_demux is set back to the value recorded in the
// NETWARD_UPSTREAM chain. Only cfg's TUN, Mark, Mask, Table, RulePriority
// and the Transparent* values are used.
//
// It returns what it removed, as the commands that would remove it; an
// empty list and a nil error when there was nothing. It keeps going past
// failures and returns them joined.
func Cleanup(cfg Config) ([]string, error) {
	c := &cfg
	errs := c.validateIDs()
	if err := validIfName(c.TUN, false); err != nil {
		errs = append(errs, fmt.Errorf("steer: %w: tun: %v", ErrBadConfig, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := checkCapNetAdmin(); err != nil {
		return nil, err
	}
	// A TUN that a process holds open means netward is running: its rules
	// are not leftovers.
	if l, err := netlink.LinkByName(c.TUN); err == nil {
		if tun, ok := l.(*netlink.Tuntap); ok {
			inUse, err := tunInUse(tun)
			if err != nil {
				return nil, err
			}
			if inUse {
				return nil, fmt.Errorf("steer: %w: %s is held open by a running process (is netward running?); stop it first; nothing was removed", ErrTUNInUse, c.TUN)
			}
		}
	}
	ipts := map[bool]*iptables.IPTables{}
	ipt4, err := newIPTables(false)
	if err != nil {
		return nil, err
	}
	ipts[false] = ipt4
	// Leftovers are looked for in IPv6 whatever cfg.IPv6 says: the run that
	// left them may have had another configuration.
	if KernelHasIPv6() {
		if _, lookErr := exec.LookPath("ip6tables"); lookErr == nil {
			ipt6, err := newIPTables(true)
			if err != nil {
				return nil, err
			}
			ipts[true] = ipt6
		}
	}
	return cleanupLeftovers(c, ipts, true)
}

// cleanupLeftovers removes netward's objects from the kernel. Install calls
// it with deleteTUN false: the TUN is the one netstack has just opened, and
// only netward's address on it is a leftover.
func cleanupLeftovers(c *Config, ipts map[bool]*iptables.IPTables, deleteTUN bool) ([]string, error) {
	var removed []string
	var errs []error
	fams := []bool{false}
	if KernelHasIPv6() {
		fams = append(fams, true)
	}

	// Rules first: steering stops before the rest goes.
	for _, v6 := range fams {
		r, err := cleanupRules(c, v6)
		removed = append(removed, r...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	// The sysctl's old value is in a chain: read it before the chains go.
	if ipt := ipts[false]; ipt != nil {
		r, err := restoreEarlyDemux(ipt)
		removed = append(removed, r...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, v6 := range []bool{false, true} {
		ipt := ipts[v6]
		if ipt == nil {
			continue
		}
		for _, table := range []string{"mangle", "raw"} {
			r, err := cleanupChains(ipt, v6, table)
			removed = append(removed, r...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, v6 := range fams {
		for _, table := range []int{c.Table, c.TransparentTable} {
			if table == 0 {
				continue // no kernel upstream table configured
			}
			r, err := cleanupRoutes(table, v6)
			removed = append(removed, r...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	r, err := cleanupTUN(c, deleteTUN)
	removed = append(removed, r...)
	if err != nil {
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

// restoreEarlyDemux sets net.ipv4.tcp_early_demux back to the value the
// marker rule in the IPv4 UpstreamChain recorded, if that chain is there
// and the sysctl still has the 0 Install wrote.
func restoreEarlyDemux(ipt *iptables.IPTables) ([]string, error) {
	exists, err := ipt.ChainExists("raw", UpstreamChain)
	if err != nil {
		return nil, fmt.Errorf("steer: iptables -t raw -S: %w", err)
	}
	if !exists {
		return nil, nil
	}
	lines, err := ipt.List("raw", UpstreamChain)
	if err != nil {
		return nil, fmt.Errorf("steer: iptables -t raw -S %s: %w", UpstreamChain, err)
	}
	for _, line := range lines {
		args, err := splitRule(line)
		if err != nil {
			return nil, err
		}
		old, ok := parseEarlyDemuxMarker(args)
		if !ok {
			continue
		}
		path := filepath.Join(procSys, strings.ReplaceAll(earlyDemuxSysctl, ".", "/"))
		cur, err := readInt(path)
		if err != nil {
			return nil, err
		}
		if cur != 0 || old == 0 {
			return nil, nil // changed since by someone else: theirs now
		}
		if err := writeInt(path, old); err != nil {
			return nil, err
		}
		return []string{fmt.Sprintf("sysctl -w %s=%d", earlyDemuxSysctl, old)}, nil
	}
	return nil, nil
}

// ours says whether an ip rule is netward's: it looks up one of netward's
// tables, or it matches one of netward's marks at that mark's priority.
func ruleIsOurs(c *Config, r *netlink.Rule) bool {
	if r.Table == c.Table || (c.TransparentTable != 0 && r.Table == c.TransparentTable) {
		return true
	}
	if r.Mask == nil || *r.Mask != c.Mask {
		return false
	}
	return (r.Priority == c.RulePriority && r.Mark == c.Mark) ||
		(c.TransparentMark != 0 && r.Priority == c.TransparentRulePriority && r.Mark == c.TransparentMark)
}

func cleanupRules(c *Config, v6 bool) ([]string, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	rules, err := netlink.RuleList(family)
	if err != nil {
		return nil, fmt.Errorf("steer: %s rule list: %w", ipCmd(v6), err)
	}
	var removed []string
	var errs []error
	for i := range rules {
		r := &rules[i]
		if !ruleIsOurs(c, r) {
			continue
		}
		desc := fmt.Sprintf("%s rule del priority %d", ipCmd(v6), r.Priority)
		if r.Mark != 0 {
			desc += fmt.Sprintf(" fwmark %#x", r.Mark)
			if r.Mask != nil {
				desc += fmt.Sprintf("/%#x", *r.Mask)
			}
		}
		desc += fmt.Sprintf(" lookup %d", r.Table)
		if err := netlink.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("steer: %s: %w", desc, err))
			continue
		}
		removed = append(removed, desc)
	}
	return removed, errors.Join(errs...)
}

// cleanupChains removes the jumps from the built-in chains to NETWARD*
// chains, then flushes all NETWARD* chains (they may jump to each other),
// then deletes them.
func cleanupChains(ipt *iptables.IPTables, v6 bool, table string) ([]string, error) {
	cmd := iptablesCmd(v6) + " -t " + table
	chains, err := ipt.ListChains(table)
	if err != nil {
		return nil, fmt.Errorf("steer: %s -S: %w", cmd, err)
	}
	var ours []string
	for _, ch := range chains {
		if strings.HasPrefix(ch, ChainPrefix) {
			ours = append(ours, ch)
		}
	}
	if len(ours) == 0 {
		return nil, nil // a jump needs its target chain: none can exist
	}
	var removed []string
	var errs []error
	for _, builtin := range builtinChains[table] {
		lines, err := ipt.List(table, builtin)
		if err != nil {
			errs = append(errs, fmt.Errorf("steer: %s -S %s: %w", cmd, builtin, err))
			continue
		}
		for _, line := range lines {
			args, err := splitRule(line)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if len(args) < 3 || args[0] != "-A" || args[1] != builtin || !strings.HasPrefix(jumpTarget(args), ChainPrefix) {
				continue
			}
			spec := args[2:]
			if err := ipt.Delete(table, builtin, spec...); err != nil && !isIPTablesNotExist(err) {
				errs = append(errs, fmt.Errorf("steer: %s -D %s %s: %w", cmd, builtin, shellJoin(spec), err))
				continue
			}
			removed = append(removed, cmd+" -D "+builtin+" "+shellJoin(spec))
		}
	}
	for _, ch := range ours {
		if err := ipt.ClearChain(table, ch); err != nil {
			errs = append(errs, fmt.Errorf("steer: %s -F %s: %w", cmd, ch, err))
		}
	}
	for _, ch := range ours {
		if err := ipt.DeleteChain(table, ch); err != nil {
			errs = append(errs, fmt.Errorf("steer: %s -X %s (is it still referenced from a chain that is not netward's?): %w", cmd, ch, err))
			continue
		}
		removed = append(removed, cmd+" -X "+ch)
	}
	return removed, errors.Join(errs...)
}

func cleanupRoutes(table int, v6 bool) ([]string, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("steer: %s route list table %d: %w", ipCmd(v6), table, err)
	}
	var removed []string
	var errs []error
	for i := range routes {
		r := &routes[i]
		desc := fmt.Sprintf("%s route del %s", ipCmd(v6), routeString(r))
		if err := netlink.RouteDel(r); ignoreRouteGone(err) != nil {
			errs = append(errs, fmt.Errorf("steer: %s: %w", desc, err))
			continue
		}
		removed = append(removed, desc)
	}
	return removed, errors.Join(errs...)
}

// routeString renders a route roughly as `ip route` does.
func routeString(r *netlink.Route) string {
	var b strings.Builder
	switch r.Type {
	case unix.RTN_PROHIBIT:
		b.WriteString("prohibit ")
	case unix.RTN_BLACKHOLE:
		b.WriteString("blackhole ")
	case unix.RTN_UNREACHABLE:
		b.WriteString("unreachable ")
	case unix.RTN_LOCAL:
		b.WriteString("local ")
	}
	if r.Dst == nil || isDefault(r.Dst) {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.LinkIndex > 0 && (r.Type == unix.RTN_UNICAST || r.Type == unix.RTN_UNSPEC) { // IPv6 shows "dev lo" on the others
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			fmt.Fprintf(&b, " dev %s", l.Attrs().Name)
		} else {
			fmt.Fprintf(&b, " dev #%d", r.LinkIndex)
		}
	}
	fmt.Fprintf(&b, " table %d metric %d", r.Table, r.Priority)
	return b.String()
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// cleanupTUN removes netward's address from the TUN, or with deleteTUN the
// whole TUN, unless a process still has it open (a running netward).
func cleanupTUN(c *Config, deleteTUN bool) ([]string, error) {
	link, err := netlink.LinkByName(c.TUN)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("steer: find %s: %w", c.TUN, err)
	}
	tun, ok := link.(*netlink.Tuntap)
	if !ok {
		if deleteTUN {
			return nil, fmt.Errorf("steer: %w: %q is a %s device, not netward's TUN; not deleting it", ErrBadConfig, c.TUN, link.Type())
		}
		return nil, nil
	}
	if deleteTUN {
		inUse, err := tunInUse(tun)
		if err != nil {
			return nil, err
		}
		if inUse {
			return nil, fmt.Errorf("steer: %w: %s is held open by a running process (is netward running?); stop it first", ErrTUNInUse, c.TUN)
		}
		if err := netlink.LinkDel(link); ignoreLinkGone(err) != nil {
			return nil, fmt.Errorf("steer: ip link del %s: %w", c.TUN, err)
		}
		return []string{"ip link del " + c.TUN}, nil
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("steer: ip addr show dev %s: %w", c.TUN, err)
	}
	var removed []string
	for i := range addrs {
		a := &addrs[i]
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap() != c.TUNAddr {
			continue
		}
		if err := netlink.AddrDel(link, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return removed, fmt.Errorf("steer: ip addr del %s dev %s: %w", a.IPNet, c.TUN, err)
		}
		removed = append(removed, fmt.Sprintf("ip addr del %s dev %s", a.IPNet, c.TUN))
	}
	return removed, nil
}

// tunInUse reports whether a process has the TUN open. The kernel reports
// the number of attached queues only for multi-queue devices; for a
// single-queue one, carrier is on while a process has it open, and that
// shows only while the device is up. Failing those, try to attach: the
// kernel refuses a second attachment to a single-queue TUN with EBUSY.
// (Attaching to an unused, persistent TUN changes nothing that matters:
// Cleanup deletes it next.)
func tunInUse(tun *netlink.Tuntap) (bool, error) {
	if tun.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		return tun.Queues > 0, nil
	}
	if tun.RawFlags&unix.IFF_UP != 0 {
		return tun.RawFlags&unix.IFF_LOWER_UP != 0, nil
	}
	fd, err := unix.Open(tunDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("steer: open %s to probe %s: %w", tunDevicePath, tun.Name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(tun.Name)
	if err != nil {
		return false, fmt.Errorf("steer: probe %s: %w", tun.Name, err)
	}
	flags := uint16(unix.IFF_TUN)
	if tun.Mode == netlink.TUNTAP_MODE_TAP {
		flags = unix.IFF_TAP
	}
	ifr.SetUint16(flags | unix.IFF_NO_PI)
	switch err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); {
	case err == nil:
		return false, nil
	case errors.Is(err, unix.EBUSY):
		return true, nil
	default:
		return false, fmt.Errorf("steer: probe whether %s is in use: %w", tun.Name, err)
	}
}

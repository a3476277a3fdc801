package steer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Steering is netward's installed kernel state. Remove undoes it.
type Steering struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	undo []undoStep // install order; Remove runs it backwards
}

// undoStep is one installed object and how to remove it. Removing an
// object that is already gone is not an error.
type undoStep struct {
	desc string // the object, as the command that created it
	undo func() error
}

// Install steers forwarded TCP into cfg.TUN, which must exist. It first
// runs Preflight, then removes leftovers of an earlier run that did not
// stop cleanly (same chains, mark, table and priority), then installs, in
// this order: TUN up, TUN sysctls, TUN address, steering-table routes, raw
// chain, mangle chain, ip rules. The ip rules come last, so steering starts
// only when everything behind it is in place. If a step fails, everything
// done so far is removed again and the error says what failed.
//
// Install, Remove and Cleanup act on the network namespace of the calling
// thread: netlink sockets, /proc/sys/net and the iptables processes all
// follow it.
func Install(cfg Config) (*Steering, error) {
	if err := Preflight(cfg); err != nil {
		return nil, err
	}
	s := &Steering{cfg: cfg, log: cfg.logger()}
	if err := s.install(); err != nil {
		if rbErr := s.Remove(); rbErr != nil {
			return nil, errors.Join(err, fmt.Errorf("steer: rollback after failed install: %w", rbErr))
		}
		return nil, err
	}
	return s, nil
}

// Config returns the configuration s was installed with.
func (s *Steering) Config() Config { return s.cfg }

// Installed lists the objects s has in place, in install order, as the
// commands that would create them.
func (s *Steering) Installed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.undo))
	for i, u := range s.undo {
		out[i] = u.desc
	}
	return out
}

// Remove removes everything Install created, newest first (the ip rules
// first, so steering stops before anything behind it goes), and restores
// the sysctls it changed. It keeps going past failures and returns them
// all joined; a failed step is retried by the next call. Calling Remove
// again after success does nothing.
func (s *Steering) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	var failed []undoStep
	for i := len(s.undo) - 1; i >= 0; i-- {
		u := s.undo[i]
		if err := u.undo(); err != nil {
			errs = append(errs, fmt.Errorf("steer: remove %q: %w", u.desc, err))
			failed = append([]undoStep{u}, failed...)
			continue
		}
		s.log.Debug("steer: removed", "what", u.desc)
	}
	s.undo = failed
	return errors.Join(errs...)
}

func (s *Steering) done(desc string, undo func() error) {
	s.log.Debug("steer: installed", "what", desc)
	s.mu.Lock()
	s.undo = append(s.undo, undoStep{desc: desc, undo: undo})
	s.mu.Unlock()
}

func (s *Steering) install() error {
	c := &s.cfg
	ipts := map[bool]*iptables.IPTables{}
	for _, v6 := range c.families() {
		ipt, err := newIPTables(v6)
		if err != nil {
			return err
		}
		ipts[v6] = ipt
		maj, minor, patch := ipt.GetIptablesVersion()
		s.log.Debug("steer: using "+iptablesCmd(v6), "version", fmt.Sprintf("%d.%d.%d", maj, minor, patch))
	}

	// An earlier run killed with -9 leaves its chains, rules and routes;
	// remove them so this run starts from nothing and adds each object once.
	removed, err := cleanupLeftovers(c, ipts, false)
	for _, r := range removed {
		s.log.Info("steer: removed leftover of an earlier run", "what", r)
	}
	if err != nil {
		return err
	}

	link, err := tunLink(c.TUN)
	if err != nil {
		return err
	}
	if err := s.prepareTUN(link); err != nil {
		return err
	}
	for _, v6 := range c.families() {
		for _, r := range routePlan(c, v6) {
			if err := s.addRoute(link, r); err != nil {
				return err
			}
		}
	}
	for _, v6 := range c.families() {
		for _, cp := range chainsPlan(c, v6) {
			if err := s.addChain(ipts[v6], v6, cp); err != nil {
				return err
			}
		}
	}
	if c.kernelUpstream() {
		if err := s.disableEarlyDemux(ipts[false]); err != nil {
			return err
		}
	}
	for _, v6 := range c.families() {
		for _, r := range rulePlan(c, v6) {
			if err := s.addRule(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// disableEarlyDemux turns net.ipv4.tcp_early_demux off (v4 and v6), which
// the kernel upstream leg needs: early demux looks up the established
// socket for a packet before routing, and gVisor's client-leg packets from
// the TUN have the upstream socket's 4-tuple, so they would be tied to it
// and then dropped by ip_forward instead of forwarded to the client. The
// old value goes first into a comment rule in the IPv4 UpstreamChain, so
// that Cleanup can restore it after a crash.
func (s *Steering) disableEarlyDemux(ipt *iptables.IPTables) error {
	path := filepath.Join(procSys, strings.ReplaceAll(earlyDemuxSysctl, ".", "/"))
	old, err := readInt(path)
	if err != nil {
		return err
	}
	if old == 0 {
		return nil
	}
	marker := earlyDemuxMarker(old)
	if err := ipt.Append("raw", UpstreamChain, marker...); err != nil {
		return fmt.Errorf("steer: iptables -t raw -A %s %s: %w", UpstreamChain, shellJoin(marker), err)
	}
	s.log.Debug("steer: installed", "what", "iptables -t raw -A "+UpstreamChain+" "+shellJoin(marker))
	return s.setSysctl(path, func(int) (int, bool) { return 0, true })
}

// tunLink finds the TUN and checks that it is one.
func tunLink(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("steer: %w: TUN %q (netstack must create it before Install): %v", ErrInterfaceNotFound, name, err)
	}
	if link.Type() != "tuntap" {
		return nil, fmt.Errorf("steer: %w: %q is a %s device, not a TUN", ErrBadConfig, name, link.Type())
	}
	return link, nil
}

// prepareTUN brings the TUN up and sets what the kernel needs to forward
// the packets gVisor writes into it: IPv4 forwarding on the device (copied
// from net.ipv4.conf.default when the device was created), IPv6 enabled,
// an rp_filter mode that accepts sources routed via other interfaces, and
// the link-local address without which rp_filter drops everything.
func (s *Steering) prepareTUN(link netlink.Link) error {
	c := &s.cfg
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("steer: set %s up: %w", c.TUN, err)
		}
		s.done(fmt.Sprintf("ip link set %s up", c.TUN), func() error {
			return ignoreLinkGone(netlink.LinkSetDown(link))
		})
	}

	if err := s.setSysctl(confPath("ipv4", c.TUN, "forwarding"), func(int) (int, bool) { return 1, true }); err != nil {
		return err
	}
	// The effective rp_filter of a device is max(all, device). 0 and 2
	// (loose) both accept gVisor's packets (with an address on the TUN);
	// 1 (strict) drops them, because their sources are routed via the
	// other interfaces. Setting the device to 2 turns max(1, 2) into 2
	// without touching `all`, i.e. without loosening any other interface.
	all, err := readInt(confPath("ipv4", "all", "rp_filter"))
	if err != nil {
		return err
	}
	if err := s.setSysctl(confPath("ipv4", c.TUN, "rp_filter"), func(old int) (int, bool) {
		return 2, max(all, old) == 1
	}); err != nil {
		return err
	}
	if c.IPv6 {
		if err := s.setSysctl(confPath("ipv6", c.TUN, "disable_ipv6"), func(int) (int, bool) { return 0, true }); err != nil {
			return err
		}
	}

	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: c.TUNAddr.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Scope: int(netlink.SCOPE_LINK),
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("steer: %s: %w", describeAddr(c), err)
	}
	s.done(describeAddr(c), func() error {
		err := netlink.AddrDel(link, addr)
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			return nil
		}
		return ignoreLinkGone(err)
	})
	return nil
}

// setSysctl writes want(old) to path when want says so, and records the
// restore of old. A device that has gone by Remove time has taken its
// sysctls with it: not an error.
func (s *Steering) setSysctl(path string, want func(old int) (v int, set bool)) error {
	old, err := readInt(path)
	if err != nil {
		return err
	}
	v, set := want(old)
	if !set || v == old {
		return nil
	}
	if err := writeInt(path, v); err != nil {
		return err
	}
	name := sysctlDisplay(path)
	s.done(fmt.Sprintf("sysctl -w %s=%d   # was %d", name, v, old), func() error {
		if err := writeInt(path, old); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
	return nil
}

func (s *Steering) addRoute(link netlink.Link, p plannedRoute) error {
	if p.local {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("steer: %s: find lo: %w", p, err)
		}
		link = lo
	}
	r := netlinkRoute(link, p)
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("steer: %s: %w", p, err)
	}
	s.done(p.String(), func() error { return ignoreRouteGone(netlink.RouteDel(r)) })
	return nil
}

func netlinkRoute(link netlink.Link, p plannedRoute) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	family := netlink.FAMILY_V4
	if p.v6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		family = netlink.FAMILY_V6
	}
	r := &netlink.Route{Family: family, Dst: dst, Table: p.table, Priority: p.metric}
	switch {
	case p.closed:
		r.Type = unix.RTN_PROHIBIT
	case p.local:
		r.Type = unix.RTN_LOCAL
		r.LinkIndex = link.Attrs().Index
		r.Scope = netlink.SCOPE_HOST
	default:
		r.LinkIndex = link.Attrs().Index
		r.Scope = netlink.SCOPE_LINK
		if p.v6 {
			r.Scope = netlink.SCOPE_UNIVERSE
		}
	}
	return r
}

func (s *Steering) addChain(ipt *iptables.IPTables, v6 bool, cp chainPlan) error {
	cmd := iptablesCmd(v6) + " -t " + cp.table
	if err := ipt.NewChain(cp.table, cp.chain); err != nil {
		return fmt.Errorf("steer: %s -N %s: %w", cmd, cp.chain, err)
	}
	s.done(cmd+" -N "+cp.chain, func() error { return ipt.ClearAndDeleteChain(cp.table, cp.chain) })
	for _, r := range cp.rules {
		if err := ipt.Append(cp.table, cp.chain, r...); err != nil {
			return fmt.Errorf("steer: %s -A %s %s: %w", cmd, cp.chain, shellJoin(r), err)
		}
		s.log.Debug("steer: installed", "what", cmd+" -A "+cp.chain+" "+shellJoin(r))
	}
	jump := fmt.Sprintf("%s -I %s 1 %s", cmd, cp.hook, shellJoin(cp.jump))
	if err := ipt.Insert(cp.table, cp.hook, 1, cp.jump...); err != nil {
		return fmt.Errorf("steer: %s: %w", jump, err)
	}
	s.done(jump, func() error {
		return ipt.DeleteIfExists(cp.table, cp.hook, cp.jump...)
	})
	return nil
}

func (s *Steering) addRule(p plannedRule) error {
	r := netlinkRule(p)
	if err := netlink.RuleAdd(r); err != nil {
		return fmt.Errorf("steer: %s: %w", p, err)
	}
	s.done(p.String(), func() error {
		if err := netlink.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
		return nil
	})
	return nil
}

func netlinkRule(p plannedRule) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	if p.v6 {
		r.Family = netlink.FAMILY_V6
	}
	r.Priority = p.priority
	r.Mark = p.mark
	mask := p.mask
	r.Mask = &mask
	r.Table = p.table
	return r
}

func ignoreRouteGone(err error) error {
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}

func ignoreLinkGone(err error) error {
	if err == nil || errors.Is(err, unix.ENODEV) {
		return nil
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	return err
}

// isIPTablesNotExist reports an iptables error about a chain or rule that
// is not there.
func isIPTablesNotExist(err error) bool {
	var e *iptables.Error
	if errors.As(err, &e) {
		return e.IsNotExist() || strings.Contains(e.Error(), "does not exist") || strings.Contains(e.Error(), "No chain/target/match")
	}
	return false
}

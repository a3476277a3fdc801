package steer

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// ErrRemoved is Check's error once Remove has run.
var ErrRemoved = errors.New("steer: steering removed")

// Check reports whether the steering still sends traffic into the TUN:
// the TUN exists and is up, the steering table's route into it is there,
// and so is the fwmark ip rule of each family. It reads netlink only (no
// iptables process), so a load balancer's health check may call it every
// few seconds; the iptables chains are not read. Like Install it acts on
// the calling thread's network namespace.
func (s *Steering) Check() error {
	s.mu.Lock()
	removed := len(s.undo) == 0
	s.mu.Unlock()
	if removed {
		return ErrRemoved
	}
	c := &s.cfg
	link, err := netlink.LinkByName(c.TUN)
	if err != nil {
		return fmt.Errorf("steer: TUN %s is gone: %w", c.TUN, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("steer: TUN %s is down", c.TUN)
	}
	for _, v6 := range c.families() {
		family := netlink.FAMILY_V4
		if v6 {
			family = netlink.FAMILY_V6
		}
		if err := checkRule(c, family, v6); err != nil {
			return err
		}
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: c.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("steer: %s route list table %d: %w", ipCmd(v6), c.Table, err)
		}
		found := false
		for _, r := range routes {
			found = found || r.LinkIndex == link.Attrs().Index
		}
		if !found {
			return fmt.Errorf("steer: %s table %d has no route into %s", ipCmd(v6), c.Table, c.TUN)
		}
	}
	return nil
}

func checkRule(c *Config, family int, v6 bool) error {
	rules, err := netlink.RuleList(family)
	if err != nil {
		return fmt.Errorf("steer: %s rule list: %w", ipCmd(v6), err)
	}
	for _, r := range rules {
		if r.Priority == c.RulePriority && r.Mark == c.Mark && r.Table == c.Table && r.Mask != nil && *r.Mask == c.Mask {
			return nil
		}
	}
	return fmt.Errorf("steer: the steering rule is missing: %s rule priority %d fwmark %#x/%#x lookup %d", ipCmd(v6), c.RulePriority, c.Mark, c.Mask, c.Table)
}

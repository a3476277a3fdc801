package steer

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestCheck: Check passes while the steering is in place and names what
// went missing: the steering rule deleted by hand, the TUN down, all of
// it removed.
func TestCheck(t *testing.T) {
	l := newLab(t)
	l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	s := l.mustInstall(cfg)
	check := func() error { return inNS(l.appliance, s.Check) }
	if err := check(); err != nil {
		t.Fatalf("Check after Install: %v", err)
	}

	l.mustSh(l.applName, "ip", "-6", "rule", "del", "priority", fmt.Sprint(cfg.RulePriority))
	if err := check(); err == nil || !strings.Contains(err.Error(), "ip -6 rule") {
		t.Fatalf("Check without the IPv6 steering rule: %v", err)
	}
	// Remove retries what is gone without complaint; install again.
	if err := l.remove(s); err != nil {
		t.Fatal(err)
	}
	if err := check(); !errors.Is(err, ErrRemoved) {
		t.Fatalf("Check after Remove: %v, want ErrRemoved", err)
	}
	s = l.mustInstall(cfg)
	t.Cleanup(func() { l.remove(s) })
	if err := check(); err != nil {
		t.Fatalf("Check after the second Install: %v", err)
	}
	l.mustSh(l.applName, "ip", "link", "set", labTUN, "down")
	if err := check(); err == nil || !strings.Contains(err.Error(), "is down") {
		t.Fatalf("Check with the TUN down: %v", err)
	}
}

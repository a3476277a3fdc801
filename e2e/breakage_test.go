package e2e

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/netward/netward/e2e/lab"
	"github.com/netward/netward/e2e/lab/labtest"
)

// probe is a testing.TB that records failures instead of failing the
// test, so a check can be run where it must fail.
type probe struct {
	testing.TB
	mu     sync.Mutex
	failed bool
	msgs   []string
}

func (p *probe) fail(msg string) {
	p.mu.Lock()
	p.failed = true
	p.msgs = append(p.msgs, msg)
	p.mu.Unlock()
}
func (p *probe) Helper()                           {}
func (p *probe) Error(args ...any)                 { p.fail(fmt.Sprint(args...)) }
func (p *probe) Errorf(format string, args ...any) { p.fail(fmt.Sprintf(format, args...)) }
func (p *probe) Fatal(args ...any)                 { p.fail(fmt.Sprint(args...)); runtime.Goexit() }
func (p *probe) Fatalf(format string, args ...any) {
	p.fail(fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (p *probe) Failed() bool { return p.failed }

// mustFail runs check on its own goroutine (Fatal ends it) and fails t if
// the check passed, or failed for another reason than want.
func mustFail(t *testing.T, d *datapath, check func(testing.TB, *datapath), want string) {
	t.Helper()
	p := &probe{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		check(p, d)
	}()
	<-done
	if !p.failed {
		t.Fatalf("the check passed on a broken datapath")
	}
	all := strings.Join(p.msgs, "\n")
	if !strings.Contains(all, want) {
		t.Errorf("the check failed, but not with %q:\n%s", want, all)
	}
	t.Logf("failed as it must: %s", all)
}

// TestChecksDetectBreakage breaks the kernel datapath on purpose in ways
// netward could break and shows the checks notice: a check that cannot
// fail proves nothing.
func TestChecksDetectBreakage(t *testing.T) {
	d := newLab(t)
	l := d.lab
	labtest.RequireTools(t, "curl")

	t.Run("SourceAddressLost", func(t *testing.T) {
		// A relay that dialed from its own address looks like SNAT.
		labtest.Run(t, l.Appliance, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", l.ApplianceAppIf, "-j", "MASQUERADE")
		defer labtest.Run(t, l.Appliance, "iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-o", l.ApplianceAppIf, "-j", "MASQUERADE")
		mustFail(t, d, func(t testing.TB, d *datapath) { checkHTTP(t, d, "4", "") }, "application saw the client as 192.0.2.1")
	})
	t.Run("ClosedPortSilent", func(t *testing.T) {
		// A relay that dropped the SYN instead of resetting it.
		rule := []string{"INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP"}
		labtest.Run(t, l.App, append([]string{"iptables", "-w", "-A"}, rule...)...)
		defer labtest.Run(t, l.App, append([]string{"iptables", "-w", "-D"}, rule...)...)
		mustFail(t, d, checkClosedPort, "want refused in < 1 s")
	})
	t.Run("TrafficBypassesTUN", func(t *testing.T) {
		// netward "runs" (its TUN exists) but the kernel forwards: the
		// silently lost steering route of the datapath notes.
		labtest.Run(t, l.Appliance, "ip", "tuntap", "add", "dev", "nwfake0", "mode", "tun")
		labtest.Run(t, l.Appliance, "ip", "link", "set", "nwfake0", "up")
		defer labtest.Run(t, l.Appliance, "ip", "link", "del", "nwfake0")
		fake := &datapath{lab: l, app: d.app, nw: &lab.Netward{TUN: "nwfake0"}}
		mustFail(t, fake, func(t testing.TB, d *datapath) { checkHTTP(t, d, "4", "") }, "traffic did not cross netward")
	})
	t.Run("ServerFirstBlocked", func(t *testing.T) {
		// A relay that waits for client bytes before dialing upstream:
		// here, the banner is held back by dropping the server's data.
		rule := []string{"OUTPUT", "-p", "tcp", "--sport", "9002", "--tcp-flags", "PSH", "PSH", "-j", "DROP"}
		labtest.Run(t, l.App, append([]string{"iptables", "-w", "-A"}, rule...)...)
		defer labtest.Run(t, l.App, append([]string{"iptables", "-w", "-D"}, rule...)...)
		mustFail(t, d, checkBanner, "read banner (sent nothing")
	})
}

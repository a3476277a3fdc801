package steer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab: client ns — appliance ns — app ns, joined by veths.
//
//	client c0 198.51.100.2/24 2001:db8:1::2/64
//	   appliance a0 198.51.100.1/24 2001:db8:1::1/64   (forwarding on,
//	   appliance a1 192.0.2.1/24    2001:db8:2::1/64    rp_filter strict,
//	                                                    TUN labTUN)
//	app s0 192.0.2.2/24 2001:db8:2::2/64
var (
	clientV4    = netip.MustParseAddr("198.51.100.2")
	applianceC4 = netip.MustParseAddr("198.51.100.1")
	applianceA4 = netip.MustParseAddr("192.0.2.1")
	appV4       = netip.MustParseAddr("192.0.2.2")
	clientV6    = netip.MustParseAddr("2001:db8:1::2")
	applianceC6 = netip.MustParseAddr("2001:db8:1::1")
	applianceA6 = netip.MustParseAddr("2001:db8:2::1")
	appV6       = netip.MustParseAddr("2001:db8:2::2")
)

const labTUN = "nwt0"

var labSeq atomic.Int32

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, TUN, iptables); run as root")
	}
	for _, cmd := range []string{"iptables", "ip6tables", "ip"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("skipping: %s not installed", cmd)
		}
	}
}

// inNS runs f on a fresh OS thread switched into ns. Sockets, TUN fds,
// netlink calls, /proc/sys/net and processes started by f all belong to
// ns. If the thread cannot be switched back it is left locked, so the Go
// runtime discards it.
func inNS(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return // thread stays locked: discarded
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

type lab struct {
	t                      *testing.T
	name                   string // prefix of the namespace names
	client, appliance, app netns.NsHandle
	clientName, applName   string
	appName                string
}

var staleOnce sync.Once

// removeStaleLabs deletes the namespaces of earlier test processes that
// were killed before their t.Cleanup ran (nwst-<pid>-… with pid gone).
func removeStaleLabs(t *testing.T) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		var pid, n int
		var side string
		if c, _ := fmt.Sscanf(e.Name(), "nwst-%d-%d-%s", &pid, &n, &side); c != 3 || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			continue // still running (or not ours to judge)
		}
		if err := netns.DeleteNamed(e.Name()); err == nil {
			t.Logf("removed stale lab namespace %s", e.Name())
		}
	}
}

// newLab builds the three namespaces; everything is removed in t.Cleanup.
func newLab(t *testing.T) *lab {
	t.Helper()
	requireRoot(t)
	staleOnce.Do(func() { removeStaleLabs(t) })
	l := &lab{t: t, name: fmt.Sprintf("nwst-%d-%d", os.Getpid(), labSeq.Add(1))}
	l.clientName, l.applName, l.appName = l.name+"-c", l.name+"-a", l.name+"-s"
	l.client = l.newNS(l.clientName)
	l.appliance = l.newNS(l.applName)
	l.app = l.newNS(l.appName)

	l.veth(l.appliance, "a0", l.client, "c0")
	l.veth(l.appliance, "a1", l.app, "s0")
	l.must(inNS(l.client, func() error {
		return configure("c0", []string{"198.51.100.2/24", "2001:db8:1::2/64"}, []string{"198.51.100.1", "2001:db8:1::1"})
	}))
	l.must(inNS(l.app, func() error {
		return configure("s0", []string{"192.0.2.2/24", "2001:db8:2::2/64"}, []string{"192.0.2.1", "2001:db8:2::1"})
	}))
	l.must(inNS(l.appliance, func() error {
		// Forwarding on; rp_filter strict everywhere, including for devices
		// created later (the TUN), the hardest case for netward.
		for path, v := range map[string]int{
			"/proc/sys/net/ipv4/ip_forward":                  1,
			"/proc/sys/net/ipv6/conf/all/forwarding":         1,
			"/proc/sys/net/ipv4/conf/all/rp_filter":          1,
			"/proc/sys/net/ipv4/conf/default/rp_filter":      1,
			"/proc/sys/net/ipv4/conf/default/accept_local":   0,
			"/proc/sys/net/ipv4/conf/default/route_localnet": 0,
		} {
			if err := writeInt(path, v); err != nil {
				return err
			}
		}
		if err := configure("a0", []string{"198.51.100.1/24", "2001:db8:1::1/64"}, nil); err != nil {
			return err
		}
		return configure("a1", []string{"192.0.2.1/24", "2001:db8:2::1/64"}, nil)
	}))
	// IPv6 link-local addresses appear after the link is up; wait for them,
	// or they would show up as a difference between two state snapshots.
	for _, w := range []struct {
		ns  netns.NsHandle
		dev string
	}{{l.client, "c0"}, {l.appliance, "a0"}, {l.appliance, "a1"}, {l.app, "s0"}} {
		l.must(inNS(w.ns, func() error { return waitLinkLocal(w.dev) }))
	}
	return l
}

func waitLinkLocal(dev string) error {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return nil
			}
		}
	}
	return fmt.Errorf("%s: no IPv6 link-local address after 5s", dev)
}

func (l *lab) must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) newNS(name string) netns.NsHandle {
	l.t.Helper()
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		l.t.Fatalf("create netns %s: %v", name, err)
	}
	l.t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			l.t.Errorf("delete netns %s: %v", name, err)
		}
	})
	if err := inNS(h, func() error {
		// No duplicate address detection: addresses are usable at once.
		for _, p := range []string{"/proc/sys/net/ipv6/conf/default/accept_dad", "/proc/sys/net/ipv6/conf/all/accept_dad"} {
			if err := writeInt(p, 0); err != nil {
				return err
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		l.t.Fatal(err)
	}
	return h
}

func (l *lab) veth(ns netns.NsHandle, name string, peerNS netns.NsHandle, peer string) {
	l.t.Helper()
	l.must(inNS(ns, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(peerNS)}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("veth %s/%s: %w", name, peer, err)
		}
		return nil
	}))
}

// configure puts addresses on dev (no DAD), sets it up, and adds default
// routes via gws. Runs in the target namespace.
func configure(dev string, addrs, gws []string) error {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return err
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("addr %s on %s: %w", a, dev, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	for _, gw := range gws {
		ip := net.ParseIP(gw)
		if err := netlink.RouteAdd(&netlink.Route{Gw: ip, LinkIndex: link.Attrs().Index}); err != nil {
			return fmt.Errorf("default via %s: %w", gw, err)
		}
	}
	return nil
}

// sh runs a command inside a lab namespace (ip netns exec) and returns its
// stdout.
func (l *lab) sh(ns string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return string(out), fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

func (l *lab) mustSh(ns string, args ...string) string {
	l.t.Helper()
	out, err := l.sh(ns, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

// install runs Install in the appliance namespace.
func (l *lab) install(cfg Config) (*Steering, error) {
	var s *Steering
	err := inNS(l.appliance, func() (err error) {
		s, err = Install(cfg)
		return err
	})
	return s, err
}

func (l *lab) mustInstall(cfg Config) *Steering {
	l.t.Helper()
	s, err := l.install(cfg)
	if err != nil {
		l.t.Fatalf("Install: %v", err)
	}
	return s
}

func (l *lab) remove(s *Steering) error {
	return inNS(l.appliance, s.Remove)
}

func (l *lab) cleanup(cfg Config) ([]string, error) {
	var removed []string
	err := inNS(l.appliance, func() (err error) {
		removed, err = Cleanup(cfg)
		return err
	})
	return removed, err
}

// labConfig is DefaultConfig with the lab's TUN and a debug logger to the
// test log.
func (l *lab) config() Config {
	c := DefaultConfig()
	c.TUN = labTUN
	c.Logger = testLogger(l.t)
	return c
}

// dial connects from ns to dst with a timeout.
func dial(ns netns.NsHandle, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	})
	return c, err
}

// listen opens a TCP listener in ns; closed in t.Cleanup.
func (l *lab) listen(ns netns.NsHandle, addr netip.AddrPort) net.Listener {
	l.t.Helper()
	var ln net.Listener
	l.must(inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}))
	l.t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptWithin accepts one connection or fails after d.
func acceptWithin(ln net.Listener, d time.Duration) (net.Conn, error) {
	tl := ln.(*net.TCPListener)
	if err := tl.SetDeadline(time.Now().Add(d)); err != nil {
		return nil, err
	}
	return tl.Accept()
}

// netstatCounter reads one TcpExt/IpExt counter in ns. /proc/net is the
// thread group leader's namespace; /proc/thread-self/net is this thread's.
func netstatCounter(ns netns.NsHandle, name string) (int64, error) {
	var v int64 = -1
	err := inNS(ns, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for j := 1; j < len(keys) && j < len(vals); j++ {
				if keys[j] == name {
					_, err := fmt.Sscan(vals[j], &v)
					return err
				}
			}
		}
		return fmt.Errorf("counter %s not in netstat", name)
	})
	return v, err
}

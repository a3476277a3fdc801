package steer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// family is one IP version's addresses in the lab.
type family struct {
	name                string
	v6                  bool
	client, app         netip.Addr
	applC, applA        netip.Addr // the appliance's addresses towards client and app
	iptables, icmpProto string
}

var families = []family{
	{name: "v4", client: clientV4, app: appV4, applC: applianceC4, applA: applianceA4, iptables: "iptables"},
	{name: "v6", v6: true, client: clientV6, app: appV6, applC: applianceC6, applA: applianceA6, iptables: "ip6tables"},
}

func (f family) icmp(p *pkt) bool {
	return (p.proto == unix.IPPROTO_ICMP || p.proto == unix.IPPROTO_ICMPV6) && p.src == f.client
}

const wait = 3 * time.Second

// statefulFirewall adds what a typical stateful appliance firewall has and
// what broke the prototype: INVALID packets dropped in FORWARD, and an
// rpfilter match in raw PREROUTING (as firewalld adds).
func (l *lab) statefulFirewall() {
	l.t.Helper()
	for _, cmd := range []string{"iptables", "ip6tables"} {
		l.mustSh(l.applName, cmd, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
		l.mustSh(l.applName, cmd, "-t", "raw", "-A", "PREROUTING", "-m", "rpfilter", "--invert", "-j", "DROP")
	}
}

// dropCounters returns the packet counts of the firewall's DROP rules.
func (l *lab) dropCounters() string {
	l.t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, tc := range [][2]string{{"filter", "FORWARD"}, {"raw", "PREROUTING"}} {
			out := l.mustSh(l.applName, cmd, "-t", tc[0], "-L", tc[1], "-n", "-v", "-x")
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) > 2 && f[2] == "DROP" {
					fmt.Fprintf(&b, "%s %s %s: %s packets\n", cmd, tc[0], strings.Join(f[3:], " "), f[0])
				}
			}
		}
	}
	return b.String()
}

// TestSteering is the main datapath test: with a stateful firewall and
// strict rp_filter, forwarded TCP is steered into the TUN, both legs that
// gVisor would write back are forwarded (no loop, no conntrack merge, no
// rp_filter drop), and ICMP, TCP to the appliance and the appliance's own
// TCP are left alone. Remove then leaves the state exactly as before.
func TestSteering(t *testing.T) {
	l := newLab(t)
	l.statefulFirewall()
	tun := l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	before := l.state(stateOpts{tunSysctls: true})

	s := l.mustInstall(cfg)
	t.Logf("installed:\n%s", strings.Join(s.Installed(), "\n"))

	// Local listener on the appliance (ssh-like), dual stack.
	local := l.listen(l.appliance, netip.MustParseAddrPort("[::]:2222"))
	go func() {
		for {
			c, err := local.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			t.Run("both legs", func(t *testing.T) { testBothLegs(t, l, tun, f, 8080) })
			t.Run("icmp not steered", func(t *testing.T) {
				if _, err := l.sh(l.clientName, "ping", "-c", "1", "-W", "2", f.app.String()); err != nil {
					t.Fatalf("ping %v through the appliance: %v", f.app, err)
				}
				if err := tun.none(200*time.Millisecond, f.icmp); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("tcp to the appliance not steered", func(t *testing.T) {
				for _, a := range []netip.Addr{f.applC, f.applA} {
					c, err := dial(l.client, netip.AddrPortFrom(a, 2222), wait)
					if err != nil {
						t.Fatalf("client to appliance %v: %v", a, err)
					}
					c.Close()
				}
				if err := tun.none(200*time.Millisecond, func(p *pkt) bool { return p.proto == unix.IPPROTO_TCP && p.dport == 2222 }); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("appliance's own tcp not steered", func(t *testing.T) {
				ln := l.listen(l.app, netip.AddrPortFrom(f.app, 8081))
				c, err := dial(l.appliance, netip.AddrPortFrom(f.app, 8081), wait)
				if err != nil {
					t.Fatalf("appliance to app: %v", err)
				}
				c.Close()
				ac, err := acceptWithin(ln, wait)
				if err != nil {
					t.Fatalf("app accept: %v", err)
				}
				ac.Close()
				if err := tun.none(200*time.Millisecond, func(p *pkt) bool {
					return p.proto == unix.IPPROTO_TCP && (p.dport == 8081 || p.sport == 8081)
				}); err != nil {
					t.Fatal(err)
				}
			})
		})
	}

	// Nothing netward steers may be dropped by the firewall or rp_filter.
	drops := l.dropCounters()
	for _, line := range strings.Split(strings.TrimSpace(drops), "\n") {
		if !strings.HasSuffix(line, ": 0 packets") {
			t.Errorf("firewall dropped packets:\n%s", drops)
			break
		}
	}
	if n, err := netstatCounter(l.appliance, "IPReversePathFilter"); err != nil || n != 0 {
		t.Errorf("TcpExtIPReversePathFilter = %d, %v; want 0", n, err)
	}
	// Steered flows are untracked: conntrack never saw (and so never merged)
	// the two legs.
	for _, fam := range []string{"ipv4", "ipv6"} {
		out, err := l.sh(l.applName, "conntrack", "-L", "-f", fam, "-p", "tcp", "--dport", "8080")
		if err != nil {
			t.Fatalf("conntrack -L: %v", err)
		}
		if strings.TrimSpace(out) != "" {
			t.Errorf("conntrack tracked a steered flow:\n%s", out)
		}
	}

	if err := l.remove(s); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	requireClean(t, "after Remove", before, l.state(stateOpts{tunSysctls: true}), cfg)
	if err := l.remove(s); err != nil {
		t.Errorf("second Remove: %v", err)
	}

	// Plain kernel forwarding again.
	for _, f := range families {
		expectForwarded(t, l, f, 8082)
	}
}

// testBothLegs plays gVisor: it reads the client's SYN from the TUN, opens
// the upstream leg to the app with the same 5-tuple and its own sequence
// numbers, and completes the client's handshake, all through the TUN.
func testBothLegs(t *testing.T, l *lab, tun *testTUN, f family, port uint16) {
	server := netip.AddrPortFrom(f.app, port)
	ln := l.listen(l.app, server)
	type dialed struct {
		c   net.Conn
		err error
	}
	dialc := make(chan dialed, 1)
	go func() {
		c, err := dial(l.client, server, 2*wait)
		dialc <- dialed{c, err}
	}()

	syn, _, err := tun.expect(wait, func(p *pkt) bool {
		return p.isTCP(tcpSYN) && p.src == f.client && p.dst == f.app && p.dport == port
	})
	if err != nil {
		t.Fatalf("client SYN not steered into the TUN: %v", err)
	}
	client := netip.AddrPortFrom(f.client, syn.sport)

	// Upstream leg: same 5-tuple as the client's, another ISN.
	const upISN, downISN = 1_000_000, 3_000_000
	if err := tun.write(tcpPacket(client, server, upISN, 0, tcpSYN, nil)); err != nil {
		t.Fatal(err)
	}
	synack, seen, err := tun.expect(wait, func(p *pkt) bool {
		return p.isTCP(tcpSYN|tcpACK) && p.src == f.app && p.dst == f.client && p.dport == syn.sport && p.ack == upISN+1
	})
	if err != nil {
		t.Fatalf("SYN written into the TUN did not reach the app, or its SYN-ACK was not steered back: %v", err)
	}
	for _, p := range seen {
		if p.src == f.client && p.seq == upISN {
			t.Fatalf("loop: the SYN written into the TUN came back out of it: %v", p)
		}
	}
	if err := tun.write(tcpPacket(client, server, upISN+1, synack.seq+1, tcpACK, nil)); err != nil {
		t.Fatal(err)
	}
	ac, err := acceptWithin(ln, wait)
	if err != nil {
		t.Fatalf("app did not accept the upstream leg: %v", err)
	}
	defer ac.Close()
	if got := netip.MustParseAddrPort(ac.RemoteAddr().String()); got.Addr().Unmap() != client.Addr() || got.Port() != client.Port() {
		t.Errorf("app sees peer %v, want the client %v", got, client)
	}

	// Client leg: gVisor answers the client's SYN.
	if err := tun.write(tcpPacket(server, client, downISN, syn.seq+1, tcpSYN|tcpACK, nil)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tun.expect(wait, func(p *pkt) bool {
		return p.isTCP(tcpACK) && p.src == f.client && p.sport == syn.sport && p.ack == downISN+1
	}); err != nil {
		t.Fatalf("client's ACK of the TUN's SYN-ACK not steered: %v", err)
	}
	d := <-dialc
	if d.err != nil {
		t.Fatalf("client connect through the TUN: %v", d.err)
	}
	defer d.c.Close()

	// Data on both legs, both ways.
	if _, err := d.c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tun.expect(wait, func(p *pkt) bool {
		return p.src == f.client && p.sport == syn.sport && string(p.payload) == "ping"
	}); err != nil {
		t.Fatalf("client data not steered: %v", err)
	}
	if err := tun.write(tcpPacket(client, server, upISN+1, synack.seq+1, tcpACK|tcpPSH, []byte("ping"))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	ac.SetReadDeadline(time.Now().Add(wait))
	if _, err := ac.Read(buf); err != nil || string(buf) != "ping" {
		t.Fatalf("app read %q, %v; want ping", buf, err)
	}
	if err := tun.write(tcpPacket(server, client, downISN+1, syn.seq+1+4, tcpACK|tcpPSH, []byte("pong"))); err != nil {
		t.Fatal(err)
	}
	d.c.SetReadDeadline(time.Now().Add(wait))
	if _, err := d.c.Read(buf); err != nil || string(buf) != "pong" {
		t.Fatalf("client read %q, %v; want pong", buf, err)
	}
}

// expectForwarded checks that client → app TCP works by plain forwarding.
func expectForwarded(t *testing.T, l *lab, f family, port uint16) {
	t.Helper()
	ln := l.listen(l.app, netip.AddrPortFrom(f.app, port))
	c, err := dial(l.client, netip.AddrPortFrom(f.app, port), wait)
	if err != nil {
		t.Fatalf("%s: client to app by plain forwarding: %v", f.name, err)
	}
	defer c.Close()
	ac, err := acceptWithin(ln, wait)
	if err != nil {
		t.Fatalf("%s: app accept: %v", f.name, err)
	}
	ac.Close()
}

// TestCleanupAfterCrash: a netward killed with -9 leaves its rules; its
// TUN vanishes with the process. Cleanup removes the rest, and finds nothing
// the second time.
func TestCleanupAfterCrash(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	cfg.FailMode = FailClosed // the most objects
	before := l.state(stateOpts{})
	tun := l.openTUN(l.appliance, labTUN, false)
	l.mustInstall(cfg)
	if err := tun.close(); err != nil { // kill -9: the kernel closes the fd
		t.Fatal(err)
	}
	removed, err := l.cleanup(cfg)
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	t.Logf("removed:\n%s", strings.Join(removed, "\n"))
	for _, want := range []string{"ip rule del priority 20055 fwmark 0x4e57/0xffff lookup 20055", "ip -6 rule del", "iptables -t mangle -X NETWARD", "iptables -t raw -X NETWARD_RAW", "ip6tables -t mangle -D PREROUTING -j NETWARD", "ip route del prohibit default table 20055", "ip -6 route del prohibit default table 20055"} {
		if !containsPrefix(removed, want) {
			t.Errorf("Cleanup did not report %q", want)
		}
	}
	requireClean(t, "after Cleanup", before, l.state(stateOpts{}), cfg)

	removed, err = l.cleanup(cfg)
	if err != nil || len(removed) != 0 {
		t.Errorf("second Cleanup = %v, %v; want nothing, nil", removed, err)
	}
	for _, f := range families {
		expectForwarded(t, l, f, 8083)
	}
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// TestCleanupPersistentTUN: a TUN that outlived the process is deleted;
// one a process holds open is not, and then nothing is removed.
func TestCleanupPersistentTUN(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	before := l.state(stateOpts{})
	tun := l.openTUN(l.appliance, labTUN, true)
	l.mustInstall(cfg)

	_, err := l.cleanup(cfg)
	if !errors.Is(err, ErrTUNInUse) {
		t.Fatalf("Cleanup with the TUN open = %v; want ErrTUNInUse", err)
	}
	if tr := netwardTraces(l.state(stateOpts{}), cfg); len(tr) == 0 {
		t.Fatal("Cleanup removed a running netward's rules")
	}
	tun.close()
	removed, err := l.cleanup(cfg)
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if !containsPrefix(removed, "ip link del "+labTUN) {
		t.Errorf("Cleanup did not delete the persistent TUN: %v", removed)
	}
	if err := inNS(l.appliance, func() error {
		_, err := netlink.LinkByName(labTUN)
		return err
	}); err == nil {
		t.Error("TUN still there after Cleanup")
	}
	requireClean(t, "after Cleanup", before, l.state(stateOpts{}), cfg)
}

// TestFailOpen: netward killed → the TUN and its routes vanish, the ip rule
// finds an empty table and falls through to main; the notrack and mark
// rules left behind do not hurt, even with the INVALID DROP rule.
func TestFailOpen(t *testing.T) {
	l := newLab(t)
	l.statefulFirewall()
	tun := l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	s := l.mustInstall(cfg)
	tun.close()
	for _, f := range families {
		expectForwarded(t, l, f, 9000)
	}
	if out := l.mustSh(l.applName, "ip", "rule"); !strings.Contains(out, "lookup 20055") {
		t.Fatalf("the ip rule should still be there (this tests the fall-through):\n%s", out)
	}
	// Remove after the TUN has gone (netstack closed it first) still
	// removes the rest and reports no error for what went with the TUN.
	if err := l.remove(s); err != nil {
		t.Fatalf("Remove after the TUN vanished: %v", err)
	}
	if tr := netwardTraces(l.state(stateOpts{}), cfg); len(tr) > 0 {
		t.Errorf("left after Remove:\n%s", strings.Join(tr, "\n"))
	}
}

// TestFailClosed: while the TUN exists its route wins over the prohibit
// route; once it vanishes, steered TCP is refused at once (ICMP
// administratively prohibited), until Cleanup.
func TestFailClosed(t *testing.T) {
	l := newLab(t)
	l.statefulFirewall()
	tun := l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	cfg.FailMode = FailClosed
	l.mustInstall(cfg)
	for _, f := range families {
		go func() {
			if c, err := dial(l.client, netip.AddrPortFrom(f.app, 9100), time.Second); err == nil {
				c.Close()
			}
		}()
		if _, _, err := tun.expect(wait, func(p *pkt) bool { return p.isTCP(tcpSYN) && p.src == f.client && p.dport == 9100 }); err != nil {
			t.Fatalf("%s: SYN not steered while the TUN is up: %v", f.name, err)
		}
	}
	tun.close()
	for _, f := range families {
		l.listen(l.app, netip.AddrPortFrom(f.app, 9101))
		start := time.Now()
		c, err := dial(l.client, netip.AddrPortFrom(f.app, 9101), wait)
		if err == nil {
			c.Close()
			t.Fatalf("%s: fail closed, yet the client reached the app", f.name)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: connect timed out; want a prompt refusal (prohibit route)", f.name)
		}
		t.Logf("%s: refused after %v: %v", f.name, time.Since(start).Round(time.Millisecond), err)
	}
	if _, err := l.cleanup(cfg); err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		expectForwarded(t, l, f, 9102)
	}
}

// TestInstallIdempotent: Install over the leftovers of a run that was not
// removed yields the same objects once, and one Remove clears them.
func TestInstallIdempotent(t *testing.T) {
	l := newLab(t)
	l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	// The TUN's sysctls are left out: the second run finds them already set
	// by the first and, rightly, restores nothing on the same device.
	before := l.state(stateOpts{})
	l.mustInstall(cfg)
	first := l.state(stateOpts{})
	s := l.mustInstall(cfg)
	if second := l.state(stateOpts{}); second != first {
		t.Errorf("second Install differs from the first.\nfirst:\n%s\nsecond:\n%s", first, second)
	}
	if err := l.remove(s); err != nil {
		t.Fatal(err)
	}
	requireClean(t, "after Remove", before, l.state(stateOpts{}), cfg)
}

// TestInstallRollback: a failure late in Install (ip6tables refuses the
// mangle chain) removes everything done before it and restores sysctls.
func TestInstallRollback(t *testing.T) {
	l := newLab(t)
	l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	before := l.state(stateOpts{tunSysctls: true})

	dir := t.TempDir()
	real6, err := findCommand("ip6tables")
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
m=; n=
for a in "$@"; do [ "$a" = mangle ] && m=1; [ "$a" = -N ] && n=1; done
if [ -n "$m" ] && [ -n "$n" ]; then echo "ip6tables: injected failure" >&2; exit 4; fi
exec %s "$@"
`, real6)
	if err := os.WriteFile(filepath.Join(dir, "ip6tables"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))

	_, err = l.install(cfg)
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Install = %v; want the injected ip6tables failure", err)
	}
	t.Logf("Install error: %v", err)
	requireClean(t, "after failed Install", before, l.state(stateOpts{tunSysctls: true}), cfg)
}

func findCommand(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in PATH", name)
}

// TestInstallWithoutTUN: Install refuses clearly and leaves nothing.
func TestInstallWithoutTUN(t *testing.T) {
	l := newLab(t)
	cfg := l.config()
	before := l.state(stateOpts{})
	_, err := l.install(cfg)
	if !errors.Is(err, ErrInterfaceNotFound) {
		t.Fatalf("Install without TUN = %v; want ErrInterfaceNotFound", err)
	}
	requireClean(t, "after failed Install", before, l.state(stateOpts{}), cfg)
}

// TestExplicitInterfaces pins down what Interfaces means: TCP arriving on
// a listed interface is steered, TCP arriving elsewhere is not, whichever
// direction of a connection it is (the rules are stateless). So a flow is
// steered whole only when both its directions arrive on listed interfaces;
// see the package documentation.
func TestExplicitInterfaces(t *testing.T) {
	l := newLab(t)
	tun := l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	cfg.Interfaces = []string{"a0"}
	s := l.mustInstall(cfg)
	defer l.remove(s)
	for _, f := range families {
		// From the client (arrives on a0): steered.
		go func() {
			if c, err := dial(l.client, netip.AddrPortFrom(f.app, 9200), time.Second); err == nil {
				c.Close()
			}
		}()
		if _, _, err := tun.expect(wait, func(p *pkt) bool { return p.isTCP(tcpSYN) && p.src == f.client && p.dport == 9200 }); err != nil {
			t.Fatalf("%s: SYN on a0 not steered: %v", f.name, err)
		}
		// From the app (arrives on a1): the SYN is forwarded by the kernel;
		// the client's SYN-ACK arrives on a0 and is steered.
		l.listen(l.client, netip.AddrPortFrom(f.client, 9201))
		go func() {
			if c, err := dial(l.app, netip.AddrPortFrom(f.client, 9201), time.Second); err == nil {
				c.Close()
			}
		}()
		_, seen, err := tun.expect(wait, func(p *pkt) bool { return p.isTCP(tcpSYN|tcpACK) && p.src == f.client && p.sport == 9201 })
		if err != nil {
			t.Fatalf("%s: client's SYN-ACK (arriving on a0) not steered: %v", f.name, err)
		}
		for _, p := range seen {
			if p.src == f.app && p.dport == 9201 {
				t.Fatalf("%s: TCP arriving on a1 was steered: %v", f.name, p)
			}
		}
	}
}

// TestFragments: fragmented TCP keeps plain forwarding when conntrack is
// off; with conntrack on, the kernel reassembles before netward's chains
// and the whole packet is steered. Either way all fragments take one path.
func TestFragments(t *testing.T) {
	l := newLab(t)
	tun := l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	// UDP steering's connmark rules turn conntrack on in the namespace
	// (and with it reassembly before the raw table): the "conntrack off"
	// case needs TCP steering alone. The "on" case below covers UDP's.
	cfg.UDP = false
	s := l.mustInstall(cfg)
	defer l.remove(s)

	send := func(f family, sport uint16, seq uint32) {
		t.Helper()
		// Data on the SYN makes the segment long enough for two fragments
		// whose first holds the whole TCP header (IPv6 drops a first
		// fragment without it, RFC 7112).
		pkt := tcpPacket(netip.AddrPortFrom(f.client, sport), netip.AddrPortFrom(f.app, 9300), seq, 0, tcpSYN, []byte("0123456789abcdef"))
		frags := fragments(pkt, 24, seq)
		l.must(inNS(l.client, func() error {
			domain := unix.AF_INET6
			var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: f.app.As16()}
			if !f.v6 {
				domain = unix.AF_INET
				sa = &unix.SockaddrInet4{Addr: f.app.As4()}
			}
			fd, err := unix.Socket(domain, unix.SOCK_RAW, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			for _, fr := range frags {
				if err := unix.Sendto(fd, fr, 0, sa); err != nil {
					return fmt.Errorf("send fragment: %w", err)
				}
			}
			return nil
		}))
	}
	for _, f := range families {
		l.listen(l.app, netip.AddrPortFrom(f.app, 9300))
	}

	t.Run("conntrack off", func(t *testing.T) {
		for _, f := range families {
			const seq = 5_000_000
			send(f, 41000, seq)
			// The app got the SYN by plain forwarding: its SYN-ACK (whole,
			// arriving on a1) is steered; the fragments never are.
			_, seen, err := tun.expect(wait, func(p *pkt) bool {
				return p.isTCP(tcpSYN|tcpACK) && p.src == f.app && p.dport == 41000 && p.ack == seq+1
			})
			if err != nil {
				t.Fatalf("%s: fragmented SYN did not reach the app: %v", f.name, err)
			}
			for _, p := range seen {
				if p.src == f.client {
					t.Fatalf("%s: fragment of the client's SYN steered: %v", f.name, p)
				}
			}
		}
	})
	t.Run("conntrack on", func(t *testing.T) {
		for _, cmd := range []string{"iptables", "ip6tables"} {
			l.mustSh(l.applName, cmd, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
		}
		for _, f := range families {
			const seq = 6_000_000
			send(f, 42000, seq)
			// Reassembled for the decision; on the way out the kernel splits
			// it again into the original fragments (frag_max_size), which
			// gVisor reassembles.
			if _, _, err := tun.expect(wait, func(p *pkt) bool {
				return p.src == f.client && p.proto == unix.IPPROTO_TCP && (p.frag || p.sport == 42000 && p.seq == seq)
			}); err != nil {
				t.Fatalf("%s: reassembled SYN not steered: %v", f.name, err)
			}
		}
	})
}

// TestLegacyBackend runs install, steering, remove and crash cleanup with
// iptables-legacy instead of iptables-nft.
func TestLegacyBackend(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	for link, target := range map[string]string{
		"iptables": "iptables-legacy", "ip6tables": "ip6tables-legacy",
		"iptables-save": "iptables-legacy-save", "ip6tables-save": "ip6tables-legacy-save",
	} {
		p, err := findCommand(target)
		if err != nil {
			t.Skipf("skipping: %v", err)
		}
		if err := os.Symlink(p, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	if out, err := exec.Command("iptables", "-V").CombinedOutput(); err != nil || !strings.Contains(string(out), "legacy") {
		t.Fatalf("iptables -V = %q, %v; want the legacy backend", out, err)
	}

	l := newLab(t)
	l.statefulFirewall()
	tun := l.openTUN(l.appliance, labTUN, false)
	cfg := l.config()
	before := l.state(stateOpts{tunSysctls: true})
	s := l.mustInstall(cfg)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) { testBothLegs(t, l, tun, f, 8090) })
	}
	if err := l.remove(s); err != nil {
		t.Fatal(err)
	}
	requireClean(t, "after Remove", before, l.state(stateOpts{tunSysctls: true}), cfg)

	l.mustInstall(cfg)
	tun.close()
	if _, err := l.cleanup(cfg); err != nil {
		t.Fatal(err)
	}
	if tr := netwardTraces(l.state(stateOpts{}), cfg); len(tr) > 0 {
		t.Errorf("left after Cleanup:\n%s", strings.Join(tr, "\n"))
	}
}

package datagram

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netward/netward/policy"
)

// fakeOut records what the guard writes back into the TUN.
type fakeOut struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (o *fakeOut) WriteDatagram(b []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pkts = append(o.pkts, append([]byte(nil), b...))
	return nil
}

func (o *fakeOut) take() [][]byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.pkts
	o.pkts = nil
	return p
}

// fakeBypass records the flows handed to the kernel.
type fakeBypass struct {
	mu    sync.Mutex
	flows []string
	alive bool
}

func (b *fakeBypass) Bypass(c, s netip.AddrPort, quic bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	kind := "all"
	if quic {
		kind = "quic"
	}
	b.flows = append(b.flows, c.String()+">"+s.String()+" "+kind)
	return nil
}

func (b *fakeBypass) Alive(c, s netip.AddrPort) (bool, error) { return b.alive, nil }

const testRules = `
default: allow
rules:
  - name: no-ads
    action: deny
    dns: .ads.example
    dns_answer: refused
  - name: no-tracker
    action: deny
    domain: tracker.example
  - name: silent-dns
    action: drop
    dns: silent.example
  - name: no-udp-9999
    action: deny
    proto: udp
    dst_port: 9999
  - name: drop-udp-9998
    action: drop
    proto: udp
    dst_port: 9998
  - name: tcp-only-7000
    action: deny
    proto: tcp
    dst_port: 7000
`

func newTestGuard(t *testing.T, rulesText string) (*Guard, *fakeOut, *fakeBypass) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(rulesText), 0o644); err != nil {
		t.Fatal(err)
	}
	eng, err := policy.New(policy.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	out, bp := &fakeOut{}, &fakeBypass{}
	g := &Guard{Policy: eng, Out: out, Bypass: bp}
	g.Start()
	t.Cleanup(g.Close)
	return g, out, bp
}

var (
	cli4 = netip.MustParseAddrPort("198.51.100.2:40000")
	srv4 = netip.MustParseAddrPort("192.0.2.2:53")
	cli6 = netip.MustParseAddrPort("[2001:db8:1::2]:40000")
	srv6 = netip.MustParseAddrPort("[2001:db8:2::2]:53")
)

func query(t *testing.T, id uint16, name string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	m, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// validUDP checks a packet netward wrote: whole, checksums right.
func validUDP(t *testing.T, b []byte) packet {
	t.Helper()
	var p packet
	if err := parsePacket(b, &p); err != nil {
		t.Fatalf("written packet does not parse: %v", err)
	}
	off := len(p.raw) - len(p.payload) - header.UDPMinimumSize
	seg := p.raw[off:]
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, addr(p.src.Addr()), addr(p.dst.Addr()), uint16(len(seg)))
	if checksum.Checksum(seg, xsum) != 0xffff {
		t.Fatalf("written packet %v→%v has a bad UDP checksum", p.src, p.dst)
	}
	if !p.v6 && !header.IPv4(p.raw).IsChecksumValid() {
		t.Fatalf("written packet has a bad IPv4 header checksum")
	}
	return p
}

func TestDNSQueriesJudgedOneByOne(t *testing.T) {
	for _, fam := range []struct {
		name     string
		cli, srv netip.AddrPort
	}{{"IPv4", cli4, srv4}, {"IPv6", cli6, srv6}} {
		t.Run(fam.name, func(t *testing.T) {
			g, out, bp := newTestGuard(t, testRules)
			send := func(id uint16, name string) {
				g.HandleDatagram(appendUDP(nil, fam.cli, fam.srv, query(t, id, name)))
			}
			// Allowed: the query goes on unchanged.
			send(1, "www.example.")
			pk := out.take()
			if len(pk) != 1 {
				t.Fatalf("allowed query: %d packets written, want 1", len(pk))
			}
			if p := validUDP(t, pk[0]); p.src != fam.cli || p.dst != fam.srv {
				t.Fatalf("allowed query went %v→%v", p.src, p.dst)
			}
			// Denied on the same flow: an answer from the server's
			// address, REFUSED as the rule says, nothing to the server.
			send(2, "x.Ads.Example.")
			pk = out.take()
			if len(pk) != 1 {
				t.Fatalf("denied query: %d packets written, want 1 (the answer)", len(pk))
			}
			p := validUDP(t, pk[0])
			if p.src != fam.srv || p.dst != fam.cli {
				t.Fatalf("answer went %v→%v, want from the server to the client", p.src, p.dst)
			}
			var m dnsmessage.Message
			if err := m.Unpack(p.payload); err != nil {
				t.Fatal(err)
			}
			if m.ID != 2 || !m.Response || m.RCode != dnsmessage.RCodeRefused || len(m.Questions) != 1 ||
				m.Questions[0].Name.String() != "x.Ads.Example." {
				t.Fatalf("answer = %+v", m.Header)
			}
			// domain: covers DNS names; the default answer is NXDOMAIN.
			send(3, "tracker.example.")
			pk = out.take()
			if len(pk) != 1 {
				t.Fatalf("domain-denied query: %d packets", len(pk))
			}
			validUDP(t, pk[0])
			m = dnsmessage.Message{}
			p = validUDP(t, pk[0])
			if err := m.Unpack(p.payload); err != nil || m.RCode != dnsmessage.RCodeNameError {
				t.Fatalf("domain-denied answer rcode %v (err %v), want NXDOMAIN", m.RCode, err)
			}
			// Dropped: nothing at all.
			send(4, "silent.example.")
			if pk := out.take(); len(pk) != 0 {
				t.Fatalf("dropped query: %d packets written", len(pk))
			}
			// Not a query: on_invalid (deny) keeps it from the server.
			g.HandleDatagram(appendUDP(nil, fam.cli, fam.srv, []byte("\x00\x05garbage")))
			if pk := out.take(); len(pk) != 0 {
				t.Fatalf("garbage on a DNS flow: %d packets written", len(pk))
			}
			// The server's answers go back; DNS is never bypassed.
			g.HandleDatagram(appendUDP(nil, fam.srv, fam.cli, query(t, 1, "www.example.")))
			if pk := out.take(); len(pk) != 1 {
				t.Fatalf("server answer: %d packets", len(pk))
			}
			if len(bp.flows) != 0 {
				t.Fatalf("DNS flow bypassed: %v", bp.flows)
			}
			s := g.Stats()
			if s.Answered.Load() != 2 || s.Refused.Load() != 3 || s.Invalid.Load() != 1 {
				t.Fatalf("stats answered %d refused %d invalid %d", s.Answered.Load(), s.Refused.Load(), s.Invalid.Load())
			}
		})
	}
}

func TestPlainUDP(t *testing.T) {
	g, out, bp := newTestGuard(t, testRules)
	srv := netip.MustParseAddrPort("192.0.2.2:5001")
	// Allowed: forwarded and handed to the kernel (every datagram but QUIC
	// long headers).
	g.HandleDatagram(appendUDP(nil, cli4, srv, []byte("hello")))
	if pk := out.take(); len(pk) != 1 {
		t.Fatalf("allowed: %d packets", len(pk))
	}
	if len(bp.flows) != 1 || bp.flows[0] != cli4.String()+">"+srv.String()+" all" {
		t.Fatalf("bypass = %v", bp.flows)
	}
	// A rule with proto: tcp does not apply to UDP.
	tcpOnly := netip.MustParseAddrPort("192.0.2.2:7000")
	g.HandleDatagram(appendUDP(nil, cli4, tcpOnly, []byte("x")))
	if pk := out.take(); len(pk) != 1 {
		t.Fatalf("proto: tcp rule applied to UDP (%d packets)", len(pk))
	}
	// deny: ICMP port unreachable from the server, nothing to it.
	denied := netip.MustParseAddrPort("192.0.2.2:9999")
	dgram := appendUDP(nil, cli4, denied, []byte("secret"))
	g.HandleDatagram(dgram)
	pk := out.take()
	if len(pk) != 1 {
		t.Fatalf("denied: %d packets, want the ICMP error only", len(pk))
	}
	ip := header.IPv4(pk[0])
	icmp := header.ICMPv4(ip.Payload())
	if ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || icmp.Type() != header.ICMPv4DstUnreachable ||
		icmp.Code() != header.ICMPv4PortUnreachable || ip.SourceAddress().String() != "192.0.2.2" {
		t.Fatalf("denied: wrote %x", pk[0])
	}
	if checksum.Checksum(icmp, 0) != 0xffff {
		t.Fatal("ICMP checksum bad")
	}
	// Later datagrams of the denied flow: nothing.
	g.HandleDatagram(dgram)
	if pk := out.take(); len(pk) != 0 {
		t.Fatalf("denied flow's second datagram: %d packets", len(pk))
	}
	// drop: silence.
	g.HandleDatagram(appendUDP(nil, cli4, netip.MustParseAddrPort("192.0.2.2:9998"), []byte("x")))
	if pk := out.take(); len(pk) != 0 {
		t.Fatalf("dropped: %d packets", len(pk))
	}
	// IPv6 deny: ICMPv6 port unreachable.
	g.HandleDatagram(appendUDP(nil, cli6, netip.MustParseAddrPort("[2001:db8:2::2]:9999"), []byte("x")))
	pk = out.take()
	if len(pk) != 1 || header.IPv6(pk[0]).TransportProtocol() != header.ICMPv6ProtocolNumber ||
		header.ICMPv6(header.IPv6(pk[0]).Payload()).Code() != header.ICMPv6PortUnreachable {
		t.Fatalf("IPv6 denied: %x", pk)
	}
}

func TestIdleFlowsEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte("default: allow\n"), 0o644)
	eng, err := policy.New(policy.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	out, bp := &fakeOut{}, &fakeBypass{alive: true}
	g := &Guard{Policy: eng, Out: out, Bypass: bp, Limits: Limits{IdleTimeout: 300 * time.Millisecond}}
	g.Start()
	defer g.Close()
	g.HandleDatagram(appendUDP(nil, cli4, netip.MustParseAddrPort("192.0.2.2:5001"), []byte("x")))
	g.HandleDatagram(appendUDP(nil, cli4, netip.MustParseAddrPort("192.0.2.2:53"), query(t, 1, "a.example.")))
	if g.Active() != 2 {
		t.Fatalf("active = %d", g.Active())
	}
	// The bypassed flow lives while the kernel tracks it; the DNS one ends.
	deadline := time.Now().Add(5 * time.Second)
	for g.Active() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("active = %d after the idle timeout, want 1", g.Active())
		}
		time.Sleep(50 * time.Millisecond)
	}
	bp.mu.Lock()
	bp.alive = false
	bp.mu.Unlock()
	for g.Active() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("active = %d once the kernel forgot the flow", g.Active())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRandomInput: no input panics the guard; what is not a whole UDP
// packet is counted as malformed.
func TestRandomInput(t *testing.T) {
	g, _, _ := newTestGuard(t, testRules)
	r := rand.New(rand.NewPCG(1, 2))
	base := appendUDP(nil, cli4, netip.MustParseAddrPort("192.0.2.2:443"), make([]byte, 1200))
	for i := 0; i < 20000; i++ {
		b := append([]byte(nil), base...)
		for j := r.IntN(8); j >= 0; j-- {
			b[r.IntN(len(b))] = byte(r.Uint32())
		}
		b = b[:r.IntN(len(b)+1)]
		g.HandleDatagram(b)
	}
	if g.Stats().Malformed.Load() == 0 {
		t.Fatal("no malformed packet counted")
	}
}

func FuzzHandleDatagram(f *testing.F) {
	f.Add(appendUDP(nil, cli4, srv4, []byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01")))
	f.Add(appendUDP(nil, cli6, netip.MustParseAddrPort("[2001:db8:2::2]:443"), []byte{0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x41, 0}))
	path := filepath.Join(f.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte(testRules), 0o644)
	eng, err := policy.New(policy.Options{Path: path})
	if err != nil {
		f.Fatal(err)
	}
	g := &Guard{Policy: eng, Out: &fakeOut{}}
	g.Start()
	defer g.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		g.HandleDatagram(b)
	})
}

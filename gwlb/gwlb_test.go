package gwlb

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netward/netward/geneve"
	"github.com/netward/netward/netstack"
	"github.com/prometheus/client_golang/prometheus"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// acceptAll admits every flow and closes it once served.
type acceptAll struct{}

func (acceptAll) Admit(*netstack.Flow) netstack.Admission { return netstack.AdmitAccept }
func (acceptAll) Serve(_ *netstack.Flow, c, s netstack.Conn) {
	c.Close()
	s.Close()
}

var (
	client = netip.MustParseAddrPort("192.0.2.10:40000")
	server = netip.MustParseAddrPort("198.51.100.20:443")
)

// syn4 is a client SYN with valid checksums.
func syn4(src, dst netip.AddrPort) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1000, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
	return b
}

type fixture struct {
	d    *Datapath
	gwlb *net.UDPConn // the test's GWLB, on port 6081 of 127.0.0.2... any loopback
	reg  *prometheus.Registry
}

func newFixture(t *testing.T, o Options) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Metrics = NewMetrics(reg)
	if o.NewStack == nil {
		o.NewStack = func(files []*os.File, mtu int) (*netstack.Stack, error) {
			return netstack.New(netstack.Options{Files: files, MTU: mtu, Handler: acceptAll{}, DialTimeout: 2 * time.Second})
		}
	}
	o.Listen = "127.0.0.1:0"
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	// Replies go to the sender's address, port 6081: the test's GWLB
	// listens there on another loopback address.
	g, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.2:6081")))
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2:6081: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	return &fixture{d: d, gwlb: g, reg: reg}
}

func (f *fixture) send(t *testing.T, b []byte) {
	t.Helper()
	if _, err := f.gwlb.WriteToUDPAddrPort(b, f.d.LocalAddr()); err != nil {
		t.Fatal(err)
	}
}

func encap(t testing.TB, opts, inner []byte) []byte {
	b, err := geneve.Append(nil, &geneve.Header{Protocol: protoOf(inner), Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	return append(b, inner...)
}

// recv reads GENEVE packets until one carries an inner TCP packet from
// src to dst, and returns its header bytes and inner packet.
func (f *fixture) recv(t *testing.T, src, dst netip.AddrPort) (hdr, inner []byte) {
	t.Helper()
	buf := make([]byte, 65536)
	f.gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := f.gwlb.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no packet %v → %v: %v", src, dst, err)
		}
		var h geneve.Header
		p, err := geneve.Parse(buf[:n], &h)
		if err != nil {
			t.Fatalf("netward sent a bad GENEVE packet: %v", err)
		}
		var tu tuple
		if tu.parse(p, h.Protocol) && tu.src == src && tu.dst == dst {
			return append([]byte(nil), buf[:n-len(p)]...), append([]byte(nil), p...)
		}
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
			if label == "" {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// The stack dials the server from the client's address back into the
// tunnel, with the flow's options byte for byte; two endpoints with the
// same inner addresses get a stack each and their own options back.
func TestUpstreamSYNEchoesOptionsPerEndpoint(t *testing.T) {
	f := newFixture(t, Options{})
	optsA := geneve.AWSOptions(nil, 0xa1, 0xa2, 0xa3)
	optsB := geneve.AWSOptions(nil, 0xb1, 0xb2, 0xb3)
	f.send(t, encap(t, optsA, syn4(client, server)))
	hdr, inner := f.recv(t, client, server)
	if want := encap(t, optsA, nil); !bytes.Equal(hdr, want) {
		t.Fatalf("endpoint A's upstream SYN came back with header %x, want %x", hdr, want)
	}
	if header.TCP(inner[header.IPv4MinimumSize:]).Flags() != header.TCPFlagSyn {
		t.Fatalf("not a SYN: %x", inner)
	}
	f.send(t, encap(t, optsB, syn4(client, server)))
	hdr, _ = f.recv(t, client, server)
	if want := encap(t, optsB, nil); !bytes.Equal(hdr, want) {
		t.Fatalf("endpoint B's upstream SYN came back with header %x, want %x", hdr, want)
	}
	if n := len(f.d.Stacks()); n != 2 {
		t.Fatalf("%d stacks for two endpoints", n)
	}
	if g := counter(t, f.reg, "netward_geneve_endpoints", "", ""); g != 2 {
		t.Errorf("netward_geneve_endpoints = %v", g)
	}
	if err := f.d.Check(); err != nil {
		t.Errorf("Check: %v", err)
	}
}

// Non-TCP inner packets go straight back, options and all.
func TestPassthrough(t *testing.T) {
	f := newFixture(t, Options{})
	opts := geneve.AWSOptions(nil, 1, 2, 3)
	udp := syn4(client, server)
	udp[9] = 17
	f.send(t, encap(t, opts, udp))
	hdr, inner := f.recv(t, client, server)
	if !bytes.Equal(hdr, encap(t, opts, nil)) || !bytes.Equal(inner, udp) {
		t.Fatalf("passthrough changed the packet: %x %x", hdr, inner)
	}
}

// Bad input to a running listener is counted by reason and never kills it.
func TestBadInput(t *testing.T) {
	f := newFixture(t, Options{MaxEndpoints: 1})
	aws := geneve.AWSOptions(nil, 1, 2, 3)
	critical, _ := geneve.AppendOption(append([]byte(nil), aws...), 0x0200, 0x85, []byte{1, 2, 3, 4})
	wrongClass, _ := geneve.AppendOption(nil, 0x0200, 0x01, make([]byte, 8))
	ver := encap(t, aws, syn4(client, server))
	ver[0] |= 0x40
	oam := encap(t, aws, syn4(client, server))
	oam[1] |= 0x80
	tests := []struct {
		name, reason string
		b            []byte
	}{
		{"truncated", "truncated", encap(t, aws, nil)[:10]},
		{"empty", "truncated", []byte{}},
		{"version", "version", ver},
		{"unknown critical option", "critical_option", encap(t, critical, syn4(client, server))},
		{"wrong class", DropMissingOption, encap(t, wrongClass, syn4(client, server))},
		{"oam", DropOAM, oam},
		{"oversized", DropOversized, encap(t, aws, append(syn4(client, server), make([]byte, InnerMTU)...))},
		{"not ip", DropNotIP, encap(t, aws, []byte{0x45, 1, 2})},
		{"second endpoint over the cap", DropEndpointLimit, encap(t, geneve.AWSOptions(nil, 9, 9, 9), syn4(client, server))},
	}
	// The first endpoint takes the only slot.
	f.send(t, encap(t, aws, syn4(client, server)))
	f.recv(t, client, server)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := counter(t, f.reg, "netward_geneve_drops_total", "reason", tt.reason)
			f.send(t, tt.b)
			deadline := time.Now().Add(3 * time.Second)
			for counter(t, f.reg, "netward_geneve_drops_total", "reason", tt.reason) != before+1 {
				if time.Now().After(deadline) {
					t.Fatalf("drop %q not counted", tt.reason)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	// Still serving.
	f.send(t, encap(t, aws, syn4(netip.MustParseAddrPort("192.0.2.11:40001"), server)))
	f.recv(t, netip.MustParseAddrPort("192.0.2.11:40001"), server)
	if err := f.d.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestReceiveAllocs(t *testing.T) {
	f := newFixture(t, Options{})
	opts := geneve.AWSOptions(nil, 1, 2, 3)
	b := encap(t, opts, syn4(client, server))
	var h geneve.Header
	f.d.receive(b, netip.MustParseAddr("127.0.0.2"), &h) // creates the link and the flow
	bad := encap(t, opts, []byte{0x45})
	if n := testing.AllocsPerRun(200, func() { f.d.receive(bad, netip.MustParseAddr("127.0.0.2"), &h) }); n != 0 {
		t.Errorf("dropping a packet allocates %v times", n)
	}
}

func FuzzReceive(f *testing.F) {
	f.Add(encap(f, geneve.AWSOptions(nil, 1, 2, 3), syn4(client, server)))
	d := &Datapath{m: NewMetrics(nil), maxEP: 0, links: map[key]*link{}, closing: true}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h geneve.Header
		d.receive(b, netip.MustParseAddr("192.0.2.1"), &h)
	})
}

// refuseUDP answers every datagram with an ICMP port unreachable from the
// server, as the UDP guard's deny does.
type refuseUDP struct {
	st *atomic.Pointer[netstack.Stack]
}

func (r refuseUDP) HandleDatagram(pkt []byte) {
	ip := header.IPv4(pkt)
	quote := pkt[:min(len(pkt), int(ip.HeaderLength())+8)]
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
	out := header.IPv4(b)
	out.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: ip.DestinationAddress(), DstAddr: ip.SourceAddress()})
	out.SetChecksum(^out.CalculateChecksum())
	icmp := header.ICMPv4(b[header.IPv4MinimumSize:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(header.ICMPv4PortUnreachable)
	copy(icmp[header.ICMPv4MinimumSize:], quote)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	r.st.Load().WriteDatagram(b)
}

// With Options.UDP, inner UDP goes to the stack's DatagramHandler, and an
// ICMP error it sends goes back with the options of the flow it quotes.
func TestUDPToStackICMPErrorEchoesOptions(t *testing.T) {
	var st atomic.Pointer[netstack.Stack] // set before the stack gets its first packet (the race detector cannot see that)
	f := newFixture(t, Options{UDP: true, NewStack: func(files []*os.File, mtu int) (*netstack.Stack, error) {
		s, err := netstack.New(netstack.Options{Files: files, MTU: mtu, Handler: acceptAll{}, Datagrams: refuseUDP{&st}})
		st.Store(s)
		return s, err
	}})
	opts := geneve.AWSOptions(nil, 7, 8, 9)
	udp := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+4)
	ip := header.IPv4(udp)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(udp)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(client.Addr().As4()), DstAddr: tcpip.AddrFrom4(server.Addr().As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(udp[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: client.Port(), DstPort: server.Port(), Length: uint16(len(u))})
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(u)))
	u.SetChecksum(^checksum.Checksum(u, xsum))
	f.send(t, encap(t, opts, udp))

	buf := make([]byte, 65536)
	f.gwlb.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := f.gwlb.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no ICMP error back: %v (passthrough %v)", err, counter(t, f.reg, "netward_geneve_passthrough_packets_total", "", ""))
	}
	var h geneve.Header
	p, err := geneve.Parse(buf[:n], &h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Options, opts) {
		t.Errorf("ICMP error's options %x, want the flow's %x", h.Options, opts)
	}
	if header.IPv4(p).Protocol() != uint8(header.ICMPv4ProtocolNumber) || header.ICMPv4(p[header.IPv4MinimumSize:]).Type() != header.ICMPv4DstUnreachable {
		t.Errorf("got %x, want the stack's port unreachable", p)
	}
}

// Stacks given one FlowIDs sequence (as the GENEVE datapath's endpoints
// are) never hand out the same flow id.
func TestSharedFlowIDs(t *testing.T) {
	ids := netstack.NewFlowIDs()
	var (
		mu     sync.Mutex
		stacks []*netstack.Stack
	)
	f := newFixture(t, Options{NewStack: func(files []*os.File, mtu int) (*netstack.Stack, error) {
		st, err := netstack.New(netstack.Options{Files: files, MTU: mtu, Handler: acceptAll{}, FlowIDs: ids})
		mu.Lock()
		stacks = append(stacks, st)
		mu.Unlock()
		return st, err
	}})
	f.send(t, encap(t, geneve.AWSOptions(nil, 1, 1, 1), syn4(client, server)))
	f.recv(t, client, server)
	f.send(t, encap(t, geneve.AWSOptions(nil, 2, 2, 2), syn4(client, server)))
	f.recv(t, client, server)
	mu.Lock()
	defer mu.Unlock()
	if len(stacks) != 2 {
		t.Fatalf("%d stacks for two endpoints", len(stacks))
	}
	seen := map[uint64]bool{}
	for range 100 {
		for _, st := range stacks {
			id := st.NewFlowID()
			if seen[id] {
				t.Fatalf("flow id %d handed out twice", id)
			}
			seen[id] = true
		}
	}
}

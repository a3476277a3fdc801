package netstack

import (
	"bytes"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// tcpPacket builds an IPv4 or IPv6 TCP packet with a correct checksum
// (packet builders in the style of wireguard-go's tcp4Packet).
// maxPacketSize is the most one TUN read returns: an IP packet and the
// virtio_net_hdr in front of it (the tests' own read buffers).
const maxPacketSize = maxIPPacketSize + virtioNetHdrLen

func tcpPacket(src, dst netip.AddrPort, flags header.TCPFlags, payload []byte) []byte {
	var ipLen int
	if src.Addr().Is4() {
		ipLen = header.IPv4MinimumSize
	} else {
		ipLen = header.IPv6MinimumSize
	}
	b := make([]byte, ipLen+header.TCPMinimumSize+len(payload))
	segLen := header.TCPMinimumSize + len(payload)
	if src.Addr().Is4() {
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     fromAddr(src.Addr()),
			DstAddr:     fromAddr(dst.Addr()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(segLen),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           fromAddr(src.Addr()),
			DstAddr:           fromAddr(dst.Addr()),
		})
	}
	tcp := header.TCP(b[ipLen:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    src.Port(),
		DstPort:    dst.Port(),
		SeqNum:     1,
		DataOffset: header.TCPMinimumSize,
		Flags:      flags,
		WindowSize: 65535,
	})
	copy(tcp[header.TCPMinimumSize:], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, fromAddr(src.Addr()), fromAddr(dst.Addr()), uint16(segLen))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
	return b
}

var (
	cli4 = netip.MustParseAddrPort("198.51.100.2:40000")
	srv4 = netip.MustParseAddrPort("192.0.2.2:80")
	cli6 = netip.MustParseAddrPort("[2001:db8:1::2]:40000")
	srv6 = netip.MustParseAddrPort("[2001:db8:2::2]:80")
)

func TestVirtioNetHdrRoundTrip(t *testing.T) {
	tests := []virtioNetHdr{
		{},
		{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: 40, gsoSize: 1448, csumStart: 20, csumOffset: 16},
		{flags: vnetFlagDataValid, gsoType: vnetGSOTCPv6 | vnetGSOECN, hdrLen: 60, gsoSize: 1428, csumStart: 40, csumOffset: 16},
		{flags: 0xff, gsoType: 0xff, hdrLen: 0xffff, gsoSize: 0xffff, csumStart: 0xffff, csumOffset: 0xffff},
	}
	for _, want := range tests {
		var b [virtioNetHdrLen]byte
		want.encode(b[:])
		var got virtioNetHdr
		if err := got.decode(b[:]); err != nil || got != want {
			t.Errorf("decode(encode(%+v)) = %+v, %v", want, got, err)
		}
	}
	var h virtioNetHdr
	if err := h.decode(make([]byte, virtioNetHdrLen-1)); err == nil {
		t.Errorf("decode of a short header succeeded")
	}
}

func TestTCPChecksumValid(t *testing.T) {
	corrupt := func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b }
	frag := func(b []byte) []byte {
		header.IPv4(b).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
		return b
	}
	truncated := func(b []byte) []byte { return b[:len(b)-1] }
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"ipv4 ok", tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("hello")), true},
		{"ipv6 ok", tcpPacket(cli6, srv6, header.TCPFlagAck, []byte("hello")), true},
		{"ipv4 syn no payload", tcpPacket(cli4, srv4, header.TCPFlagSyn, nil), true},
		{"ipv4 corrupt", corrupt(tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("hello"))), false},
		{"ipv6 corrupt", corrupt(tcpPacket(cli6, srv6, header.TCPFlagAck, []byte("hello"))), false},
		{"ipv4 fragment", frag(tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("hello"))), false},
		{"ipv4 truncated", truncated(tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("hello"))), false},
		{"ipv6 truncated", truncated(tcpPacket(cli6, srv6, header.TCPFlagAck, []byte("hello"))), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tcpChecksumValid(tt.pkt, packetProto(tt.pkt)); got != tt.want {
				t.Errorf("tcpChecksumValid = %v, want %v", got, tt.want)
			}
		})
	}
}

// countingDispatcher counts what the endpoint delivers.
type countingDispatcher struct{ n atomic.Int64 }

func (d *countingDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	d.n.Add(1)
}
func (d *countingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// newTestEndpoint returns an endpoint on one end of a socketpair and the
// other end. Nothing reads the endpoint's end: tests call deliver directly.
func newTestEndpoint(t testing.TB, vnet bool) (*linkEndpoint, *Stats, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	stats := new(Stats)
	e, err := newLinkEndpoint(endpointOptions{
		Files:      []*os.File{os.NewFile(uintptr(fds[0]), "ep")},
		MTU:        1500,
		VnetHdr:    vnet,
		GSOMaxSize: maxGSOSize,
		Stats:      stats,
		AckDelay:   testAckDelay,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); unix.Close(fds[1]) })
	return e, stats, fds[1]
}

func withHdr(h virtioNetHdr, pkt []byte) []byte {
	b := make([]byte, virtioNetHdrLen, virtioNetHdrLen+len(pkt))
	h.encode(b)
	return append(b, pkt...)
}

// deliver hands one packet as a TUN read returns it (with the
// virtio_net_hdr in front when the endpoint has it) to gVisor, copying it:
// readLoop's path without its read view, for tests, fuzzing and benchmarks.
func (e *linkEndpoint) deliver(b []byte) {
	var vh []byte
	if e.vnetHdr {
		if len(b) < virtioNetHdrLen {
			e.stats.RxMalformed.Add(1)
			return
		}
		vh, b = b[:virtioNetHdrLen], b[virtioNetHdrLen:]
	}
	e.deliverPacket(vh, b, nil)
}

func TestDeliverFilters(t *testing.T) {
	good := tcpPacket(cli4, srv4, header.TCPFlagAck, []byte("hello"))
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	icmp := bytes.Clone(good)
	header.IPv4(icmp).SetChecksum(0)
	icmp[9] = uint8(header.ICMPv4ProtocolNumber)
	tests := []struct {
		name      string
		vnet      bool
		in        []byte
		delivered bool
		counter   func(*Stats) uint64
	}{
		{"plain good", false, good, true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"plain bad checksum goes to gVisor, which verifies", false, bad, true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"vnet good, unverified", true, withHdr(virtioNetHdr{}, good), true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"vnet bad, unverified", true, withHdr(virtioNetHdr{}, bad), false, func(s *Stats) uint64 { return s.RxBadChecksum.Load() }},
		{"vnet partial checksum", true, withHdr(virtioNetHdr{flags: vnetFlagNeedsCsum}, bad), true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"vnet data valid", true, withHdr(virtioNetHdr{flags: vnetFlagDataValid}, bad), true, func(s *Stats) uint64 { return s.RxPackets.Load() }},
		{"vnet gso", true, withHdr(virtioNetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, gsoSize: 1448}, good), true, func(s *Stats) uint64 { return s.RxGSOPackets.Load() }},
		{"vnet short header", true, []byte{1, 2, 3}, false, func(s *Stats) uint64 { return s.RxMalformed.Load() }},
		{"not IP", false, []byte{0x50, 1, 2, 3}, false, func(s *Stats) uint64 { return s.RxMalformed.Load() }},
		{"empty", false, nil, false, func(s *Stats) uint64 { return s.RxMalformed.Load() }},
		{"not TCP", false, icmp, false, func(s *Stats) uint64 { return s.RxNotTCP.Load() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, stats, _ := newTestEndpoint(t, tt.vnet)
			d := &countingDispatcher{}
			e.mu.Lock()
			e.dispatcher = d // without starting the readers
			e.mu.Unlock()
			e.deliver(tt.in)
			if got := d.n.Load() == 1; got != tt.delivered {
				t.Errorf("delivered = %v, want %v", got, tt.delivered)
			}
			if tt.counter(stats) != 1 {
				t.Errorf("counter not incremented: %+v", stats)
			}
		})
	}
}

// FuzzDeliver feeds arbitrary bytes from the "TUN" through the endpoint
// into a real gVisor stack: nothing may panic.
func FuzzDeliver(f *testing.F) {
	f.Add(withHdr(virtioNetHdr{}, tcpPacket(cli4, srv4, header.TCPFlagSyn, nil)))
	f.Add(withHdr(virtioNetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv6, gsoSize: 1}, tcpPacket(cli6, srv6, header.TCPFlagAck, []byte("data"))))
	f.Add(withHdr(virtioNetHdr{flags: vnetFlagDataValid}, tcpPacket(cli4, srv4, header.TCPFlagSyn|header.TCPFlagAck, nil)))
	f.Add(withHdr(virtioNetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, gsoSize: 1448}, tcpPacket(cli4, srv4, header.TCPFlagAck, make([]byte, zeroCopyMin))))
	l := newLab(f, labOptions{vnet: true})
	e := l.net.link.(*linkEndpoint)
	f.Fuzz(func(t *testing.T, b []byte) {
		e.deliver(b)
		// As readLoop does: the packet in a 64 KiB view, a large
		// payload handed over in it.
		if len(b) < virtioNetHdrLen || len(b)-virtioNetHdrLen > maxIPPacketSize {
			return
		}
		own := buffer.NewViewSize(maxIPPacketSize)
		n := copy(own.AsSlice(), b[virtioNetHdrLen:])
		if !e.deliverPacket(b[:virtioNetHdrLen], own.AsSlice()[:n], own) {
			own.Release()
		}
	})
}

// BenchmarkDeliver is the per-packet inbound cost of the endpoint itself
// (vnet_hdr decode, checks, packet buffer), without gVisor's stack.
func BenchmarkDeliver(b *testing.B) {
	for _, tt := range []struct {
		name string
		pkt  []byte
	}{
		{"verified-1448", withHdr(virtioNetHdr{flags: vnetFlagDataValid}, tcpPacket(cli4, srv4, header.TCPFlagAck, make([]byte, 1448)))},
		{"checksummed-1448", withHdr(virtioNetHdr{}, tcpPacket(cli4, srv4, header.TCPFlagAck, make([]byte, 1448)))},
		{"gso-64k", withHdr(virtioNetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, gsoSize: 1448}, tcpPacket(cli4, srv4, header.TCPFlagAck, make([]byte, 64000)))},
	} {
		b.Run(tt.name, func(b *testing.B) {
			e, _, _ := newTestEndpoint(b, true)
			e.dispatcher = &countingDispatcher{}
			b.SetBytes(int64(len(tt.pkt)))
			b.ReportAllocs()
			for b.Loop() {
				e.deliver(tt.pkt)
			}
		})
		// As readLoop does it: the packet lands in a 64 KiB view (the
		// copy stands in for the read), and a large payload is handed
		// over in that view.
		b.Run(tt.name+"/in-view", func(b *testing.B) {
			e, _, _ := newTestEndpoint(b, true)
			e.dispatcher = &countingDispatcher{}
			b.SetBytes(int64(len(tt.pkt)))
			b.ReportAllocs()
			own := buffer.NewViewSize(maxIPPacketSize)
			for b.Loop() {
				n := copy(own.AsSlice(), tt.pkt[virtioNetHdrLen:])
				if e.deliverPacket(tt.pkt[:virtioNetHdrLen], own.AsSlice()[:n], own) {
					own = buffer.NewViewSize(maxIPPacketSize)
				}
			}
			own.Release()
		})
	}
}

// TestDeliverPacketInView: a large payload read into the view is handed to
// gVisor in that view (no copy), with the headers in a view of their own;
// a small one is copied and the view stays the reader's.
func TestDeliverPacketInView(t *testing.T) {
	for _, tt := range []struct {
		payload  int
		wantTook bool
	}{{100, false}, {zeroCopyMin - 1, false}, {zeroCopyMin, true}, {60000, true}} {
		e, _, _ := newTestEndpoint(t, true)
		var got []byte
		var views int
		var last *byte // the last view's last byte
		e.dispatcher = dispatchFunc(func(pkt *stack.PacketBuffer) {
			vl, _ := pkt.AsViewList()
			for v := vl.Front(); v != nil; v = v.Next() {
				views++
				last = &v.AsSlice()[v.Size()-1]
			}
			buf := pkt.ToBuffer()
			got = buf.Flatten()
			buf.Release()
		})
		in := withHdr(virtioNetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, gsoSize: 1448},
			tcpPacket(cli4, srv4, header.TCPFlagAck, bytes.Repeat([]byte{0xa5}, tt.payload)))
		own := buffer.NewViewSize(maxIPPacketSize)
		n := copy(own.AsSlice(), in[virtioNetHdrLen:])
		ownEnd := &own.AsSlice()[n-1] // own is gVisor's after a take
		took := e.deliverPacket(in[:virtioNetHdrLen], own.AsSlice()[:n], own)
		if took != tt.wantTook {
			t.Errorf("payload %d: took = %v, want %v", tt.payload, took, tt.wantTook)
		}
		if !took {
			own.Release()
		}
		if !bytes.Equal(got, in[virtioNetHdrLen:]) {
			t.Errorf("payload %d: gVisor got %d bytes, not the %d-byte packet", tt.payload, len(got), n)
		}
		if views != 2 {
			t.Errorf("payload %d: packet in %d views, want 2 (headers, payload)", tt.payload, views)
		}
		// Append tops up the headers' chunk with the payload's first
		// bytes; the rest stays where it was read.
		inView := last == ownEnd
		if inView != tt.wantTook {
			t.Errorf("payload %d: payload handed over in the read view: %v, want %v", tt.payload, inView, tt.wantTook)
		}
	}
}

type dispatchFunc func(*stack.PacketBuffer)

func (f dispatchFunc) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f(pkt)
}
func (f dispatchFunc) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// gsoPacket builds an outbound packet as gVisor's TCP hands it to the link:
// headers in the reserved space, payload in its own view, GSO options set.
func gsoPacket(payload int) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(make([]byte, payload)),
	})
	pkt.TransportHeader().Push(header.TCPMinimumSize)
	header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize)).Encode(&header.IPv4Fields{
		TotalLength: uint16(header.IPv4MinimumSize + header.TCPMinimumSize + payload),
		Protocol:    uint8(header.TCPProtocolNumber),
	})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1448, L3HdrLen: header.IPv4MinimumSize}
	return pkt
}

func TestWritePacketsVnetHdr(t *testing.T) {
	e, stats, peer := newTestEndpoint(t, true)
	pkt := gsoPacket(10000)
	defer pkt.DecRef()
	var list stack.PacketBufferList
	list.PushBack(pkt)
	if n, err := e.WritePackets(list); n != 1 || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	buf := make([]byte, maxPacketSize)
	n, err := unix.Read(peer, buf)
	if err != nil {
		t.Fatal(err)
	}
	var h virtioNetHdr
	h.decode(buf[:n])
	want := virtioNetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: 40, gsoSize: 1448, csumStart: 20, csumOffset: 16}
	if h != want {
		t.Errorf("virtio_net_hdr = %+v, want %+v", h, want)
	}
	if n != virtioNetHdrLen+40+10000 {
		t.Errorf("wrote %d bytes, want %d", n, virtioNetHdrLen+40+10000)
	}
	if stats.TxGSOPackets.Load() != 1 {
		t.Errorf("TxGSOPackets = %d", stats.TxGSOPackets.Load())
	}
}

func TestWritePacketsNoAllocs(t *testing.T) {
	e, _, peer := newTestEndpoint(t, true)
	pkt := gsoPacket(1448)
	defer pkt.DecRef()
	var list stack.PacketBufferList
	list.PushBack(pkt)
	buf := make([]byte, maxPacketSize)
	allocs := testing.AllocsPerRun(200, func() {
		e.WritePackets(list)
		unix.Read(peer, buf)
	})
	if allocs != 0 {
		t.Errorf("WritePackets allocates %.1f times per packet, want 0", allocs)
	}
}

// BenchmarkWritePackets is the per-packet outbound cost (writev included).
func BenchmarkWritePackets(b *testing.B) {
	for _, size := range []int{1448, 64000} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			e, _, peer := newTestEndpoint(b, true)
			pkt := gsoPacket(size)
			defer pkt.DecRef()
			var list stack.PacketBufferList
			list.PushBack(pkt)
			buf := make([]byte, maxPacketSize)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				e.WritePackets(list)
				unix.Read(peer, buf)
			}
		})
	}
}

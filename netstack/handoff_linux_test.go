package netstack

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestHandoffLayout fails when a gVisor upgrade renames or retypes the
// fields Handoff reads: then every flow would quietly stay in gVisor.
func TestHandoffLayout(t *testing.T) {
	if !handoffFieldsOK() {
		t.Fatalf("tcp.Endpoint lacks fields Handoff reads: %+v", handoffFields)
	}
}

// quietPacket is a PacketBuffer with the network and TCP headers of a
// packet from src to dst, as gVisor hands it to the link.
func quietPacket(t *testing.T, src, dst netip.AddrPort) *stack.PacketBuffer {
	t.Helper()
	var nh []byte
	if src.Addr().Is4() {
		nh = make([]byte, header.IPv4MinimumSize)
		nh[0] = 0x45
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(nh[12:16], s[:])
		copy(nh[16:20], d[:])
	} else {
		nh = make([]byte, header.IPv6MinimumSize)
		nh[0] = 0x60
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(nh[8:24], s[:])
		copy(nh[24:40], d[:])
	}
	th := make([]byte, header.TCPMinimumSize)
	header.TCP(th).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagRst})
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append(nh, th...))})
	pkt.NetworkHeader().Consume(len(nh))
	pkt.TransportHeader().Consume(len(th))
	return pkt
}

func TestQuietSet(t *testing.T) {
	for _, tc := range []struct{ client, server, other string }{
		{"198.51.100.2:40000", "192.0.2.2:443", "198.51.100.2:40001"},
		{"[2001:db8:1::2]:40000", "[2001:db8:2::2]:443", "[2001:db8:1::3]:40000"},
	} {
		client, server, other := netip.MustParseAddrPort(tc.client), netip.MustParseAddrPort(tc.server), netip.MustParseAddrPort(tc.other)
		var q quietSet
		fromServer := quietPacket(t, server, client)
		defer fromServer.DecRef()
		if q.drops(fromServer) {
			t.Fatal("empty set drops")
		}
		q.add(quietKey(client, server), 0)
		if !q.drops(fromServer) {
			t.Errorf("%s: gVisor's packet to the handed-off client is not dropped", tc.client)
		}
		toServer := quietPacket(t, client, server) // the other direction: not gVisor's client leg
		defer toServer.DecRef()
		otherPkt := quietPacket(t, server, other)
		defer otherPkt.DecRef()
		if q.drops(toServer) || q.drops(otherPkt) {
			t.Errorf("%s: packets of other tuples dropped", tc.client)
		}
		q.remove(quietKey(client, server))
		if q.drops(fromServer) || q.n.Load() != 0 {
			t.Errorf("%s: still dropped after remove (n %d)", tc.client, q.n.Load())
		}
		q.add(quietKey(client, server), 0)
		deadline := time.Now().Add(quietFor + 2*time.Second)
		for q.n.Load() != 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if q.n.Load() != 0 {
			t.Errorf("%s: entry did not expire after %v", tc.client, quietFor)
		}
	}
}

func TestPendingTimeWait(t *testing.T) {
	var p pendingTimeWait
	k := quietKey(netip.MustParseAddrPort("198.51.100.2:40000"), netip.MustParseAddrPort("192.0.2.2:443"))
	if p.take(k) {
		t.Fatal("empty set has k")
	}
	p.add(k)
	if !p.take(k) || p.take(k) {
		t.Error("take: want true once, then false")
	}
}

package netstack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestClientPortReuseInTimeWait(t *testing.T) {
	// The server closes first, so netward's client leg closes first and
	// keeps the tuple in TIME_WAIT; the client then connects again from the
	// same port at once. Without the SYN gate gVisor drops that SYN (the
	// client retransmits after its 1 s RTO) or resets it.
	forEach(t, func(t *testing.T, fam family, vnet bool) {
		l := newLab(t, labOptions{vnet: vnet, handler: &spliceHandler{}})
		l.serveAndClose(fam.server, 80, "hi")
		from := netip.AddrPortFrom(fam.client, 40001)
		to := netip.AddrPortFrom(fam.server, 80)
		for i := range 4 {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			c, err := dialFrom(ctx, l, from, to)
			for err != nil && ctx.Err() == nil {
				// The client's own previous endpoint may hold the port
				// until netward's ACK of its FIN arrives.
				time.Sleep(time.Millisecond)
				c, err = dialFrom(ctx, l, from, to)
			}
			if err != nil {
				cancel()
				t.Fatalf("round %d: dial from the same port: %v", i, err)
			}
			took := time.Since(start)
			b, err := io.ReadAll(c)
			c.Close()
			cancel()
			if string(b) != "hi" {
				t.Fatalf("round %d: read %q, %v", i, b, err)
			}
			// A dropped SYN costs the client's 1 s retransmission timeout
			// and a second SYN (counted below, without a clock: a loaded
			// machine slows everything); the gate's wait is the rest of
			// TIME_WAIT (DefaultTimeWait).
			t.Logf("round %d: connected in %v", i, took)
		}
		if n := l.synRetransmits.Load(); n != 0 {
			t.Errorf("the client sent %d SYNs again: netward dropped a SYN instead of letting it through when TIME_WAIT ended", n)
		}
		if l.net.Stats().SynsHeld.Load() == 0 {
			t.Errorf("no SYN was held: the test did not hit TIME_WAIT")
		}
	})
}

func TestSYNGateDeliversAfterMaxWait(t *testing.T) {
	// A SYN whose tuple stays busy is delivered after maxWait anyway, and
	// counted; close drops whatever is held.
	st := stack.New(stack.Options{})
	defer st.Close()
	var stats Stats
	delivered := make(chan []byte, 1)
	g := newSYNGate(st, 0, &stats, func(_ tcpip.NetworkProtocolNumber, b []byte) { delivered <- b })
	g.maxWait = 5 * time.Millisecond
	pkt := synPacket(t, header.IPv4ProtocolNumber, header.TCPFlagSyn)
	id := synEndpointID(header.IPv4ProtocolNumber, pkt)
	g.mu.Lock()
	g.held = append(g.held, heldSYN{proto: header.IPv4ProtocolNumber, id: id, pkt: pkt, since: time.Now().Add(-time.Second)})
	g.timer.Reset(synGatePoll)
	g.mu.Unlock()
	select {
	case b := <-delivered:
		if string(b) != string(pkt) {
			t.Errorf("delivered other bytes")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("held SYN never delivered")
	}
	if stats.SynGateTimeouts.Load() != 1 {
		t.Errorf("SynGateTimeouts = %d, want 1", stats.SynGateTimeouts.Load())
	}
	g.close()
	if g.hold(header.IPv4ProtocolNumber, pkt) {
		t.Errorf("hold took a SYN whose tuple is not in TIME_WAIT")
	}
}

func TestIsPureSYN(t *testing.T) {
	for _, proto := range []tcpip.NetworkProtocolNumber{header.IPv4ProtocolNumber, header.IPv6ProtocolNumber} {
		for _, c := range []struct {
			flags header.TCPFlags
			want  bool
		}{
			{header.TCPFlagSyn, true},
			{header.TCPFlagSyn | header.TCPFlagEce | header.TCPFlagCwr, true},
			{header.TCPFlagSyn | header.TCPFlagAck, false},
			{header.TCPFlagSyn | header.TCPFlagRst, false},
			{header.TCPFlagSyn | header.TCPFlagFin, false},
			{header.TCPFlagAck, false},
		} {
			b := synPacket(t, proto, c.flags)
			if got := isPureSYN(b, proto); got != c.want {
				t.Errorf("proto %d flags %v: isPureSYN = %v, want %v", proto, c.flags, got, c.want)
			}
			if got := isPureSYN(b[:len(b)-1], proto); got {
				t.Errorf("proto %d flags %v: truncated TCP header taken for a SYN", proto, c.flags)
			}
		}
		id := synEndpointID(proto, synPacket(t, proto, header.TCPFlagSyn))
		if id.LocalPort != 80 || id.RemotePort != 40001 {
			t.Errorf("proto %d: id ports %d/%d, want local 80 remote 40001", proto, id.LocalPort, id.RemotePort)
		}
		client, server := clientV4, serverV4
		if proto == header.IPv6ProtocolNumber {
			client, server = clientV6, serverV6
		}
		if toAddr(id.LocalAddress) != server || toAddr(id.RemoteAddress) != client {
			t.Errorf("proto %d: id addresses %v/%v, want local %v remote %v", proto, id.LocalAddress, id.RemoteAddress, server, client)
		}
	}
	// A later IPv4 fragment carries no TCP header.
	b := synPacket(t, header.IPv4ProtocolNumber, header.TCPFlagSyn)
	header.IPv4(b).SetFlagsFragmentOffset(0, 64)
	if isPureSYN(b, header.IPv4ProtocolNumber) {
		t.Errorf("IPv4 fragment at offset 64 taken for a SYN")
	}
}

// synPacket builds a TCP packet client:40001 → server:80 with the given
// flags, no payload and valid checksums.
func synPacket(t *testing.T, proto tcpip.NetworkProtocolNumber, flags header.TCPFlags) []byte {
	t.Helper()
	var ipLen int
	var b []byte
	if proto == header.IPv4ProtocolNumber {
		ipLen = header.IPv4MinimumSize
		b = make([]byte, ipLen+header.TCPMinimumSize)
		header.IPv4(b).Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: fromAddr(clientV4), DstAddr: fromAddr(serverV4),
		})
	} else {
		ipLen = header.IPv6MinimumSize
		b = make([]byte, ipLen+header.TCPMinimumSize)
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: fromAddr(clientV6), DstAddr: fromAddr(serverV6),
		})
	}
	th := header.TCP(b[ipLen:])
	th.Encode(&header.TCPFields{
		SrcPort: 40001, DstPort: 80, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1024,
	})
	src, dst := fromAddr(clientV4), fromAddr(serverV4)
	if proto == header.IPv6ProtocolNumber {
		src, dst = fromAddr(clientV6), fromAddr(serverV6)
	} else {
		header.IPv4(b).SetChecksum(^header.IPv4(b).CalculateChecksum())
	}
	th.SetChecksum(^th.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, header.TCPMinimumSize)))
	return b
}

func TestClientGoneAfterUpstreamConnected(t *testing.T) {
	// A SYN the client stack never sent: netward connects to the server,
	// answers SYN-ACK, and the client stack, which knows no such
	// connection, resets it. The flow is counted, not served.
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t, labOptions{handler: &spliceHandler{}})
			l.listen(fam.server, 80)
			proto := header.IPv4ProtocolNumber
			if fam.server.Is6() {
				proto = header.IPv6ProtocolNumber
			}
			if _, err := l.wire.Write(synPacket(t, proto, header.TCPFlagSyn)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "a client handshake failure", func() bool { return l.net.Stats().ClientHandshakeFailures.Load() == 1 })
			if n := l.net.Stats().FlowsServed.Load(); n != 0 {
				t.Errorf("%d flows served, want 0", n)
			}
		})
	}
}

package netstack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outSegment builds a packet as gVisor hands it to the link: headers
// pushed in front of the payload, a full TCP checksum unless partial.
type outSegment struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
	seq, ack         uint32
	flags            header.TCPFlags
	wnd              uint16
	payload          string
	partial          bool // GSO with NEEDS_CSUM: only the pseudo-header sum
}

func (o outSegment) build() *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv6MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData([]byte(o.payload)),
	})
	th := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	th.Encode(&header.TCPFields{SrcPort: o.srcPort, DstPort: o.dstPort, SeqNum: o.seq, AckNum: o.ack,
		DataOffset: header.TCPMinimumSize, Flags: o.flags, WindowSize: o.wnd})
	length := uint16(header.TCPMinimumSize + len(o.payload))
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, fromAddr(o.src), fromAddr(o.dst), length)
	if o.partial {
		pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1460}
		th.SetChecksum(xsum)
	} else {
		xsum = checksum.Combine(xsum, checksum.Checksum([]byte(o.payload), 0))
		th.SetChecksum(^th.CalculateChecksum(xsum))
	}
	if o.src.Is4() {
		ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(header.IPv4MinimumSize) + length, TTL: 64,
			Protocol: uint8(header.TCPProtocolNumber), SrcAddr: fromAddr(o.src), DstAddr: fromAddr(o.dst)})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
		ip.Encode(&header.IPv6Fields{PayloadLength: length, TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: fromAddr(o.src), DstAddr: fromAddr(o.dst)})
	}
	return pkt
}

func TestMergeFIN(t *testing.T) {
	data := outSegment{src: serverV4, dst: clientV4, srcPort: 80, dstPort: 40000, seq: 1000, ack: 77,
		flags: header.TCPFlagAck | header.TCPFlagPsh, wnd: 512, payload: "HTTP/1.1 200 OK\r\n\r\nhi"}
	fin := data
	fin.seq, fin.flags, fin.payload = data.seq+uint32(len(data.payload)), header.TCPFlagAck|header.TCPFlagFin, ""
	v6 := func(o outSegment) outSegment { o.src, o.dst = serverV6, clientV6; return o }
	for _, c := range []struct {
		name      string
		pkt, next outSegment
		want      bool
	}{
		{"ipv4", data, fin, true},
		{"ipv6", v6(data), v6(fin), true},
		{"partial checksum", func() outSegment { d := data; d.partial = true; return d }(), fin, true},
		{"FIN with data", data, func() outSegment { f := fin; f.payload = "x"; return f }(), false},
		{"FIN not right behind", data, func() outSegment { f := fin; f.seq++; return f }(), false},
		{"FIN acknowledges more", data, func() outSegment { f := fin; f.ack++; return f }(), false},
		{"FIN with another window", data, func() outSegment { f := fin; f.wnd++; return f }(), false},
		{"other connection's FIN", data, func() outSegment { f := fin; f.dstPort++; return f }(), false},
		{"other address's FIN", data, func() outSegment { f := fin; f.dst = serverV4; return f }(), false},
		{"other family's FIN", data, v6(fin), false},
		{"next is data", data, func() outSegment { f := fin; f.flags = header.TCPFlagAck; return f }(), false},
		{"next is RST", data, func() outSegment { f := fin; f.flags |= header.TCPFlagRst; return f }(), false},
		{"pkt has no data", func() outSegment { d := data; d.payload = ""; return d }(), fin, false},
		{"pkt is a SYN", func() outSegment { d := data; d.flags |= header.TCPFlagSyn; return d }(), fin, false},
		{"pkt has its FIN", func() outSegment { d := data; d.flags |= header.TCPFlagFin; return d }(), fin, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt, next := c.pkt.build(), c.next.build()
			defer pkt.DecRef()
			defer next.DecRef()
			if got := mergeFIN(pkt, next); got != c.want {
				t.Fatalf("mergeFIN = %v, want %v", got, c.want)
			}
			th := header.TCP(pkt.TransportHeader().Slice())
			if got := th.Flags().Contains(header.TCPFlagFin); got != c.want && !c.pkt.flags.Contains(header.TCPFlagFin) {
				t.Errorf("FIN flag %v after mergeFIN = %v", got, c.want)
			}
			if c.want && !th.Flags().Contains(header.TCPFlagPsh|header.TCPFlagAck) {
				t.Errorf("flags %v: ACK or PSH lost", th.Flags())
			}
			// The checksum must still hold over the changed header (the
			// full one), or still be the pseudo-header sum (partial).
			length := uint16(len(th) + len(c.pkt.payload))
			xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, fromAddr(c.pkt.src), fromAddr(c.pkt.dst), length)
			if c.pkt.partial {
				if th.Checksum() != xsum {
					t.Errorf("partial checksum %#x changed, want %#x", th.Checksum(), xsum)
				}
			} else if !th.IsChecksumValid(fromAddr(c.pkt.src), fromAddr(c.pkt.dst), checksum.Checksum([]byte(c.pkt.payload), 0), uint16(len(c.pkt.payload))) {
				t.Errorf("checksum invalid after mergeFIN")
			}
		})
	}
}

func TestLastAnswerCarriesFIN(t *testing.T) {
	// A server that answers and closes: through the TUN writer (as netward
	// run writes), the client gets the answer and the FIN in one segment,
	// and every byte.
	forEach(t, func(t *testing.T, fam family, vnet bool) {
		l := newLab(t, labOptions{vnet: vnet, handler: &finalHandler{}, opts: func(o *Options) { o.TUNWriters, o.TUNDirectMax = 1, DefaultTUNDirectMax }})
		l.serveAndClose(fam.server, 80, "answer")
		const flows = 10
		for i := range flows {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			c, err := l.dial(ctx, netip.AddrPortFrom(fam.server, 80))
			if err != nil {
				cancel()
				t.Fatalf("flow %d: dial: %v", i, err)
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			b, err := io.ReadAll(c)
			c.Close()
			cancel()
			if string(b) != "answer" || err != nil {
				t.Fatalf("flow %d: read %q, %v", i, b, err)
			}
		}
		// Both segments are written back to back, but the writer may
		// have woken between them: most, not all, merge.
		if got := l.net.Stats().TxFINsMerged.Load(); got < flows/2 {
			t.Errorf("%d of %d FINs rode on the answer, want most", got, flows)
		}
	})
}

// finalHandler relays the server's answer to the client with WriteFinal once
// the server's FIN is in, as the relay does, and ignores the client's input.
type finalHandler struct{}

func (finalHandler) Admit(*Flow) Admission { return AdmitAccept }
func (finalHandler) Serve(f *Flow, c, s Conn) {
	defer c.Close()
	defer s.Close()
	buf := make([]byte, 64)
	var got []byte
	for {
		n, err := s.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if _, err := c.(*tcpConn).WriteFinal(got); err != nil {
		return
	}
	io.Copy(io.Discard, c)
}

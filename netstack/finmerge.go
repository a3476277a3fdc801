package netstack

import (
	"bytes"
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// mergeFIN lets pkt carry the bare FIN next that gVisor sends right behind
// it, and reports whether it did; the caller then writes pkt only.
//
// gVisor sends a FIN as a segment of its own ("Netstack queues FIN
// segments without data"), where a kernel sender's FIN rides on its last
// unsent data. A client that gets an answer and the FIN in two packets
// often closes before the second one arrives, and so keeps TIME_WAIT (the
// port exhaustion of datapath-notes.md); it also costs a TUN write and a
// packet for the client to take. tcpConn.WriteFinal sends the two back to
// back so that they meet in one batch of a TUN writer.
//
// next must be a FIN with no data and nothing but ACK (and PSH) besides,
// of pkt's connection, whose sequence number is the end of pkt's data and
// which acknowledges and advertises what pkt does; pkt must carry data and
// no SYN, FIN, RST or URG. pkt's header is changed in place: gVisor builds
// the headers of every transmission afresh, so a retransmission is not
// affected.
func mergeFIN(pkt, next *stack.PacketBuffer) bool {
	size := pkt.Data().Size()
	if next.Data().Size() != 0 || size == 0 {
		return false
	}
	nth := next.TransportHeader().Slice()
	if len(nth) < header.TCPMinimumSize || header.TCPFlags(nth[header.TCPFlagsOffset])&^header.TCPFlagPsh != header.TCPFlagAck|header.TCPFlagFin {
		return false
	}
	th := pkt.TransportHeader().Slice()
	if len(th) < header.TCPMinimumSize {
		return false
	}
	flags := header.TCPFlags(th[header.TCPFlagsOffset])
	if flags&header.TCPFlagAck == 0 || flags&(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst|header.TCPFlagUrg) != 0 {
		return false
	}
	t, nt := header.TCP(th), header.TCP(nth)
	if t.SourcePort() != nt.SourcePort() || t.DestinationPort() != nt.DestinationPort() ||
		t.AckNumber() != nt.AckNumber() || t.WindowSize() != nt.WindowSize() ||
		nt.SequenceNumber() != t.SequenceNumber()+uint32(size) ||
		!sameIPAddresses(pkt.NetworkHeader().Slice(), next.NetworkHeader().Slice()) {
		return false
	}
	word := binary.BigEndian.Uint16(th[header.TCPFlagsOffset-1:])
	th[header.TCPFlagsOffset] |= byte(header.TCPFlagFin)
	if pkt.GSOOptions.Type == stack.GSONone || !pkt.GSOOptions.NeedsCsum {
		// A full checksum: update it for the changed word (RFC 1624,
		// eqn. 3). A partial one (NEEDS_CSUM) covers only the pseudo
		// header; the kernel sums the TCP header itself.
		sum := checksum.Combine(checksum.Combine(^t.Checksum(), ^word), word|uint16(header.TCPFlagFin))
		t.SetChecksum(^sum)
	}
	return true
}

// sameIPAddresses reports whether two IP headers have the same source and
// destination addresses.
func sameIPAddresses(a, b []byte) bool {
	switch {
	case len(a) >= header.IPv4MinimumSize && len(b) >= header.IPv4MinimumSize && a[0]>>4 == 4 && b[0]>>4 == 4:
		return bytes.Equal(a[12:20], b[12:20])
	case len(a) >= header.IPv6MinimumSize && len(b) >= header.IPv6MinimumSize && a[0]>>4 == 6 && b[0]>>4 == 6:
		return bytes.Equal(a[8:40], b[8:40])
	}
	return false
}

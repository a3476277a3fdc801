package datagram

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// packet is what the guard needs of one IP/UDP packet: slices into the
// caller's bytes, valid as long as they are.
type packet struct {
	v6       bool
	src, dst netip.AddrPort
	payload  []byte // the UDP payload
	raw      []byte // the whole IP packet
}

var errNotUDP = errors.New("not a whole IPv4/IPv6 UDP packet")

// parsePacket reads the addresses and UDP payload of b. netstack has
// checked the lengths and the checksum already; this checks again, as
// every reader of untrusted bytes must.
func parsePacket(b []byte, p *packet) error {
	if len(b) == 0 {
		return errNotUDP
	}
	var off, end int
	switch b[0] >> 4 {
	case 4:
		if len(b) < header.IPv4MinimumSize {
			return errNotUDP
		}
		ip := header.IPv4(b)
		off, end = int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.Protocol() != uint8(header.UDPProtocolNumber) || off < header.IPv4MinimumSize || end > len(b) || end < off+header.UDPMinimumSize {
			return errNotUDP
		}
		p.v6 = false
		s, d := ip.SourceAddress().As4(), ip.DestinationAddress().As4()
		u := header.UDP(b[off:])
		p.src = netip.AddrPortFrom(netip.AddrFrom4(s), u.SourcePort())
		p.dst = netip.AddrPortFrom(netip.AddrFrom4(d), u.DestinationPort())
	case 6:
		if len(b) < header.IPv6MinimumSize {
			return errNotUDP
		}
		ip := header.IPv6(b)
		off, end = header.IPv6MinimumSize, header.IPv6MinimumSize+int(ip.PayloadLength())
		if ip.NextHeader() != uint8(header.UDPProtocolNumber) || end > len(b) || end < off+header.UDPMinimumSize {
			return errNotUDP
		}
		p.v6 = true
		s, d := ip.SourceAddress().As16(), ip.DestinationAddress().As16()
		u := header.UDP(b[off:])
		p.src = netip.AddrPortFrom(netip.AddrFrom16(s), u.SourcePort())
		p.dst = netip.AddrPortFrom(netip.AddrFrom16(d), u.DestinationPort())
	default:
		return errNotUDP
	}
	ulen := int(binary.BigEndian.Uint16(b[off+4:]))
	if ulen < header.UDPMinimumSize || off+ulen > end {
		return errNotUDP
	}
	p.payload = b[off+header.UDPMinimumSize : off+ulen]
	p.raw = b[:end]
	return nil
}

// defaultTTL is the hop limit of the packets netward makes.
const defaultTTL = 64

// appendUDP appends an IP/UDP packet from src to dst carrying payload,
// checksums complete.
func appendUDP(b []byte, src, dst netip.AddrPort, payload []byte) []byte {
	ulen := header.UDPMinimumSize + len(payload)
	b = appendIP(b, src.Addr(), dst.Addr(), header.UDPProtocolNumber, ulen)
	uoff := len(b)
	b = append(b, make([]byte, header.UDPMinimumSize)...)
	b = append(b, payload...)
	u := header.UDP(b[uoff:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(ulen)})
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, addr(src.Addr()), addr(dst.Addr()), uint16(ulen))
	c := ^checksum.Checksum(b[uoff:], xsum)
	if c == 0 {
		c = 0xffff
	}
	u.SetChecksum(c)
	return b
}

// appendIP appends an IPv4 or IPv6 header for a payload of n bytes.
func appendIP(b []byte, src, dst netip.Addr, proto tcpip.TransportProtocolNumber, n int) []byte {
	if src.Is4() {
		off := len(b)
		b = append(b, make([]byte, header.IPv4MinimumSize)...)
		ip := header.IPv4(b[off:])
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(header.IPv4MinimumSize + n),
			TTL:         defaultTTL,
			Protocol:    uint8(proto),
			SrcAddr:     addr(src),
			DstAddr:     addr(dst),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		return b
	}
	off := len(b)
	b = append(b, make([]byte, header.IPv6MinimumSize)...)
	header.IPv6(b[off:]).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(n),
		TransportProtocol: proto,
		HopLimit:          defaultTTL,
		SrcAddr:           addr(src),
		DstAddr:           addr(dst),
	})
	return b
}

func addr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// ICMP port unreachable carries as much of the offending packet as keeps
// the error within the minimum MTU (RFC 1812 §4.3.2.3, RFC 4443 §3.1).
const (
	icmpQuoteV4 = 576 - header.IPv4MinimumSize - header.ICMPv4MinimumSize
	icmpQuoteV6 = 1280 - header.IPv6MinimumSize - header.ICMPv6MinimumSize
)

// appendPortUnreachable appends the ICMP "port unreachable" answer to p,
// from p's destination to its source: what the server's host would send if
// nothing listened on the port, so the client's socket fails at once.
func appendPortUnreachable(b []byte, p *packet) []byte {
	quote := p.raw
	if p.v6 {
		quote = quote[:min(len(quote), icmpQuoteV6)]
		n := header.ICMPv6MinimumSize + len(quote)
		b = appendIP(b, p.dst.Addr(), p.src.Addr(), header.ICMPv6ProtocolNumber, n)
		off := len(b)
		b = append(b, make([]byte, header.ICMPv6MinimumSize)...)
		b = append(b, quote...)
		icmp := header.ICMPv6(b[off:])
		icmp.SetType(header.ICMPv6DstUnreachable)
		icmp.SetCode(header.ICMPv6PortUnreachable)
		icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: icmp[:header.ICMPv6MinimumSize], Src: addr(p.dst.Addr()), Dst: addr(p.src.Addr()),
			PayloadCsum: checksum.Checksum(quote, 0), PayloadLen: len(quote),
		}))
		return b
	}
	quote = quote[:min(len(quote), icmpQuoteV4)]
	n := header.ICMPv4MinimumSize + len(quote)
	b = appendIP(b, p.dst.Addr(), p.src.Addr(), header.ICMPv4ProtocolNumber, n)
	off := len(b)
	b = append(b, make([]byte, header.ICMPv4MinimumSize)...)
	b = append(b, quote...)
	icmp := header.ICMPv4(b[off:])
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(header.ICMPv4PortUnreachable)
	icmp.SetChecksum(^checksum.Checksum(b[off:], 0))
	return b
}

package netstack

import (
	"encoding/binary"
	"errors"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// virtioNetHdrLen is the size of struct virtio_net_hdr (linux/virtio_net.h),
// which the kernel puts in front of every packet on a TUN opened with
// IFF_VNET_HDR (TUNSETVNETHDRSZ default). Its fields are in the host's byte
// order for a TUN that has not set TUNSETVNETLE/BE; netward runs on
// little-endian hosts (amd64, arm64), checked in tun_linux.go.
const virtioNetHdrLen = 10

// Flags and GSO types of struct virtio_net_hdr.
const (
	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum is partial (pseudo-header only)
	vnetFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID: checksum already verified

	vnetGSONone  = 0
	vnetGSOTCPv4 = 1
	vnetGSOTCPv6 = 4
	vnetGSOECN   = 0x80
)

// virtioNetHdr is struct virtio_net_hdr.
type virtioNetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

var errShortVnetHdr = errors.New("netstack: packet shorter than virtio_net_hdr")

func (h *virtioNetHdr) decode(b []byte) error {
	if len(b) < virtioNetHdrLen {
		return errShortVnetHdr
	}
	h.flags = b[0]
	h.gsoType = b[1]
	h.hdrLen = binary.LittleEndian.Uint16(b[2:])
	h.gsoSize = binary.LittleEndian.Uint16(b[4:])
	h.csumStart = binary.LittleEndian.Uint16(b[6:])
	h.csumOffset = binary.LittleEndian.Uint16(b[8:])
	return nil
}

func (h *virtioNetHdr) encode(b []byte) {
	_ = b[virtioNetHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.LittleEndian.PutUint16(b[2:], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:], h.csumOffset)
}

// packetProto returns the network protocol of an IP packet from its version
// nibble, or 0 if it is neither IPv4 nor IPv6 or too short to be either.
func packetProto(b []byte) tcpip.NetworkProtocolNumber {
	if len(b) == 0 {
		return 0
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) >= header.IPv4MinimumSize {
			return header.IPv4ProtocolNumber
		}
	case 6:
		if len(b) >= header.IPv6MinimumSize {
			return header.IPv6ProtocolNumber
		}
	}
	return 0
}

// isTCP reports whether an IP packet (version already known) carries TCP
// directly: no IPv6 extension headers.
func isTCP(b []byte, proto tcpip.NetworkProtocolNumber) bool {
	if proto == header.IPv4ProtocolNumber {
		return header.IPv4(b).Protocol() == uint8(header.TCPProtocolNumber)
	}
	return header.IPv6(b).NextHeader() == uint8(header.TCPProtocolNumber)
}

// tcpChecksumValid verifies the TCP checksum of a whole IPv4 or IPv6 packet.
// The endpoint advertises CapabilityRXChecksumOffload, so gVisor verifies no
// checksum itself; the kernel vouches for packets it flags NEEDS_CSUM
// (locally built, partial) or DATA_VALID (verified by a NIC), and every
// other packet is checked here. Packets that are not plain TCP (IPv6
// extension headers, IPv4 fragments, other protocols) are refused: steering
// only sends unfragmented TCP to the TUN.
func tcpChecksumValid(b []byte, proto tcpip.NetworkProtocolNumber) bool {
	var seg []byte
	var xsum uint16
	switch proto {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		tl := int(ip.TotalLength())
		if hl < header.IPv4MinimumSize || tl < hl || tl > len(b) ||
			ip.TransportProtocol() != header.TCPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
			return false
		}
		seg = b[hl:tl]
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(seg)))
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(b)
		pl := int(ip.PayloadLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || header.IPv6MinimumSize+pl > len(b) {
			return false
		}
		seg = b[header.IPv6MinimumSize : header.IPv6MinimumSize+pl]
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(seg)))
	default:
		return false
	}
	if len(seg) < header.TCPMinimumSize {
		return false
	}
	return checksum.Checksum(seg, xsum) == 0xffff
}

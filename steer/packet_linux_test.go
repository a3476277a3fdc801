package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// pkt is a parsed IPv4/IPv6 packet, as much as the tests need.
type pkt struct {
	v6       bool
	src, dst netip.Addr
	proto    uint8
	frag     bool // a fragment (IPv4 MF or offset, IPv6 Fragment header)
	sport    uint16
	dport    uint16
	seq, ack uint32
	flags    uint8
	payload  []byte
}

func (p *pkt) String() string {
	if p.proto != unix.IPPROTO_TCP || p.frag {
		return fmt.Sprintf("%v > %v proto %d frag %v", p.src, p.dst, p.proto, p.frag)
	}
	return fmt.Sprintf("%v > %v tcp flags %#x seq %d ack %d len %d",
		netip.AddrPortFrom(p.src, p.sport), netip.AddrPortFrom(p.dst, p.dport), p.flags, p.seq, p.ack, len(p.payload))
}

func (p *pkt) isTCP(flags uint8) bool {
	return p.proto == unix.IPPROTO_TCP && !p.frag && p.flags&(tcpSYN|tcpACK|tcpFIN|tcpRST) == flags
}

func parsePkt(b []byte) (*pkt, error) {
	if len(b) < 1 {
		return nil, errors.New("empty packet")
	}
	p := &pkt{}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return nil, errors.New("short ipv4")
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 || total < ihl || total > len(b) {
			return nil, errors.New("bad ipv4 lengths")
		}
		p.src, _ = netip.AddrFromSlice(b[12:16])
		p.dst, _ = netip.AddrFromSlice(b[16:20])
		p.proto = b[9]
		p.frag = binary.BigEndian.Uint16(b[6:])&0x3fff != 0
		l4 = b[ihl:total]
	case 6:
		if len(b) < 40 {
			return nil, errors.New("short ipv6")
		}
		p.v6 = true
		p.src, _ = netip.AddrFromSlice(b[8:24])
		p.dst, _ = netip.AddrFromSlice(b[24:40])
		plen := int(binary.BigEndian.Uint16(b[4:]))
		if 40+plen > len(b) {
			return nil, errors.New("bad ipv6 length")
		}
		p.proto = b[6]
		l4 = b[40 : 40+plen]
		if p.proto == unix.IPPROTO_FRAGMENT {
			if len(l4) < 8 {
				return nil, errors.New("short fragment header")
			}
			p.frag = true
			p.proto = l4[0]
			l4 = l4[8:]
		}
	default:
		return nil, fmt.Errorf("ip version %d", b[0]>>4)
	}
	if p.proto == unix.IPPROTO_TCP && !p.frag {
		if len(l4) < 20 {
			return nil, errors.New("short tcp")
		}
		p.sport = binary.BigEndian.Uint16(l4[0:])
		p.dport = binary.BigEndian.Uint16(l4[2:])
		p.seq = binary.BigEndian.Uint32(l4[4:])
		p.ack = binary.BigEndian.Uint32(l4[8:])
		off := int(l4[12]>>4) * 4
		if off < 20 || off > len(l4) {
			return nil, errors.New("bad tcp offset")
		}
		p.flags = l4[13]
		p.payload = l4[off:]
	}
	return p, nil
}

func checksum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// tcpPacket builds an IPv4 or IPv6 TCP segment with valid checksums.
func tcpPacket(src, dst netip.AddrPort, seq, ack uint32, flags uint8, payload []byte) []byte {
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	copy(tcp[20:], payload)

	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	pseudo := checksum(0, s)
	pseudo = checksum(pseudo, d)
	pseudo += unix.IPPROTO_TCP + uint32(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:], fold(checksum(pseudo, tcp)))

	if src.Addr().Is4() {
		ip := make([]byte, 20, 20+len(tcp))
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		binary.BigEndian.PutUint16(ip[4:], uint16(seq)) // id
		ip[8] = 64
		ip[9] = unix.IPPROTO_TCP
		copy(ip[12:], s)
		copy(ip[16:], d)
		binary.BigEndian.PutUint16(ip[10:], fold(checksum(0, ip)))
		return append(ip, tcp...)
	}
	ip := make([]byte, 40, 40+len(tcp))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
	ip[6] = unix.IPPROTO_TCP
	ip[7] = 64
	copy(ip[8:], s)
	copy(ip[24:], d)
	return append(ip, tcp...)
}

// fragments splits a packet built by tcpPacket into two fragments, the
// first carrying firstLen (a multiple of 8) bytes of the TCP segment.
func fragments(p []byte, firstLen int, id uint32) [][]byte {
	if p[0]>>4 == 4 {
		hdr, body := p[:20], p[20:]
		mk := func(part []byte, offset int, more bool) []byte {
			f := append(append([]byte(nil), hdr...), part...)
			binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
			binary.BigEndian.PutUint16(f[4:], uint16(id))
			fo := uint16(offset / 8)
			if more {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(f[6:], fo)
			f[10], f[11] = 0, 0
			binary.BigEndian.PutUint16(f[10:], fold(checksum(0, f[:20])))
			return f
		}
		return [][]byte{mk(body[:firstLen], 0, true), mk(body[firstLen:], firstLen, false)}
	}
	hdr, body := p[:40], p[40:]
	mk := func(part []byte, offset int, more bool) []byte {
		f := append([]byte(nil), hdr...)
		f[6] = unix.IPPROTO_FRAGMENT
		fh := make([]byte, 8)
		fh[0] = unix.IPPROTO_TCP
		fo := uint16(offset/8) << 3
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
		f = append(append(f, fh...), part...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		return f
	}
	return [][]byte{mk(body[:firstLen], 0, true), mk(body[firstLen:], firstLen, false)}
}

// testTUN is a TUN device opened by the test in a lab namespace, standing
// in for netward's netstack: the test reads what the kernel steers into it
// and writes what gVisor would send.
type testTUN struct {
	name string
	f    *os.File
}

// openTUN creates (or attaches to) the TUN name in ns and sets it up, as
// netstack does. The fd is closed in t.Cleanup unless closed before.
func (l *lab) openTUN(ns netns.NsHandle, name string, persist bool) *testTUN {
	l.t.Helper()
	tt := &testTUN{name: name}
	l.must(inNS(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		if persist {
			if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
				unix.Close(fd)
				return err
			}
		}
		tt.f = os.NewFile(uintptr(fd), name)
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(link)
	}))
	l.t.Cleanup(func() { tt.f.Close() })
	return tt
}

// close detaches the test from the TUN; a non-persistent TUN disappears
// with it, as netward's does when the process dies.
func (tt *testTUN) close() error { return tt.f.Close() }

func (tt *testTUN) write(b []byte) error {
	_, err := tt.f.Write(b)
	return err
}

// expect reads packets until one matches or d passes. It also returns
// every packet it read, for loop checks and failure messages.
func (tt *testTUN) expect(d time.Duration, match func(*pkt) bool) (*pkt, []*pkt, error) {
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	var seen []*pkt
	for {
		if err := tt.f.SetReadDeadline(deadline); err != nil {
			return nil, seen, err
		}
		n, err := tt.f.Read(buf)
		if err != nil {
			return nil, seen, fmt.Errorf("%s: %w (read: %s)", tt.name, err, pktList(seen))
		}
		p, perr := parsePkt(append([]byte(nil), buf[:n]...))
		if perr != nil {
			continue // not IP: nothing the tests look for
		}
		seen = append(seen, p)
		if match(p) {
			return p, seen, nil
		}
	}
}

func pktList(ps []*pkt) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return "[" + strings.Join(s, "; ") + "]"
}

// none reads for d and fails if a packet matches.
func (tt *testTUN) none(d time.Duration, match func(*pkt) bool) error {
	p, _, err := tt.expect(d, match)
	if err == nil {
		return fmt.Errorf("unexpected packet on %s: %v", tt.name, p)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

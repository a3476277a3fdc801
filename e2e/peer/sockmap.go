package peer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// SockMap moves a relay's bytes in the kernel with eBPF instead of
// splice(2): both sockets of a pair go into a SOCKHASH whose sk_skb
// verdict program redirects every skb a socket receives to the egress of
// its peer, so the bytes never wake the relay (issue 18: "measure eBPF
// sockmap against splice and keep what is faster").
//
// A socket's key is its own 4-tuple as the verdict program reads it from
// the skb (remote and local address as IPv6, IPv4-mapped; the remote
// port in network order in the high half, the local port in host order),
// and the value stored under it is the peer: the program needs one lookup.
//
// What is not in the kernel's path stays with the relay: bytes queued on
// a socket before it entered the map are pushed through the verdict at
// once (SO_RCVLOWAT signals data ready), bytes the program could not
// redirect (the peer not in the map yet) land in the socket's own queue
// and the relay forwards them, and a FIN is passed on only after every
// byte the source received has reached the peer's send queue (TCP_INFO
// and SIOCOUTQ), since redirected bytes wait in the peer's psock queue
// and a shutdown before them would lose them.
type SockMap struct {
	m    *ebpf.Map
	prog *ebpf.Program
	// Pairs counts the pairs that went into the map; Fallback the bytes
	// the relay forwarded itself.
	Pairs, Fallback atomic.Uint64
}

// sockKeyLen is the SOCKHASH key: remote IPv6 (16), local IPv6 (16),
// remote port word (4), local port word (4).
const sockKeyLen = 40

// __sk_buff offsets the program reads (include/uapi/linux/bpf.h).
const (
	skbRemoteIP6  = 100
	skbLocalIP6   = 116
	skbRemotePort = 132
	skbLocalPort  = 136
)

// NewSockMap loads the map and the verdict program and attaches it.
func NewSockMap(maxPairs int) (*SockMap, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "nw_relay", Type: ebpf.SockHash, KeySize: sockKeyLen, ValueSize: 8, MaxEntries: uint32(2 * maxPairs)})
	if err != nil {
		return nil, fmt.Errorf("sockmap: SOCKHASH: %w", err)
	}
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	for i := int16(0); i < 4; i++ {
		insns = append(insns,
			asm.LoadMem(asm.R3, asm.R6, skbRemoteIP6+4*i, asm.Word), asm.StoreMem(asm.RFP, -40+4*i, asm.R3, asm.Word),
			asm.LoadMem(asm.R3, asm.R6, skbLocalIP6+4*i, asm.Word), asm.StoreMem(asm.RFP, -24+4*i, asm.R3, asm.Word))
	}
	insns = append(insns,
		asm.LoadMem(asm.R3, asm.R6, skbRemotePort, asm.Word), asm.StoreMem(asm.RFP, -8, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbLocalPort, asm.Word), asm.StoreMem(asm.RFP, -4, asm.R3, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, m.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -40),
		asm.Mov.Imm(asm.R4, 0), // egress of the peer
		asm.FnSkRedirectHash.Call(),
		// No peer in the map (SK_DROP): keep the bytes on this socket
		// (SK_PASS) for the relay to forward, rather than lose them.
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "nw_relay_verdict", Type: ebpf.SkSKB, AttachType: ebpf.AttachSkSKBVerdict, Instructions: insns, License: "GPL"})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("sockmap: verdict program: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.FD(), Program: prog, Attach: ebpf.AttachSkSKBVerdict}); err != nil {
		prog.Close()
		m.Close()
		return nil, fmt.Errorf("sockmap: attach verdict: %w", err)
	}
	return &SockMap{m: m, prog: prog}, nil
}

// Close releases the program and the map (sockets still in it leave it).
func (s *SockMap) Close() error { return errors.Join(s.prog.Close(), s.m.Close()) }

// sockKey is the key the verdict program builds for an skb received on a
// socket with these ends.
func sockKey(local, remote netip.AddrPort) [sockKeyLen]byte {
	var k [sockKeyLen]byte
	r, l := remote.Addr().As16(), local.Addr().As16() // IPv4: IPv4-mapped, as the kernel has it
	copy(k[0:16], r[:])
	copy(k[16:32], l[:])
	binary.BigEndian.PutUint16(k[34:36], remote.Port()) // skc_dport (network order) << 16
	binary.LittleEndian.PutUint16(k[36:38], local.Port())
	return k
}

// Relay moves a and b's bytes through the map until both directions are
// done, as Relay does with splice; then it closes both.
func (s *SockMap) Relay(a, b *net.TCPConn) error {
	ka := sockKey(a.LocalAddr().(*net.TCPAddr).AddrPort(), a.RemoteAddr().(*net.TCPAddr).AddrPort())
	kb := sockKey(b.LocalAddr().(*net.TCPAddr).AddrPort(), b.RemoteAddr().(*net.TCPAddr).AddrPort())
	// What a and b count as sent before the relay moves a byte (an
	// active opener's count includes its SYN): half subtracts it.
	baseA, baseB := sentBase(a), sentBase(b)
	// b goes in under a's key (where a's bytes go), then a under b's.
	if err := s.insert(ka[:], b); err != nil {
		return err
	}
	if err := s.insert(kb[:], a); err != nil {
		s.m.Delete(ka[:])
		return err
	}
	s.Pairs.Add(1)
	// Bytes queued before a and b entered the map go through the
	// verdict now, in order.
	for _, c := range []*net.TCPConn{a, b} {
		setRcvLowat(c)
	}
	done := make(chan struct{})
	go func() {
		s.half(b, a, baseB)
		close(done)
	}()
	s.half(a, b, baseA)
	<-done
	s.m.Delete(ka[:])
	s.m.Delete(kb[:])
	a.Close()
	b.Close()
	return nil
}

func (s *SockMap) insert(key []byte, c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) { uerr = s.m.Update(key, uint64(fd), ebpf.UpdateAny) }); err != nil {
		return err
	}
	if uerr != nil {
		return fmt.Errorf("sockmap: insert: %w", uerr)
	}
	return nil
}

// half is one direction: it forwards what the program left on src (its
// peer was not in the map yet), and on src's EOF waits until every byte
// src received is in dst's send queue before it shuts dst's write side.
func (s *SockMap) half(dst, src *net.TCPConn, dstBase uint64) {
	buf := make([]byte, 32<<10)
	var readBySelf, wroteBySelf uint64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			readBySelf += uint64(n)
			s.Fallback.Add(uint64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				dst.Close()
				src.Close()
				return
			}
			wroteBySelf += uint64(n)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
				src.Close()
				return
			}
			break
		}
	}
	// Redirected = received (less the FIN, which counts one) - read by
	// the relay; dst must have all of them plus what the relay wrote in
	// its send queue or acked.
	deadline := time.Now().Add(10 * time.Second)
	for {
		recv, ok1 := bytesReceived(src)
		acked, outq, ok2 := bytesQueued(dst)
		if !ok1 || !ok2 || acked+outq-dstBase >= recv-1-readBySelf+wroteBySelf || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	dst.CloseWrite()
}

// sentBase is c's acked + queued count before the relay writes to it.
func sentBase(c *net.TCPConn) uint64 {
	acked, outq, _ := bytesQueued(c)
	return acked + outq
}

// setRcvLowat sets SO_RCVLOWAT to 1: the kernel then checks the queue and
// signals data ready, which runs the verdict over bytes already queued.
func setRcvLowat(c *net.TCPConn) {
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1) })
	}
}

func bytesReceived(c *net.TCPConn) (uint64, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if ierr != nil || info == nil {
		return 0, false
	}
	return info.Bytes_received, true
}

func bytesQueued(c *net.TCPConn) (acked, outq uint64, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var info *unix.TCPInfo
	var q int
	var ierr, qerr error
	rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		q, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	})
	if ierr != nil || qerr != nil || info == nil {
		return 0, 0, false
	}
	return info.Bytes_acked, uint64(q), true
}

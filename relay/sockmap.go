package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// SockMap moves a handed-off flow's bytes between its two kernel sockets
// with eBPF instead of splice(2) (--handoff-sockmap): both sockets go into
// a SOCKHASH whose sk_skb verdict program redirects every skb a socket
// receives to the egress of its peer, so the bytes never wake netward.
// Measured on the lab (make bench -relay -relay-sockmap), it halves the
// added latency of a small request/response and costs single-stream bulk
// throughput more than half: splice stays the default.
//
// A socket's key is its own 4-tuple as the verdict program reads it from
// the skb (remote and local address as IPv6, IPv4-mapped; the remote
// port in network order in the high half of its word, the local port in
// host order), and the value stored under it is the peer: one lookup.
//
// What the kernel does not carry stays with netward: bytes queued on a
// socket before it entered the map are pushed through the verdict at once
// (SO_RCVLOWAT signals data ready, in order), bytes the program could not
// redirect (no peer in the map) land in the socket's own queue and Half
// forwards them, and a FIN is passed on only once every byte the source
// received is in the peer's send queue (TCP_INFO and SIOCOUTQ): redirected
// bytes wait in the peer's psock queue, and a shutdown before them would
// lose them.
type SockMap struct {
	m    *ebpf.Map
	prog *ebpf.Program
	// Pairs counts the pairs that went into the map; Fallback the bytes
	// Half forwarded itself.
	Pairs, Fallback atomic.Uint64
}

// sockKeyLen is the SOCKHASH key: remote IPv6 (16), local IPv6 (16),
// remote port word (4), local port word (4).
const sockKeyLen = 40

// __sk_buff offsets the program reads (include/uapi/linux/bpf.h).
const (
	skbLen        = 0
	skbRemoteIP6  = 100
	skbLocalIP6   = 116
	skbRemotePort = 132
	skbLocalPort  = 136
)

// NewSockMap loads the map (room for maxPairs pairs) and the verdict
// program, and attaches it. It needs CAP_BPF and CAP_NET_ADMIN.
func NewSockMap(maxPairs int) (*SockMap, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "nw_relay", Type: ebpf.SockHash, KeySize: sockKeyLen, ValueSize: 8, MaxEntries: uint32(2 * max(maxPairs, 1))})
	if err != nil {
		return nil, fmt.Errorf("sockmap: SOCKHASH: %w", err)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// An skb with no payload (a FIN on its own) is dropped: redirected,
		// the peer's psock would send zero bytes, which it takes for a
		// broken pipe (it stops sending and fails the socket with EPIPE).
		// The FIN has been taken already (the socket reads EOF); Half
		// passes it on.
		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "redirect"),
		asm.Mov.Imm(asm.R0, 0), // SK_DROP
		asm.Return(),
	}
	for i := int16(0); i < 4; i++ {
		remote := asm.LoadMem(asm.R3, asm.R6, skbRemoteIP6+4*i, asm.Word)
		if i == 0 {
			remote = remote.WithSymbol("redirect")
		}
		insns = append(insns,
			remote, asm.StoreMem(asm.RFP, -40+4*i, asm.R3, asm.Word),
			asm.LoadMem(asm.R3, asm.R6, skbLocalIP6+4*i, asm.Word), asm.StoreMem(asm.RFP, -24+4*i, asm.R3, asm.Word))
	}
	insns = append(insns,
		asm.LoadMem(asm.R3, asm.R6, skbRemotePort, asm.Word), asm.StoreMem(asm.RFP, -8, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbLocalPort, asm.Word), asm.StoreMem(asm.RFP, -4, asm.R3, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, m.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -40),
		asm.Mov.Imm(asm.R4, 0), // to the peer's egress
		asm.FnSkRedirectHash.Call(),
		// No peer in the map (SK_DROP): keep the bytes on this socket
		// (SK_PASS) for Half to forward, rather than lose them.
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
	r, l := remote.Addr().As16(), local.Addr().As16() // IPv4: IPv4-mapped, as the kernel reads it
	copy(k[0:16], r[:])
	copy(k[16:32], l[:])
	binary.BigEndian.PutUint16(k[34:36], remote.Port())
	binary.LittleEndian.PutUint16(k[36:38], local.Port())
	return k
}

// SockPair is two sockets whose bytes the kernel moves to each other.
type SockPair struct {
	s      *SockMap
	ka, kb [sockKeyLen]byte
	a, b   *net.TCPConn
	// Per socket: what it had received and not yet delivered when it
	// entered the map (the verdict takes those bytes too), and what it
	// had sent (acked + queued) before: Half's accounting starts there.
	recvBaseA, recvBaseB, sentBaseA, sentBaseB uint64
}

// Pair puts a and b in the map. From then on every byte either receives
// goes to the other in the kernel; run Half both ways, then Close.
func (s *SockMap) Pair(a, b *net.TCPConn) (*SockPair, error) {
	p := &SockPair{s: s, a: a, b: b}
	la, ra, err1 := ends(a)
	lb, rb, err2 := ends(b)
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	p.ka, p.kb = sockKey(la, ra), sockKey(lb, rb)
	var ok bool
	if p.recvBaseA, p.sentBaseA, ok = bases(a); !ok {
		return nil, errors.New("sockmap: TCP_INFO")
	}
	if p.recvBaseB, p.sentBaseB, ok = bases(b); !ok {
		return nil, errors.New("sockmap: TCP_INFO")
	}
	// b goes in under a's key (where a's bytes go), then a under b's.
	if err := s.insert(p.ka[:], b); err != nil {
		return nil, err
	}
	if err := s.insert(p.kb[:], a); err != nil {
		s.m.Delete(p.ka[:])
		return nil, err
	}
	s.Pairs.Add(1)
	// Bytes queued before a and b entered the map go through the
	// verdict now, in order.
	setRcvLowat(a)
	setRcvLowat(b)
	return p, nil
}

// Close takes the pair out of the map (closing a socket does too).
func (p *SockPair) Close() {
	p.s.m.Delete(p.ka[:]) // ENOENT once the kernel has removed a closed socket
	p.s.m.Delete(p.kb[:])
}

func ends(c *net.TCPConn) (local, remote netip.AddrPort, err error) {
	l, ok1 := c.LocalAddr().(*net.TCPAddr)
	r, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return local, remote, errors.New("sockmap: not a connected TCP socket")
	}
	return l.AddrPort(), r.AddrPort(), nil
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

// sockmapDrainStall bounds the wait for a FIN's bytes to reach the peer
// when they stop moving.
const sockmapDrainStall = 2 * time.Minute

// sockmapTick is how often Half reports the bytes the kernel moved (the
// flow's counters and idle timer).
const sockmapTick = time.Second

// Half moves src's bytes to dst (the pair's two sockets, either way) until
// src's FIN, which it passes on once dst has every byte (CloseWrite). count
// gets the bytes moved, at least every sockmapTick while they flow. An
// error is a read or write error of either socket (a reset, a Close).
func (p *SockPair) Half(dst, src *net.TCPConn, count func(int)) error {
	recvBase, sentBase := p.recvBaseA, p.sentBaseB
	if src == p.b {
		recvBase, sentBase = p.recvBaseB, p.sentBaseA
	}
	var self, counted uint64 // bytes Half forwarded itself; bytes the kernel moved, reported
	report := func(fin uint64) {
		recv, ok := bytesReceived(src)
		if !ok || recv < recvBase+fin+self {
			return
		}
		if moved := recv - recvBase - fin - self; moved > counted {
			count(int(moved - counted))
			counted = moved
		}
	}
	// Only bytes the program could not redirect arrive here (before the
	// peer is in the map): rare, so a small buffer, not a pooled 128 KiB
	// one held for the flow's life.
	buf := make([]byte, 2<<10)
	for {
		src.SetReadDeadline(time.Now().Add(sockmapTick))
		n, err := src.Read(buf)
		if n > 0 {
			p.s.Fallback.Add(uint64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			self += uint64(n)
			count(n)
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			report(0)
			if tcpState(dst) == tcpClosed {
				// dst was reset: nothing else reads it (its own Half may
				// have ended at its FIN), and the program now drops what
				// src receives for it, so the flow must end here.
				return errDstReset
			}
			continue
		}
		if !errors.Is(err, io.EOF) {
			report(0)
			return err
		}
		break
	}
	src.SetReadDeadline(time.Time{})
	report(1) // the FIN counts one in bytes_received
	// dst must have taken every redirected byte and those Half wrote.
	// A slow reader on dst can hold redirected bytes in the psock for
	// long: wait while they move, give up only after sockmapDrainStall
	// without progress (the flow's idle timer may end it sooner).
	last, lastMove, pause := uint64(0), time.Now(), 200*time.Microsecond
	for {
		if tcpState(dst) == tcpClosed {
			return errDstReset // its queue will never drain
		}
		sent, ok := sentBytes(dst)
		if !ok || sent >= sentBase+counted+self {
			break
		}
		if sent != last {
			last, lastMove = sent, time.Now()
		} else if time.Since(lastMove) > sockmapDrainStall {
			return fmt.Errorf("sockmap: %d bytes still queued for the peer after %v without progress", sentBase+counted+self-sent, sockmapDrainStall)
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
	if err := dst.CloseWrite(); err != nil && !isClosed(err) { // closed: the flow is ending anyway
		if errors.Is(err, unix.ENOTCONN) {
			return errDstReset // reset after the last check
		}
		return err
	}
	return nil
}

// errDstReset is Half's error when its destination was reset: the kernel
// moved src's bytes, so no write of Half's own failed to say so.
var errDstReset = fmt.Errorf("sockmap: peer socket reset: %w", unix.ECONNRESET)

// Relay is the lab's reference relay on a sockmap: Pair, Half both ways,
// then close both (as peer.Relay does with splice).
func (s *SockMap) Relay(a, b *net.TCPConn) error {
	p, err := s.Pair(a, b)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		if p.Half(b, a, func(int) {}) != nil {
			a.Close()
			b.Close()
		}
		close(done)
	}()
	if p.Half(a, b, func(int) {}) != nil {
		a.Close()
		b.Close()
	}
	<-done
	p.Close()
	a.Close()
	b.Close()
	return nil
}

// setRcvLowat sets SO_RCVLOWAT to 1: the kernel then checks the queue and
// signals data ready, which runs the verdict over bytes already queued.
func setRcvLowat(c *net.TCPConn) {
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1) })
	}
}

// bases are c's bytes received less those still queued for reading, and
// its bytes sent so far (sent).
func bases(c *net.TCPConn) (recv, sent uint64, ok bool) {
	// A segment that arrives between reading bytes_received and the
	// queue would be counted as the peer's or never (a 32 KiB shortfall,
	// measured): steadyQueue reads them as of one instant.
	got, inq, ok := steadyQueue(c, unix.SIOCINQ, func(i *unix.TCPInfo) uint64 { return i.Bytes_received })
	if !ok || inq > got {
		return 0, 0, false
	}
	if sent, ok = sentBytes(c); !ok {
		return 0, 0, false
	}
	return got - inq, sent, true
}

// steadyQueue reads a TCP_INFO counter of c and one of its queues
// (SIOCINQ, SIOCOUTQ) as of one instant: TCP_INFO, the queue, TCP_INFO
// again, until the counter did not move in between.
func steadyQueue(c *net.TCPConn, ioctl uint, counter func(*unix.TCPInfo) uint64) (value, queue uint64, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	for range 100 {
		var i1, i2 *unix.TCPInfo
		var q int
		var e1, e2, e3 error
		rc.Control(func(fd uintptr) {
			i1, e1 = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			q, e2 = unix.IoctlGetInt(int(fd), ioctl)
			i2, e3 = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		})
		if e1 != nil || e2 != nil || e3 != nil || i1 == nil || i2 == nil || q < 0 {
			return 0, 0, false
		}
		if v := counter(i1); v == counter(i2) {
			return v, uint64(q), true
		}
	}
	return 0, 0, false
}

func bytesReceived(c *net.TCPConn) (uint64, bool) {
	info, ok := tcpInfo(c)
	return info.Bytes_received, ok
}

// sentBytes is what has been written to c: bytes acked plus bytes still
// in its send queue (SIOCOUTQ), of one instant (a sum too large would pass
// a FIN on early).
func sentBytes(c *net.TCPConn) (uint64, bool) {
	acked, q, ok := steadyQueue(c, unix.SIOCOUTQ, func(i *unix.TCPInfo) uint64 { return i.Bytes_acked })
	return acked + q, ok
}

package gwlb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netward/netward/geneve"
	"github.com/netward/netward/netstack"
	"golang.org/x/sys/unix"
)

// link is one (endpoint, attachment): its stack, the datapath's end of the
// stack's socketpair and the options of its flows.
type link struct {
	d     *Datapath
	k     key
	st    *netstack.Stack
	fd    int      // our end, non-blocking; written by the reader
	wire  *os.File // the same fd, read through the poller by txLoop
	flows flowTable
	wg    sync.WaitGroup
}

// socketBuf is each socketpair end's buffer: room for bursts of jumbo
// packets between the reader and a stack (the harness in netstack uses
// the same).
const socketBuf = 4 << 20

func (d *Datapath) newLink(k key) (*link, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("gwlb: socketpair: %w", err)
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuf)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuf)
	}
	stackEnd := os.NewFile(uintptr(fds[0]), fmt.Sprintf("gwlb-stack:%016x:%016x", k.endpoint, k.attachment))
	st, err := d.newStack([]*os.File{stackEnd}, InnerMTU)
	if err != nil {
		stackEnd.Close()
		unix.Close(fds[1])
		return nil, err
	}
	l := &link{d: d, k: k, st: st, fd: fds[1]}
	l.flows.init()
	l.wire = os.NewFile(uintptr(fds[1]), "gwlb-wire")
	l.wg.Add(1)
	go l.txLoop()
	return l, nil
}

// txLoop sends what the stack writes (server→client and client→server
// packets alike) back to GWLB, encapsulated with its flow's options. One
// buffer for life, with headroom for the header in front of the packet.
func (l *link) txLoop() {
	defer l.wg.Done()
	buf := make([]byte, headroom+rxBufSize)
	m := l.d.m
	var h geneve.Header
	for {
		n, err := l.wire.Read(buf[headroom:])
		if err != nil {
			return // closed
		}
		pkt := buf[headroom : headroom+n]
		m.fromStack.Inc()
		h.Protocol = protoOf(pkt)
		var t tuple
		if !t.parse(pkt, h.Protocol) || (!t.hasPorts && !t.parseICMPError(pkt, h.Protocol)) {
			m.drops[DropNoFlow].Inc()
			continue
		}
		to, ok := l.flows.header(t.key(), &h)
		if !ok {
			m.drops[DropNoFlow].Inc()
			continue
		}
		start := headroom - h.Len()
		if _, err := geneve.Append(buf[start:start], &h); err != nil {
			m.drops[DropNoFlow].Inc()
			continue
		}
		l.d.send(buf[start:headroom+n], to)
	}
}

func (l *link) close() error {
	err := l.st.Close()
	l.wire.Close() // ends txLoop
	l.wg.Wait()
	return err
}

// protoOf is the GENEVE protocol type of an IP packet.
func protoOf(p []byte) uint16 {
	if len(p) > 0 && p[0]>>4 == 6 {
		return geneve.ProtoIPv6
	}
	return geneve.ProtoIPv4
}

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// tuple is an inner packet's addresses, protocol and ports.
type tuple struct {
	src, dst netip.AddrPort
	proto    uint8
	hasPorts bool // TCP or UDP, not a later fragment
}

// parse reads the IP header of p (proto: the GENEVE protocol type). It
// checks what it reads, never more: gVisor checks the rest.
func (t *tuple) parse(p []byte, proto uint16) bool {
	var src, dst netip.Addr
	var l4 []byte
	switch proto {
	case geneve.ProtoIPv4:
		if len(p) < 20 || p[0]>>4 != 4 {
			return false
		}
		ihl := int(p[0]&0xf) * 4
		if ihl < 20 || len(p) < ihl {
			return false
		}
		t.proto = p[9]
		src = netip.AddrFrom4([4]byte(p[12:16]))
		dst = netip.AddrFrom4([4]byte(p[16:20]))
		if binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 {
			// A later fragment: no ports.
			t.src, t.dst, t.hasPorts = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0), false
			return true
		}
		l4 = p[ihl:]
	case geneve.ProtoIPv6:
		if len(p) < 40 || p[0]>>4 != 6 {
			return false
		}
		t.proto = p[6]
		src = netip.AddrFrom16([16]byte(p[8:24]))
		dst = netip.AddrFrom16([16]byte(p[24:40]))
		l4 = p[40:]
	default:
		return false
	}
	var sp, dp uint16
	t.hasPorts = (t.proto == protoTCP || t.proto == protoUDP) && len(l4) >= 4
	if t.hasPorts {
		sp, dp = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	}
	t.src, t.dst = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	return true
}

// parseICMPError sets t to the flow of the packet an ICMP or ICMPv6 error
// quotes (the UDP guard's port unreachable refusals), so the error goes
// back with its flow's options; false for anything else.
func (t *tuple) parseICMPError(p []byte, proto uint16) bool {
	var quoted []byte
	switch {
	case proto == geneve.ProtoIPv4 && t.proto == protoICMP:
		ihl := int(p[0]&0xf) * 4
		if len(p) < ihl+8 || binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 {
			return false
		}
		if typ := p[ihl]; typ != 3 && typ != 11 && typ != 12 { // unreachable, time exceeded, parameter problem
			return false
		}
		quoted = p[ihl+8:]
	case proto == geneve.ProtoIPv6 && t.proto == protoICMPv6:
		if len(p) < 48 || p[40] < 1 || p[40] > 4 { // the error types
			return false
		}
		quoted = p[48:]
	default:
		return false
	}
	var q tuple
	if !q.parse(quoted, proto) || !q.hasPorts {
		return false
	}
	*t = q
	return true
}

// flowKey is a flow's 5-tuple in a direction-free order: both directions
// of a flow share an entry.
type flowKey struct {
	a, b  netip.AddrPort
	proto uint8
}

func (t *tuple) key() flowKey {
	if t.src.Compare(t.dst) <= 0 {
		return flowKey{t.src, t.dst, t.proto}
	}
	return flowKey{t.dst, t.src, t.proto}
}

// flowEntry is what a flow's packets go back with: its GENEVE options, as
// received last, and the GWLB address they came from.
type flowEntry struct {
	opts     [geneve.MaxOptionsLen]byte
	n        int
	vni      uint32
	from     netip.Addr
	lastSeen int64 // unix nanoseconds
}

// flowShards spreads the flow table over locks (the reader notes, every
// stack writer looks up).
const flowShards = 16

type flowTable struct {
	shards [flowShards]struct {
		mu sync.Mutex
		m  map[flowKey]*flowEntry
	}
	n atomic.Int64 // entries over all shards: one counter, no lock of its own
}

func (ft *flowTable) init() {
	for i := range ft.shards {
		ft.shards[i].m = make(map[flowKey]*flowEntry)
	}
}

func (k flowKey) shard() int {
	return int(k.a.Port()^k.b.Port()) % flowShards
}

// note records h's options for the flow; false when the table is full and
// the flow is new. A flow's entry is allocated once, at its first packet.
func (ft *flowTable) note(k flowKey, h *geneve.Header, from netip.Addr, max int) bool {
	s := &ft.shards[k.shard()]
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil {
		if ft.n.Add(1) > int64(max) {
			ft.n.Add(-1)
			return false
		}
		e = &flowEntry{}
		s.m[k] = e
	}
	if e.n != len(h.Options) || !bytes.Equal(e.opts[:e.n], h.Options) {
		e.n = copy(e.opts[:], h.Options)
	}
	e.vni = h.VNI
	e.from = from
	e.lastSeen = time.Now().UnixNano()
	return true
}

// header sets h's options and VNI to the flow's (h.Protocol is kept) and
// returns the GWLB address to send to; false for a flow it does not know.
func (ft *flowTable) header(k flowKey, h *geneve.Header) (netip.Addr, bool) {
	s := &ft.shards[k.shard()]
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil {
		return netip.Addr{}, false
	}
	// Options is copied, not aliased: the reader may overwrite the
	// entry's bytes (a flow whose options change) while the caller
	// builds its header.
	if cap(h.Options) < geneve.MaxOptionsLen {
		h.Options = make([]byte, 0, geneve.MaxOptionsLen) // once per txLoop
	}
	*h = geneve.Header{Protocol: h.Protocol, Options: append(h.Options[:0], e.opts[:e.n]...), VNI: e.vni}
	return e.from, true
}

// sweep forgets flows last seen before cutoff.
func (ft *flowTable) sweep(cutoff time.Time) {
	c := cutoff.UnixNano()
	removed := 0
	for i := range ft.shards {
		s := &ft.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if e.lastSeen < c {
				delete(s.m, k)
				removed++
			}
		}
		s.mu.Unlock()
	}
	ft.n.Add(-int64(removed))
}

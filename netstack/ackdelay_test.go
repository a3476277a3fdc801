package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outPacket builds an outbound packet as gVisor's TCP hands it to a GSO
// link: headers pushed, payload in its own view, checksum left to the
// device.
func outPacket(src, dst netip.AddrPort, flags header.TCPFlags, ack uint32, payload int) *stack.PacketBuffer {
	ipLen := header.IPv4MinimumSize
	if src.Addr().Is6() {
		ipLen = header.IPv6MinimumSize
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: ipLen + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(make([]byte, payload)),
	})
	header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize)).Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000,
	})
	gso := stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1448, L3HdrLen: uint16(ipLen)}
	if src.Addr().Is4() {
		header.IPv4(pkt.NetworkHeader().Push(ipLen)).Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + header.TCPMinimumSize + payload),
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     fromAddr(src.Addr()), DstAddr: fromAddr(dst.Addr()),
		})
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	} else {
		header.IPv6(pkt.NetworkHeader().Push(ipLen)).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(header.TCPMinimumSize + payload),
			TransportProtocol: header.TCPProtocolNumber,
			SrcAddr:           fromAddr(src.Addr()), DstAddr: fromAddr(dst.Addr()),
		})
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
		gso.Type = stack.GSOTCPv6
	}
	pkt.GSOOptions = gso
	return pkt
}

const testAckDelay = 200 * time.Microsecond

// written records what an ackDelayer writes.
type written struct {
	mu   sync.Mutex
	acks []uint32 // acknowledgement numbers, in write order
}

func (w *written) write(_ int, b []byte) {
	ip := b[virtioNetHdrLen:]
	ipLen := header.IPv6MinimumSize
	if ip[0]>>4 == 4 {
		ipLen = int(ip[0]&0xf) * 4
	}
	w.mu.Lock()
	w.acks = append(w.acks, binary.BigEndian.Uint32(ip[ipLen+8:]))
	w.mu.Unlock()
}

func (w *written) get() []uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]uint32(nil), w.acks...)
}

func newTestDelayer(t *testing.T) (*ackDelayer, *written, *Stats) {
	t.Helper()
	var stats Stats
	w := &written{}
	d := newAckDelayer(testAckDelay, &stats, w.write)
	go d.run()
	t.Cleanup(d.stop)
	return d, w, &stats
}

// offer hands pkt to d as WritePackets does: pure ACKs to hold, the rest
// written by the caller (recorded in w) and then superseding.
func offer(d *ackDelayer, w *written, pkt *stack.PacketBuffer) (held bool) {
	defer pkt.DecRef()
	if nh, th, ok := pureAck(pkt); ok && d.hold(3, pkt, nh, th) {
		return true
	}
	var b [maxAckPacket]byte
	w.write(3, b[:fill(b[:], pkt, pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice())])
	d.supersede(pkt)
	return false
}

func waitWritten(t *testing.T, w *written, n int) []uint32 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(w.get()) < n && time.Now().Before(deadline) {
		time.Sleep(testAckDelay / 4)
	}
	return w.get()
}

func TestPureAck(t *testing.T) {
	for _, c := range []struct {
		name    string
		flags   header.TCPFlags
		payload int
		want    bool
	}{
		{"ACK", header.TCPFlagAck, 0, true},
		{"ACK|PSH", header.TCPFlagAck | header.TCPFlagPsh, 0, true},
		{"data", header.TCPFlagAck, 1, false},
		{"FIN", header.TCPFlagAck | header.TCPFlagFin, 0, false},
		{"SYN-ACK", header.TCPFlagAck | header.TCPFlagSyn, 0, false},
		{"RST", header.TCPFlagAck | header.TCPFlagRst, 0, false},
		{"no ACK", 0, 0, false},
	} {
		for _, src := range []netip.AddrPort{cli4, cli6} {
			dst := srv4
			if src.Addr().Is6() {
				dst = srv6
			}
			pkt := outPacket(src, dst, c.flags, 1, c.payload)
			if _, _, got := pureAck(pkt); got != c.want {
				t.Errorf("%s from %v: pureAck = %v, want %v", c.name, src, got, c.want)
			}
			pkt.DecRef()
		}
	}
}

// A held ACK goes out after the delay, with the virtio_net_hdr asking the
// kernel for its checksum as the original packet did.
func TestAckDelayerTimer(t *testing.T) {
	d, w, stats := newTestDelayer(t)
	if !offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 100, 0)) {
		t.Fatal("pure ACK not held")
	}
	if got := w.get(); len(got) != 0 {
		t.Fatalf("written at once: %v", got)
	}
	if got := waitWritten(t, w, 1); len(got) != 1 || got[0] != 100 {
		t.Fatalf("after the delay, written %v, want [100]", got)
	}
	if stats.TxAcksDelayed.Load() != 1 || stats.TxAcksMerged.Load() != 0 {
		t.Errorf("delayed %d merged %d, want 1 0", stats.TxAcksDelayed.Load(), stats.TxAcksMerged.Load())
	}
}

// Later packets of the same connection carry the acknowledgement: a newer
// ACK replaces the held one, data supersedes it. Other connections are
// not touched.
func TestAckDelayerMerge(t *testing.T) {
	d, w, stats := newTestDelayer(t)
	other := netip.MustParseAddrPort("198.51.100.3:40000")
	offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 100, 0))
	offer(d, w, outPacket(other, srv4, header.TCPFlagAck, 7, 0))
	offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 200, 0)) // replaces 100
	offer(d, w, outPacket(cli6, srv6, header.TCPFlagAck, 9, 0))
	if held := offer(d, w, outPacket(cli6, srv6, header.TCPFlagAck|header.TCPFlagPsh, 10, 500)); held {
		t.Fatal("a data segment was held")
	}
	// Written at once: the data segment (ack 10); the held ACK 9 of the
	// same connection is gone. Later: 200 (not 100) and 7.
	got := waitWritten(t, w, 3)
	time.Sleep(2 * testAckDelay)
	got = w.get()
	want := []uint32{10, 200, 7}
	if len(got) != len(want) {
		t.Fatalf("written %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("written %v, want %v", got, want)
		}
	}
	if stats.TxAcksMerged.Load() != 2 {
		t.Errorf("merged %d, want 2", stats.TxAcksMerged.Load())
	}
}

// Duplicate ACKs (and window updates) are never merged: all reach the
// peer, for fast retransmit counts them, and one arriving while another
// is held sends both at once.
func TestAckDelayerDuplicates(t *testing.T) {
	d, w, _ := newTestDelayer(t)
	if !offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 100, 0)) {
		t.Fatal("first ACK not held")
	}
	if offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 100, 0)) {
		t.Fatal("a duplicate of a held ACK was held")
	}
	if got := w.get(); len(got) != 2 {
		t.Fatalf("written at once %v, want the held ACK and its duplicate", got)
	}
	offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 100, 0))
	offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, 100, 0))
	if got := waitWritten(t, w, 4); len(got) != 4 {
		t.Fatalf("written %v, want four ACKs of 100", got)
	}
}

// A bulk sender gets an ACK at least every maxAckedWhileHeld bytes.
func TestAckDelayerBulk(t *testing.T) {
	d, w, _ := newTestDelayer(t)
	ack := uint32(1 << 31)
	step := uint32(maxAckedWhileHeld / 4)
	held := 0
	for range 17 {
		ack += step
		if offer(d, w, outPacket(cli4, srv4, header.TCPFlagAck, ack, 0)) {
			held++
		}
	}
	if held == 17 {
		t.Fatal("every ACK of a bulk transfer was held")
	}
	if got := w.get(); len(got) < 3 {
		t.Errorf("written at once %v, want one every %d bytes", got, maxAckedWhileHeld)
	}
}

// Past maxPendingAcks connections, ACKs are written at once.
func TestAckDelayerFull(t *testing.T) {
	d, w, _ := newTestDelayer(t)
	d.mu.Lock() // keep the timer's flush out of the way
	d.armed = true
	d.mu.Unlock()
	d.timer.Stop()
	for i := range maxPendingAcks + 1 {
		src := netip.AddrPortFrom(cli4.Addr(), uint16(1000+i))
		held := offer(d, w, outPacket(src, srv4, header.TCPFlagAck, 1, 0))
		if held != (i < maxPendingAcks) {
			t.Fatalf("ACK %d: held = %v", i, held)
		}
	}
	d.stop()
	// stop flushes what is held.
	if got := waitWritten(t, w, maxPendingAcks+1); len(got) != maxPendingAcks+1 {
		t.Errorf("written %d ACKs, want %d", len(got), maxPendingAcks+1)
	}
}

// Through the link endpoint: the pure ACK reaches the TUN after the delay,
// and the endpoint's counters see it once.
func TestWritePacketsDelaysAck(t *testing.T) {
	e, stats, peer := newTestEndpoint(t, true)
	if e.acks == nil {
		t.Fatal("ACK delay off in newTestEndpoint")
	}
	var list stack.PacketBufferList
	pkt := outPacket(cli4, srv4, header.TCPFlagAck, 100, 0)
	defer pkt.DecRef()
	list.PushBack(pkt)
	if n, err := e.WritePackets(list); n != 1 || err != nil {
		t.Fatalf("WritePackets = %d, %v", n, err)
	}
	buf := make([]byte, maxPacketSize)
	if _, err := unix.Read(peer, buf); err != unix.EAGAIN {
		t.Fatalf("ACK written at once (read: %v)", err)
	}
	var n int
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(testAckDelay) {
		if n, err = unix.Read(peer, buf); err != unix.EAGAIN || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("no ACK after the delay: %v", err)
	}
	var h virtioNetHdr
	h.decode(buf[:n])
	if h.flags != vnetFlagNeedsCsum || h.csumStart != 20 || h.csumOffset != 16 || h.gsoType != vnetGSONone {
		t.Errorf("virtio_net_hdr %+v: want NEEDS_CSUM at 20+16, no GSO", h)
	}
	if n != virtioNetHdrLen+40 || stats.TxPackets.Load() != 1 {
		t.Errorf("wrote %d bytes, TxPackets %d", n, stats.TxPackets.Load())
	}
}

// BenchmarkAckDelayer is the cost a pure ACK adds on its way out when a
// data packet of its connection follows: held, then superseded (0 allocs).
func BenchmarkAckDelayer(b *testing.B) {
	var stats Stats
	d := newAckDelayer(time.Hour, &stats, func(int, []byte) {})
	defer d.stop()
	go d.run()
	ack := outPacket(cli4, srv4, header.TCPFlagAck, 100, 0)
	data := outPacket(cli4, srv4, header.TCPFlagAck|header.TCPFlagPsh, 100, 100)
	defer ack.DecRef()
	defer data.DecRef()
	b.ReportAllocs()
	for b.Loop() {
		nh, th, ok := pureAck(ack)
		if !ok || !d.hold(3, ack, nh, th) {
			b.Fatal("not held")
		}
		d.supersede(data)
	}
	if stats.TxAcksMerged.Load() == 0 {
		b.Fatal("nothing superseded")
	}
}
